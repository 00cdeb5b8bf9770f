"""Self-checks for lecture 07 (transfer learning): freezing a backbone, building parameter groups.

Each check builds fresh torchvision models (random weights, so nothing is downloaded), runs
your function on them, and says exactly which parameter is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torchvision
from torch import nn

from pdl.checks.core import call_safely, exercise, report
from pdl.transfer import _under, head_name, replace_head, stages, train_from

__all__ = ["check_freeze_all_but_head", "check_param_groups"]


def _models() -> dict[str, nn.Module]:
    """Two architectures whose heads have different names: ``fc`` and ``classifier``."""
    models = {}
    # Random initial weights come from the global generator: leave the notebook's state alone.
    with torch.random.fork_rng():
        for name in ("resnet18", "mobilenet_v2"):
            model = torchvision.models.get_model(name, weights=None)
            replace_head(model, 2)
            models[name] = model
    return models


@exercise
def check_freeze_all_but_head(freeze_all_but_head: Callable[[nn.Module], object]) -> bool:
    """Check ``freeze_all_but_head(model)``: afterwards only the head's parameters are trainable.

    Tried on a ResNet-18 (head ``fc``) and a MobileNetV2 (head ``classifier``), both with a
    2-class head; the number of trainable parameters must be exactly the head's.

    Example:
        >>> def freeze_all_but_head(model):
        ...     for name, parameter in model.named_parameters():
        ...         parameter.requires_grad = name.startswith(("fc.", "classifier."))
        >>> check_freeze_all_but_head(freeze_all_but_head)
        ✅ freeze all but the head: correct
        True
    """
    title = "freeze all but the head"
    for arch, model in _models().items():
        _, problem = call_safely(freeze_all_but_head, model)
        if problem:
            return report(title, problem)
        head = head_name(model)
        parameters = dict(model.named_parameters())
        still_trainable = [k for k, p in parameters.items() if p.requires_grad and not _under(k, head)]
        frozen_head = [k for k, p in parameters.items() if not p.requires_grad and _under(k, head)]
        trainable = sum(p.numel() for p in parameters.values() if p.requires_grad)
        expected = sum(p.numel() for k, p in parameters.items() if _under(k, head))
        if still_trainable:
            return report(
                title,
                f"on {arch}, {len(still_trainable)} parameters outside the head are still trainable "
                f"(e.g. {still_trainable[0]}): {trainable:,} trainable, expected {expected:,} (just the head). "
                "Set requires_grad = False on every parameter of the body.",
            )
        if frozen_head:
            return report(
                title,
                f"on {arch}, the head's {frozen_head[0]} is frozen: {trainable:,} trainable, expected "
                f"{expected:,}. The new head is the part that must learn.",
            )
    return report(title, None)


@exercise
def check_param_groups(make_param_groups: Callable[[nn.Module, float, float], object]) -> bool:
    """Check ``make_param_groups(model, head_lr, body_lr)``: optimizer groups with two learning rates.

    Every trainable parameter must be in exactly one group, the head's with ``head_lr``, the
    others with ``body_lr``; frozen parameters are left out. Tried on a ResNet-18 and a
    MobileNetV2 whose early layers are frozen, with unusual learning rates.

    Example:
        >>> def make_param_groups(model, head_lr, body_lr):
        ...     head = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(("fc.", "classifier."))]
        ...     body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(("fc.", "classifier."))]
        ...     return [{"params": head, "lr": head_lr}, {"params": body, "lr": body_lr}]
        >>> check_param_groups(make_param_groups)
        ✅ parameter groups: correct
        True
    """
    title = "parameter groups"
    head_lr, body_lr = 3e-3, 2e-4
    for arch, model in _models().items():
        train_from(model, stages(model)[-2])  # the last two stages and the head train
        groups, problem = call_safely(make_param_groups, model, head_lr, body_lr)
        if problem is None:
            problem = _param_groups_problem(model, groups, head_lr, body_lr)
        if problem is None:
            _, problem = call_safely(torch.optim.AdamW, groups)
            if problem:
                problem = "torch.optim.AdamW does not accept the groups: " + problem.removeprefix("your code raised ")
        if problem:
            return report(title, f"on {arch} (head_lr={head_lr}, body_lr={body_lr}): {problem}")
    return report(title, None)


def _param_groups_problem(model: nn.Module, groups: object, head_lr: float, body_lr: float) -> str | None:
    if not isinstance(groups, (list, tuple)) or not groups:
        return f"expected a non-empty list of dicts, got {type(groups).__name__}"
    names = {id(p): k for k, p in model.named_parameters()}
    head = head_name(model)
    seen: set[int] = set()  # ids of the parameters already in a group
    for index, group in enumerate(groups):
        if not isinstance(group, Mapping) or "params" not in group or "lr" not in group:
            return f"group {index} should be a dict with keys 'params' and 'lr', got {group!r:.80}"
        params = group["params"]
        if isinstance(params, torch.Tensor) or not hasattr(params, "__iter__"):
            return f"group {index}: 'params' should be a list of parameters"
        for parameter in list(params):
            if id(parameter) not in names:
                return f"group {index} holds a tensor that is not a parameter of the model"
            name = names[id(parameter)]
            if not parameter.requires_grad:
                return f"the frozen parameter {name} is in group {index}: leave frozen parameters out"
            if id(parameter) in seen:
                return f"{name} is in two groups: every parameter must be in exactly one"
            expected = head_lr if _under(name, head) else body_lr
            if group["lr"] != expected:
                part = "the head" if expected == head_lr else "the body"
                return f"{name} gets lr {group['lr']}, expected {expected} ({part})"
            seen.add(id(parameter))
    forgotten = [k for k, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if forgotten:
        return (
            f"{len(forgotten)} trainable parameters are in no group (e.g. {forgotten[0]}): "
            "the optimizer would never update them"
        )
    return None
