"""Transfer learning (lecture 07): a new head, what trains, and how fast each part learns.

The recipe: take a network pretrained on a big dataset (ImageNet, see ``pdl.weights``),
replace its last layer (the *head*) with one for your classes, and train as little of it as
your data allows:

- ``replace_head`` / ``head_name`` / ``head_path``: the head, whatever the architecture calls
  it (``fc``, ``classifier``, ``heads``, ``head``).
- ``freeze``, ``unfreeze``, ``train_only``, ``train_from``, ``count_parameters``, ``stages``:
  choose what trains. BatchNorm layers in frozen parts stay in eval mode (``EvalModeBatchNorm2d``).
- ``param_groups``, ``layerwise_lrs``: discriminative learning rates (head fast, body slow).

Pretrained weights, ``build_backbone`` and preprocessing presets are in ``pdl.weights``;
feature extraction, caching and the linear probe in ``pdl.features``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from torch import nn

__all__ = [
    "EvalModeBatchNorm1d",
    "EvalModeBatchNorm2d",
    "EvalModeBatchNorm3d",
    "ParameterCount",
    "count_parameters",
    "freeze",
    "head_name",
    "head_path",
    "layerwise_lrs",
    "param_groups",
    "replace_head",
    "stages",
    "train_from",
    "train_only",
    "unfreeze",
]

HEAD_NAMES = ("fc", "classifier", "heads", "head")  # what torchvision's classifiers call their head


def _under(key: str, prefix: str) -> bool:
    """True when parameter ``key`` belongs to module ``prefix`` ("" is the whole model)."""
    return prefix == "" or key == prefix or key.startswith(prefix + ".")


# --------------------------------------------------------------------------------------
# The head
# --------------------------------------------------------------------------------------


def head_name(model: nn.Module) -> str:
    """The name of the child module that holds the classification head: fc, classifier, heads, head.

    Example:
        >>> import torchvision
        >>> head_name(torchvision.models.resnet18()), head_name(torchvision.models.mobilenet_v2())
        ('fc', 'classifier')
    """
    children = dict(model.named_children())
    for name in HEAD_NAMES:
        if name in children:
            return name
    raise ValueError(
        f"cannot find the head of this {type(model).__name__}: it has no child called "
        f"{', '.join(HEAD_NAMES)} (its children: {', '.join(children)})"
    )


def head_path(model: nn.Module) -> str:
    """The full name of the head's last ``nn.Linear``: the layer that outputs the class scores.

    Example:
        >>> import torchvision
        >>> head_path(torchvision.models.resnet18()), head_path(torchvision.models.mobilenet_v2())
        ('fc', 'classifier.1')
    """
    name = head_name(model)
    head = model.get_submodule(name)
    linears = [n for n, m in head.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"the head {name!r} of this {type(model).__name__} has no nn.Linear layer to replace"
        )
    return f"{name}.{linears[-1]}" if linears[-1] else name


def replace_head(model: nn.Module, new: int | nn.Module) -> nn.Module:
    """Replace the head's last linear layer: with a fresh ``nn.Linear`` for ``new`` classes, or with module ``new``.

    The rest of the head stays (e.g. MobileNetV2's dropout before its linear layer).
    Returns the new layer.

    Example:
        >>> import torch, torchvision
        >>> model = torchvision.models.mobilenet_v2()
        >>> replace_head(model, 2)
        Linear(in_features=1280, out_features=2, bias=True)
        >>> model(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 2])
    """
    path = head_path(model)
    old = model.get_submodule(path)
    if isinstance(new, int):
        if new < 1:
            raise ValueError(f"num_classes must be >= 1, got {new}")
        new = nn.Linear(old.in_features, new, device=old.weight.device, dtype=old.weight.dtype)
    parent_name, _, attribute = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attribute, new)
    return new


# --------------------------------------------------------------------------------------
# What trains: freezing, counting, stages
# --------------------------------------------------------------------------------------


class ParameterCount(NamedTuple):
    """Trainable and total number of parameters (tensors shared by two layers count once)."""

    trainable: int
    total: int

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    def __str__(self) -> str:
        share = 100 * self.trainable / self.total if self.total else 0.0
        return f"{self.trainable:,} of {self.total:,} parameters trainable ({share:.2f}%)"


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count trainable (``requires_grad``) and total parameters.

    Example:
        >>> layer = nn.Linear(10, 2)
        >>> _ = layer.bias.requires_grad_(False)
        >>> print(count_parameters(layer))
        20 of 22 parameters trainable (90.91%)
    """
    parameters = list(model.parameters())  # .parameters() yields a shared tensor once
    return ParameterCount(
        sum(p.numel() for p in parameters if p.requires_grad), sum(p.numel() for p in parameters)
    )


def _resolve(model: nn.Module, name: str) -> str:
    """A module name in ``model``; "head" means the head when the model has no module called so."""
    if name == "head" and not hasattr(model, "head"):
        return head_name(model)
    try:
        model.get_submodule(name)
    except AttributeError:
        children = ", ".join(n for n, _ in model.named_children())
        raise ValueError(
            f"{type(model).__name__} has no module {name!r} (its children: {children})"
        ) from None
    return name


def _set_requires_grad(model: nn.Module, names: Iterable[str], value: bool) -> None:
    prefixes = [_resolve(model, n) for n in names]
    for key, parameter in model.named_parameters():
        if any(_under(key, prefix) for prefix in prefixes):
            parameter.requires_grad_(value)
    _sync_batchnorm(model)


def freeze(model: nn.Module, *names: str) -> ParameterCount:
    """Freeze the parameters of modules ``names`` (default: the whole model); return the new count.

    Frozen means ``requires_grad=False``: autograd computes no gradient for them and the
    optimizer leaves them alone. BatchNorm layers whose parameters are all frozen also become
    ``EvalModeBatchNorm1d/2d/3d`` (the same parameters and buffers, the same ``state_dict``
    keys), which stay in eval mode when ``model.train()`` is called again (``fit`` calls it
    every epoch): in train mode they would normalise with each batch's own statistics and
    overwrite their running mean and variance with those of the new dataset. The pretrained
    layers after them expect the ImageNet statistics; with small batches of a small dataset the
    batch statistics are also noisy. Frozen should mean "behaves exactly as pretrained".

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
        >>> print(freeze(model, "0", "1"))
        10 of 38 parameters trainable (26.32%)
        >>> model.train()[1].training  # the frozen BatchNorm stays in eval mode
        False
    """
    _set_requires_grad(model, names or ("",), False)
    return count_parameters(model)


def unfreeze(model: nn.Module, *names: str) -> ParameterCount:
    """Make the parameters of modules ``names`` (default: the whole model) trainable again.

    Their BatchNorm layers follow the model's mode again (train mode while training).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        >>> freeze(model).trainable, unfreeze(model, "1").trainable
        (0, 10)
    """
    _set_requires_grad(model, names or ("",), True)
    return count_parameters(model)


def train_only(model: nn.Module, *names: str) -> ParameterCount:
    """Freeze everything, then unfreeze modules ``names``: e.g. ``train_only(model, "layer4", "fc")``.

    ``"head"`` names the head whatever the architecture calls it.

    Example:
        >>> import torchvision
        >>> print(train_only(torchvision.models.resnet18(num_classes=2), "head"))
        1,026 of 11,177,538 parameters trainable (0.01%)
    """
    freeze(model)
    return unfreeze(model, *names) if names else count_parameters(model)


def train_from(model: nn.Module, stage: str) -> ParameterCount:
    """Train module ``stage`` and everything registered after it (the head included); freeze the rest.

    Parameters are taken in registration order, which for torchvision's classifiers is
    the order of the forward pass: ``train_from(resnet, "layer4")`` trains layer4 and fc.

    Example:
        >>> import torchvision
        >>> model = torchvision.models.resnet18(num_classes=2)
        >>> print(train_from(model, "layer4"))
        8,394,754 of 11,177,538 parameters trainable (75.10%)
    """
    stage = _resolve(model, stage)
    named = list(model.named_parameters())
    start = next((i for i, (key, _) in enumerate(named) if _under(key, stage)), None)
    if start is None:
        raise ValueError(
            f"module {stage!r} has no parameters to train"
        )  # raised before anything changes
    for index, (_, parameter) in enumerate(named):
        parameter.requires_grad_(index >= start)
    _sync_batchnorm(model)
    return count_parameters(model)


def stages(model: nn.Module) -> list[str]:
    """The blocks of the body (the head excluded) that hold parameters, in forward order.

    A ResNet's children (``conv1 ... layer4``); for models that keep their body in one
    ``features`` sequence (MobileNet, EfficientNet, ConvNeXt, VGG), its numbered blocks.
    ``stages(model)[-1]`` is the last stage, a natural place for ``train_from``.

    Example:
        >>> import torchvision
        >>> stages(torchvision.models.resnet18())
        ['conv1', 'bn1', 'layer1', 'layer2', 'layer3', 'layer4']
        >>> stages(torchvision.models.mobilenet_v2())[-2:]
        ['features.17', 'features.18']
    """
    head = head_name(model)
    names = []
    for name, child in model.named_children():
        if name == head or next(child.parameters(), None) is None:
            continue
        if name == "features" and isinstance(child, nn.Sequential):
            names += [
                f"features.{n}"
                for n, block in child.named_children()
                if next(block.parameters(), None) is not None
            ]
        else:
            names.append(name)
    return names


class _StaysInEvalMode:
    """Mixed into a BatchNorm class: ``train()`` leaves the layer in eval mode.

    So the layer normalises with its running statistics, and never updates them, whatever
    mode the model around it is put in. (``torchvision.ops.FrozenBatchNorm2d`` does the same
    job but turns the weights into buffers, which changes parameter counts and state_dicts.)
    """

    def train(self, mode: bool = True):
        return super().train(False)  # type: ignore[misc]


class EvalModeBatchNorm1d(_StaysInEvalMode, nn.BatchNorm1d):
    """An ``nn.BatchNorm1d`` that always runs in eval mode: what ``freeze`` makes of a frozen one."""


class EvalModeBatchNorm2d(_StaysInEvalMode, nn.BatchNorm2d):
    """An ``nn.BatchNorm2d`` that always runs in eval mode: what ``freeze`` makes of a frozen one.

    Example:
        >>> EvalModeBatchNorm2d(3).train().training
        False
    """


class EvalModeBatchNorm3d(_StaysInEvalMode, nn.BatchNorm3d):
    """An ``nn.BatchNorm3d`` that always runs in eval mode: what ``freeze`` makes of a frozen one."""


_EVAL_MODE = {
    nn.BatchNorm1d: EvalModeBatchNorm1d,
    nn.BatchNorm2d: EvalModeBatchNorm2d,
    nn.BatchNorm3d: EvalModeBatchNorm3d,
}
_TRAINABLE = {frozen: plain for plain, frozen in _EVAL_MODE.items()}


def _sync_batchnorm(model: nn.Module) -> None:
    """Swap BatchNorm layers whose parameters are all frozen for their eval-mode class, and back."""
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, nn.modules.batchnorm._BatchNorm) or not name:
            continue  # the model itself cannot be swapped for another object here
        parameters = list(layer.parameters(recurse=False))
        frozen = bool(parameters) and not any(p.requires_grad for p in parameters)
        if frozen and type(layer) in _EVAL_MODE:
            _swap(model, name, layer, _EVAL_MODE[type(layer)]).eval()
        elif not frozen and type(layer) in _TRAINABLE:
            _swap(model, name, layer, _TRAINABLE[type(layer)]).train(model.training)
        elif frozen and type(layer) not in _TRAINABLE:
            warnings.warn(
                f"{name} is a frozen {type(layer).__name__}, which freeze cannot keep in eval mode: after "
                f"model.train(), call model.get_submodule({name!r}).eval() yourself",
                stacklevel=3,
            )


def _swap(model: nn.Module, name: str, layer: nn.Module, new_class: type) -> nn.Module:
    """Put a ``new_class`` layer in ``layer``'s place that shares its parameters and buffers.

    The same tensors, not copies (as ``nn.SyncBatchNorm.convert_sync_batchnorm`` does it):
    an optimizer built earlier still holds the right parameters, and the state_dict is unchanged.
    """
    new = new_class(
        layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats
    )
    new.weight, new.bias = layer.weight, layer.bias
    for buffer in ("running_mean", "running_var", "num_batches_tracked"):
        setattr(new, buffer, getattr(layer, buffer))
    new.training = layer.training
    parent_name, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attribute, new)
    return new


# --------------------------------------------------------------------------------------
# Discriminative learning rates
# --------------------------------------------------------------------------------------


def param_groups(
    model: nn.Module, lrs: Mapping[str, float], *, rest_lr: float | None = None
) -> list[dict[str, Any]]:
    """Optimizer parameter groups with one learning rate per module: ``{"head": 1e-3, "layer4": 1e-4}``.

    Each trainable parameter goes to the group of the most specific module name that holds
    it; trainable parameters of no listed module go to a group "rest" with ``rest_lr``
    (without ``rest_lr`` that is an error: they would silently never be updated). Frozen
    parameters are left out. Each group also carries its "name", for printing.
    Pass the result to any optimizer: ``torch.optim.AdamW(param_groups(...))``.

    Example:
        >>> import torchvision
        >>> model = torchvision.models.resnet18(num_classes=2)
        >>> groups = param_groups(model, {"head": 1e-3}, rest_lr=1e-4)
        >>> [(g["name"], g["lr"], sum(p.numel() for p in g["params"])) for g in groups]
        [('fc', 0.001, 1026), ('rest', 0.0001, 11176512)]
    """
    resolved = {_resolve(model, name): lr for name, lr in lrs.items()}
    buckets: dict[str, list[nn.Parameter]] = {name: [] for name in resolved}
    rest: list[tuple[str, nn.Parameter]] = []  # with their names, for the error message
    for key, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        owners = [name for name in resolved if _under(key, name)]
        if owners:
            buckets[max(owners, key=len)].append(parameter)  # the most specific module wins
        else:
            rest.append((key, parameter))
    if rest and rest_lr is None:
        raise ValueError(
            f"{len(rest)} trainable parameters belong to none of {list(resolved)} "
            f"(e.g. {', '.join(key for key, _ in rest[:3])}): pass rest_lr=... or freeze them"
        )
    groups = [
        {"params": params, "lr": resolved[name], "name": name}
        for name, params in buckets.items()
        if params
    ]
    if rest:
        groups.append(
            {"params": [parameter for _, parameter in rest], "lr": rest_lr, "name": "rest"}
        )
    return groups


def layerwise_lrs(model: nn.Module, head_lr: float, factor: float = 0.5) -> dict[str, float]:
    """Learning rates that shrink from the head down: head ``head_lr``, last stage ``head_lr*factor``, ...

    Early layers learn generic features (edges, textures) that transfer well, so they move
    least; the last stages are the most task-specific. Pass the result to ``param_groups``.

    Example:
        >>> import torchvision
        >>> lrs = layerwise_lrs(torchvision.models.resnet18(), 1e-3, factor=0.5)
        >>> {name: lrs[name] for name in ("fc", "layer4", "layer3", "conv1")}
        {'fc': 0.001, 'layer4': 0.0005, 'layer3': 0.00025, 'conv1': 1.5625e-05}
    """
    rates = {head_name(model): head_lr}
    for depth, stage in enumerate(reversed(stages(model)), start=1):
        rates[stage] = head_lr * factor**depth
    return rates
