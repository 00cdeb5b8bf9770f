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
    2-class head. The function must freeze the model it is given, in place, and keep its head.
    A message counts parameter *tensors* (``named_parameters()`` entries, e.g. ``bn1.bias``)
    and parameter *values* (their elements, what "11 M parameters" counts) in separate sentences.

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
        head = head_name(model)
        head_before = [id(p) for p in model.get_submodule(head).parameters()]
        returned, problem = call_safely(freeze_all_but_head, model)
        if problem is None:
            problem = _freeze_problem(model, head, head_before, returned)
        if problem:
            return report(title, f"on {arch}: {problem}")
    return report(title, None)


def _freeze_problem(
    model: nn.Module, head: str, head_before: list[int], returned: object
) -> str | None:
    if [id(p) for p in model.get_submodule(head).parameters()] != head_before:
        return (
            f"your function replaced the head ({head}); it should only set requires_grad. "
            "The model it gets already has its new 2-class head"
        )
    parameters = dict(model.named_parameters())
    body = [k for k in parameters if not _under(k, head)]
    still_trainable = [k for k in body if parameters[k].requires_grad]
    frozen_head = [k for k, p in parameters.items() if not p.requires_grad and _under(k, head)]
    if not still_trainable and not frozen_head:
        return None
    values = (
        f"Counted in values (elements): {sum(p.numel() for p in parameters.values() if p.requires_grad):,} "
        f"of {sum(p.numel() for p in parameters.values()):,} train, expected just the head's "
        f"{sum(p.numel() for k, p in parameters.items() if _under(k, head)):,}."
    )
    if len(still_trainable) == len(body):  # nothing outside the head was frozen: find out why
        if any("requires_grad_" in vars(p) for p in parameters.values()):
            return (
                "nothing was frozen: you assigned to requires_grad_ (the name of a method). "
                "Write parameter.requires_grad = False, or call parameter.requires_grad_(False)"
            )
        if not model.training:
            return (
                "nothing was frozen, but the model is in eval mode: model.eval() does not freeze "
                "anything, it only switches dropout and batch norm to evaluation behaviour. "
                "Set requires_grad = False on the body's parameters"
            )
        if isinstance(returned, nn.Module) and returned is not model:
            return (
                "the model you were given is unchanged: freeze it in place "
                "(the notebook keeps using that model; whatever you return is ignored)"
            )
    if still_trainable:
        return (
            f"{len(still_trainable)} of the {len(body)} parameter tensors outside the head are still "
            f"trainable (e.g. {still_trainable[0]}). {values} "
            "Set requires_grad = False on every parameter of the body."
        )
    return (
        f"{len(frozen_head)} of the head's parameter tensors are frozen (e.g. {frozen_head[0]}). {values} "
        "The new head is the part that must learn."
    )


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
            groups, problem = _listed(groups)
        if problem is None:
            problem = _param_groups_problem(model, groups, head_lr, body_lr)
        if problem is None:
            _, problem = call_safely(torch.optim.AdamW, groups)
            if problem:
                problem = "torch.optim.AdamW does not accept the groups: " + problem.removeprefix(
                    "your code raised "
                )
        if problem:
            return report(title, f"on {arch} (head_lr={head_lr}, body_lr={body_lr}): {problem}")
    return report(title, None)


def _listed(groups: object) -> tuple[object, str | None]:
    """The groups with each 'params' as a list: a generator such as ``model.fc.parameters()``
    is fine for an optimizer, but can be read only once (by this check, then not by AdamW)."""
    if not isinstance(groups, (list, tuple)):
        return groups, None
    listed = []
    for index, group in enumerate(groups):
        params = group.get("params") if isinstance(group, Mapping) else None
        if isinstance(params, (set, frozenset)):
            return None, (
                f"group {index}: 'params' is a set; use a list (an optimizer needs the parameters "
                "in a fixed order, and PyTorch refuses sets)"
            )
        if (
            params is not None
            and not isinstance(params, torch.Tensor)
            and hasattr(params, "__iter__")
        ):
            group = {**group, "params": list(params)}
        listed.append(group)
    return listed, None


def _param_groups_problem(
    model: nn.Module, groups: object, head_lr: float, body_lr: float
) -> str | None:
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
        for parameter in params:
            if id(parameter) not in names:
                return f"group {index} holds a tensor that is not a parameter of the model"
            name = names[id(parameter)]
            if not parameter.requires_grad:
                return (
                    f"the frozen parameter {name} is in group {index}: leave frozen parameters out"
                )
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
