"""Transfer learning (lecture 07): pretrained backbones, new heads, freezing, cached features.

The recipe: take a network pretrained on a big dataset (ImageNet), replace its last layer
(the *head*) with one for your classes, and train as little of it as your data allows:

- ``build_backbone("resnet18", "DEFAULT", num_classes=2)``: a torchvision model by name, with
  weights from torchvision's weights API (the torch hub cache), from a local ``state_dict``
  file, or none (random initialisation); the head is replaced for ``num_classes``.
- ``replace_head`` / ``head_name``: the head, whatever the architecture calls it
  (``fc``, ``classifier``, ``heads``, ``head``).
- ``freeze``, ``unfreeze``, ``train_only``, ``train_from``, ``count_parameters``, ``stages``:
  choose what trains. BatchNorm layers in frozen parts stay in eval mode.
- ``param_groups``, ``layerwise_lrs``: discriminative learning rates (head fast, body slow).
- ``feature_extractor``, ``extract_features``, ``cached_features``, ``fit_linear_probe``:
  run a frozen backbone once, keep the pooled features, train a linear head on them.
- ``preprocessing``: the transforms that match the weights.

How to name weights (the ``weights`` argument everywhere):

- ``None`` or ``"none"``: random initialisation (training from scratch).
- A torchvision weights enum (``ResNet18_Weights.IMAGENET1K_V1``) or its name, with or without
  the class (``"ResNet18_Weights.IMAGENET1K_V1"``, ``"IMAGENET1K_V1"``, ``"DEFAULT"``). The
  file is looked up in the torch hub cache (``<torch.hub.get_dir()>/checkpoints``) and
  downloaded there once when missing.
- A path to a ``state_dict`` file (``"weights/my_backbone.pth"``), loaded with
  ``weights_only=True``. Only the head's keys may be missing from it or extra in it.
- ``"data:<path>"``: a file in pdl's data root (``pdl.data.data_root()``), fetched through
  ``pdl.data.ensure`` like the datasets (from the offline mirror, verified by checksum), e.g.
  ``"data:weights/mobilenet_v2_imagenet_features.pth"``, the ImageNet MobileNetV2 features of
  the course's offline mirror. Being a plain string, it can be a notebook parameter.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import os
import time
import urllib.error
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.models import WeightsEnum
from torchvision.transforms import InterpolationMode
from tqdm.auto import tqdm

from pdl import data as pdl_data
from pdl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pdl.device import get_device
from pdl.metrics import classification_metrics
from pdl.train import fit

__all__ = [
    "CachedFeatures",
    "LoadReport",
    "ParameterCount",
    "Preprocessing",
    "WeightsFileError",
    "WeightsNotAvailableError",
    "build_backbone",
    "cached_features",
    "clear_feature_cache",
    "count_parameters",
    "describe_weights",
    "extract_features",
    "feature_extractor",
    "feature_key",
    "fit_linear_probe",
    "freeze",
    "head_name",
    "head_path",
    "hub_checkpoint_path",
    "layerwise_lrs",
    "load_weights_file",
    "param_groups",
    "preprocessing",
    "replace_head",
    "resolve_weights",
    "stages",
    "train_from",
    "train_only",
    "unfreeze",
]

DATA_PREFIX = "data:"
HEAD_NAMES = ("fc", "classifier", "heads", "head")  # what torchvision's classifiers call their head


class WeightsNotAvailableError(FileNotFoundError):
    """Pretrained weights are neither in the torch hub cache nor downloadable (offline)."""


class WeightsFileError(ValueError):
    """A weights file cannot be read, or does not fit the model beyond its head."""


# --------------------------------------------------------------------------------------
# Weights: which ones, and where the file is
# --------------------------------------------------------------------------------------


def resolve_weights(backbone: str, weights: Any) -> WeightsEnum | Path | None:
    """Turn a ``weights`` argument (see the module docstring) into an enum, a file path or None.

    Example:
        >>> resolve_weights("resnet18", "DEFAULT")
        ResNet18_Weights.IMAGENET1K_V1
        >>> resolve_weights("resnet18", None) is None
        True
        >>> resolve_weights("resnet18", "MobileNet_V2_Weights.IMAGENET1K_V1")
        Traceback (most recent call last):
        ...
        ValueError: MobileNet_V2_Weights.IMAGENET1K_V1 are weights for another architecture, not for 'resnet18' (its weights: ResNet18_Weights.IMAGENET1K_V1).
    """
    if weights is None or (isinstance(weights, str) and weights.lower() in ("none", "random", "")):
        return None
    if isinstance(weights, WeightsEnum):
        _check_weights_fit(backbone, weights)
        return weights
    if isinstance(weights, os.PathLike):
        return _existing_file(Path(weights))
    if not isinstance(weights, str):
        raise TypeError(f"weights must be None, a torchvision weights enum, a name or a path; got {type(weights).__name__}")
    if weights.startswith(DATA_PREFIX):
        return _data_file(weights.removeprefix(DATA_PREFIX))
    if "/" in weights or os.sep in weights or weights.endswith((".pth", ".pt")):
        return _existing_file(Path(weights).expanduser())
    if "." in weights:  # "ResNet18_Weights.IMAGENET1K_V1": the class tells the architecture
        try:
            enum = torchvision.models.get_weight(weights)
        except (ValueError, KeyError, AttributeError):
            raise ValueError(f"unknown torchvision weights {weights!r}") from None
        _check_weights_fit(backbone, enum)
        return enum
    available = _weights_class(backbone)
    try:
        return available[weights]  # "DEFAULT", "IMAGENET1K_V1", ...
    except KeyError:
        names = ", ".join(["DEFAULT", *available.__members__])
        raise ValueError(f"{backbone!r} has no weights {weights!r}; choose one of: {names}") from None


def _weights_class(backbone: str) -> type[WeightsEnum]:
    try:
        return torchvision.models.get_model_weights(backbone)
    except (ValueError, KeyError):
        raise ValueError(
            f"unknown backbone {backbone!r}; torchvision classification models include resnet18, "
            "resnet50, mobilenet_v2, efficientnet_b0, convnext_tiny, vit_b_16 "
            "(all: torchvision.models.list_models(module=torchvision.models))"
        ) from None


def _check_weights_fit(backbone: str, weights: WeightsEnum) -> None:
    expected = _weights_class(backbone)
    if type(weights) is not expected:
        raise ValueError(
            f"{weights} are weights for another architecture, not for {backbone!r} "
            f"(its weights: {', '.join(str(w) for w in expected)})."
        )


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist (working directory: {Path.cwd()})")
    return path.resolve()


def _data_file(relative: str) -> Path:
    """A file in the data root; one that belongs to a pdl.data resource is fetched and verified."""
    relative_path = Path(relative)
    for resource in pdl_data.RESOURCES.values():
        if Path(resource.path) == relative_path.parent and relative_path.name in resource.files:
            return pdl_data.ensure(resource.name) / relative_path.name
    return _existing_file(pdl_data.data_root() / relative_path)


def describe_weights(weights: WeightsEnum | Path | None) -> str:
    """A short human-readable name for resolved weights (what the notebooks print).

    Example:
        >>> describe_weights(resolve_weights("resnet18", "DEFAULT"))
        'torchvision ResNet18_Weights.IMAGENET1K_V1'
        >>> describe_weights(None)
        'random initialisation'
    """
    if weights is None:
        return "random initialisation"
    if isinstance(weights, WeightsEnum):
        return f"torchvision {weights}"
    return f"state_dict file {Path(weights).name}"


def hub_checkpoint_path(weights: WeightsEnum) -> Path:
    """Where the torch hub cache keeps ``weights``: ``<torch.hub.get_dir()>/checkpoints/<file>``.

    The file name is the last part of ``weights.url``; its ``-<hex>`` suffix is the start of
    the file's sha256, which torch checks while downloading (not when the file is already there).

    Example:
        >>> from torchvision.models import ResNet18_Weights
        >>> hub_checkpoint_path(ResNet18_Weights.IMAGENET1K_V1).name
        'resnet18-f37072fd.pth'
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def _ensure_in_hub_cache(weights: WeightsEnum, backbone: str, progress: bool) -> Path:
    """Return the cached file of ``weights``, downloading it once if needed (and allowed)."""
    path = hub_checkpoint_path(weights)
    if path.is_file():
        return path
    if pdl_data.offline():
        raise WeightsNotAvailableError(_weights_missing_message(weights, backbone, path, f"{pdl_data.OFFLINE_ENV} is set"))
    try:
        _download(weights.url, path, progress)
    except (urllib.error.URLError, OSError, RuntimeError) as error:  # RuntimeError: hash mismatch
        raise WeightsNotAvailableError(
            _weights_missing_message(weights, backbone, path, f"the download failed: {error}")
        ) from None
    return path


def _download(url: str, path: Path, progress: bool) -> None:
    """Download ``url`` to ``path``, checking the sha256 prefix that torch puts in file names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # "resnet18-f37072fd.pth" -> "f37072fd": the pattern torch.hub.load_state_dict_from_url uses.
    match = torch.hub.HASH_REGEX.search(path.name)
    hash_prefix = match.group(1) if match and match.group(1) else None
    print(f"Downloading {url} to {path}")
    # download_url_to_file writes to a temporary file and renames it at the end, so an
    # interrupted download never leaves a truncated file under the real name.
    torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_prefix, progress=progress)


def _weights_missing_message(weights: WeightsEnum, backbone: str, path: Path, why: str) -> str:
    return (
        f"The pretrained weights {weights} for {backbone!r} are not available: {why}.\n"
        f"torchvision looks for the file {path.name} in the torch hub cache folder {path.parent} "
        "(move that cache with TORCH_HOME or torch.hub.set_dir).\n"
        f"To fix: on a machine with internet, download {weights.url} and put {path.name} into "
        f"{path.parent}/; or use weights=None (random initialisation) or a local state_dict file "
        "(weights='path/to/file.pth')."
    )


@contextlib.contextmanager
def _weights_only_loading() -> Iterator[None]:
    """Make every ``torch.load`` inside the block use ``weights_only=True``.

    torchvision's builders load the hub file through ``torch.hub.load_state_dict_from_url``,
    which passes ``weights_only=False`` (unpickling can run code). This documented torch
    switch forces the safe loader, while the builder still does its architecture-specific work.
    """
    name = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    previous = os.environ.get(name)
    os.environ[name] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


# --------------------------------------------------------------------------------------
# Building a backbone, loading a state_dict file
# --------------------------------------------------------------------------------------


class LoadReport(NamedTuple):
    """What ``load_weights_file`` did: tensors loaded, and the (head) keys it left alone."""

    path: Path
    loaded: int
    missing: list[str]  # in the model, not in the file: they keep their initial values
    unexpected: list[str]  # in the file, not in the model: ignored
    mismatched: list[str]  # in both, with different shapes (e.g. a 1000-class head): ignored

    def __str__(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.path.name}"]
        if self.missing:
            parts.append(f"not in the file (the head, left as initialised): {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"ignored (head keys the model does not have): {', '.join(self.unexpected)}")
        if self.mismatched:
            parts.append(f"ignored (head of another shape): {', '.join(self.mismatched)}")
        return "; ".join(parts)


def build_backbone(
    name: str,
    weights: Any = None,
    num_classes: int | None = None,
    *,
    progress: bool = True,
    verbose: bool = True,
) -> nn.Module:
    """A torchvision classification model by ``name`` with ``weights``, its head made for ``num_classes``.

    ``weights``: see the module docstring (None, a torchvision enum or name, a state_dict file,
    or ``"data:..."``). Offline without the file in the torch hub cache this raises
    ``WeightsNotAvailableError``, naming the weights, the file and the folder to put it in.
    ``verbose`` prints one line saying what was loaded.

    Example:
        >>> model = build_backbone("resnet18", None, num_classes=2)
        resnet18: random initialisation; head fc -> 2 classes
        >>> model.fc
        Linear(in_features=512, out_features=2, bias=True)
    """
    resolved = resolve_weights(name, weights)
    note = describe_weights(resolved)
    if isinstance(resolved, WeightsEnum):
        _ensure_in_hub_cache(resolved, name, progress)
        with _weights_only_loading():
            model = torchvision.models.get_model(name, weights=resolved, progress=progress)
    else:
        model = torchvision.models.get_model(name, weights=None)
        if resolved is not None:
            note = str(load_weights_file(model, resolved))
    if num_classes is not None:
        replace_head(model, num_classes)
        note += f"; head {head_path(model)} -> {num_classes} classes"
    if verbose:
        print(f"{name}: {note}")
    return model


def load_weights_file(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load a ``state_dict`` file into ``model`` (``weights_only=True``); only the head may differ.

    Keys that are missing from the file, extra in it, or of another shape are fine when
    they belong to the head (``head_name(model)``), and reported; anywhere else they mean
    the file was saved from another architecture, and a ``WeightsFileError`` says which.
    The file may also be a checkpoint dict holding the state_dict under "model" or "state_dict".

    Example:
        >>> import tempfile, torchvision
        >>> path = tempfile.mkdtemp() + "/body.pth"
        >>> body = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
        >>> torch.save(body, path)
        >>> print(load_weights_file(torchvision.models.resnet18(), path))
        loaded 120 tensors from body.pth; not in the file (the head, left as initialised): fc.weight, fc.bias
    """
    path = Path(path)
    state = _read_state_dict(path)
    head = head_name(model)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    outside_head = [k for k in (*missing, *unexpected, *mismatched) if not _under(k, head)]
    if outside_head:
        raise WeightsFileError(
            f"{path.name} does not fit this {type(model).__name__} beyond its head {head!r}: "
            + _summarize_keys(missing, unexpected, mismatched, own, state)
            + ". Was it saved from another architecture (or from a model wrapped in another module)?"
        )
    loadable = {k: v for k, v in state.items() if k in own and k not in mismatched}
    model.load_state_dict(loadable, strict=False)
    return LoadReport(path, len(loadable), missing, unexpected, mismatched)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        state = load_checkpoint(path)  # weights_only=True: a pickled object is refused, never run
    except CheckpointError as error:
        # Torch could not read the file, or it holds something other than a dict (e.g. a list
        # of tensors).
        size = path.stat().st_size
        raise WeightsFileError(f"{path.name} ({size} bytes) is not a readable weights file: {error}") from None
    for key in ("model", "state_dict"):  # a training checkpoint that holds a state_dict
        if isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsFileError(f"{path} holds a dict with keys {list(state)[:5]}, not a state_dict (a dict of parameter name -> tensor)")
    return dict(state)


def _summarize_keys(missing, unexpected, mismatched, own, state) -> str:
    def few(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's {len(own)} keys are missing from the file ({few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} of the file's {len(state)} keys are unknown to the model ({few(unexpected)})")
    if mismatched:
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched[:3]]
        parts.append(f"{len(mismatched)} keys have other shapes ({', '.join(shapes)})")
    return "; ".join(parts)


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
        raise ValueError(f"the head {name!r} of this {type(model).__name__} has no nn.Linear layer to replace")
    return f"{name}.{linears[-1]}" if linears[-1] else name


def replace_head(model: nn.Module, new: int | nn.Module) -> nn.Module:
    """Replace the head's last linear layer: with a fresh ``nn.Linear`` for ``new`` classes, or with module ``new``.

    The rest of the head stays (e.g. MobileNetV2's dropout before its linear layer).
    Returns the new layer.

    Example:
        >>> import torchvision
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
    return ParameterCount(sum(p.numel() for p in parameters if p.requires_grad), sum(p.numel() for p in parameters))


def _resolve(model: nn.Module, name: str) -> str:
    """A module name in ``model``; "head" means the head when the model has no module called so."""
    if name == "head" and not hasattr(model, "head"):
        return head_name(model)
    try:
        model.get_submodule(name)
    except AttributeError:
        children = ", ".join(n for n, _ in model.named_children())
        raise ValueError(f"{type(model).__name__} has no module {name!r} (its children: {children})") from None
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
    optimizer leaves them alone. BatchNorm layers whose parameters are all frozen are also
    put in eval mode, and kept there when ``model.train()`` is called again (``fit`` calls it
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
        raise ValueError(f"module {stage!r} has no parameters to train")  # raised before anything changes
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
            names += [f"features.{n}" for n, block in child.named_children() if next(block.parameters(), None) is not None]
        else:
            names.append(name)
    return names


def _batchnorm_layers(model: nn.Module) -> Iterator[nn.Module]:
    return (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def _sync_batchnorm(model: nn.Module) -> None:
    """Keep BatchNorm layers whose parameters are all frozen in eval mode; release the others."""
    for layer in _batchnorm_layers(model):
        parameters = list(layer.parameters(recurse=False))
        frozen = bool(parameters) and not any(p.requires_grad for p in parameters)
        pinned = "train" in layer.__dict__  # we replaced its train() method earlier
        if frozen and not pinned:
            # model.train() calls train() on every submodule; this layer's own train() now
            # ignores the request, so it stays in eval mode whoever calls it.
            layer.train = functools.partial(_stay_in_eval_mode, layer)
            layer.eval()
        elif not frozen and pinned:
            del layer.train  # back to nn.Module.train
            layer.train(model.training)


def _stay_in_eval_mode(layer: nn.Module, mode: bool = True) -> nn.Module:
    layer.training = False
    return layer


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
    groups = [{"params": params, "lr": resolved[name], "name": name} for name, params in buckets.items() if params]
    if rest:
        groups.append({"params": [parameter for _, parameter in rest], "lr": rest_lr, "name": "rest"})
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


# --------------------------------------------------------------------------------------
# Feature extraction and caching
# --------------------------------------------------------------------------------------


def feature_extractor(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` that outputs what its head's last linear layer receives.

    For a ResNet or MobileNet that is the globally pooled feature vector (512 / 1280 numbers
    per image). The copy has every parameter frozen and stays in eval mode even inside a
    model that is put in train mode (no dropout, BatchNorm with its running statistics): a
    fixed function of the image, which is what makes caching its outputs valid.
    ``model`` itself is unchanged.

    Example:
        >>> import torchvision
        >>> extractor = feature_extractor(torchvision.models.resnet18())
        >>> extractor(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 512])
    """
    extractor = copy.deepcopy(model)
    replace_head(extractor, nn.Identity())
    freeze(extractor)
    extractor.eval()
    # A parent's train() calls train() on its children; this one ignores it, so its whole
    # subtree stays in eval mode.
    extractor.train = functools.partial(_stay_in_eval_mode, extractor)
    return extractor


def extract_features(
    extractor: nn.Module,
    data: Dataset | DataLoader,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    channels_last: bool = True,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``extractor`` over ``data`` once (eval mode, ``inference_mode``); return ``(features, labels)`` on the CPU.

    ``data`` is a dataset of ``(image, label)`` pairs or a DataLoader over one.
    ``channels_last`` stores images as (N, H, W, C) in memory, the layout that the CPU's and
    the GPU's fast convolution kernels prefer: 25-45% faster inference on the course's CPUs.

    Example:
        >>> import torchvision
        >>> images = torch.utils.data.TensorDataset(torch.randn(5, 3, 32, 32), torch.arange(5))
        >>> x, y = extract_features(feature_extractor(torchvision.models.resnet18()), images, device="cpu")
        >>> x.shape, y.tolist()
        (torch.Size([5, 512]), [0, 1, 2, 3, 4])
    """
    device = torch.device(device) if device is not None else get_device()
    if isinstance(data, DataLoader):
        loader = data
    else:  # pinned memory only when the batches go to a CUDA GPU
        loader = pdl_data.make_loader(data, batch_size=batch_size, device=device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    extractor = extractor.to(device, memory_format=memory_format).eval()
    features, labels = [], []
    with torch.inference_mode():
        for images, targets in tqdm(loader, desc="features", leave=False, disable=not progress):
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            features.append(extractor(images).float().cpu())
            labels.append(torch.as_tensor(targets).cpu())
    return torch.cat(features), torch.cat(labels)


def _innermost(dataset: Dataset) -> tuple[Dataset, list[int] | None]:
    """Unwrap ``Subset``s: the underlying dataset and the indices into it (None: all of it)."""
    indices: list[int] | None = None
    while isinstance(dataset, Subset):
        outer = [int(i) for i in dataset.indices]
        indices = outer if indices is None else [outer[i] for i in indices]
        dataset = dataset.dataset
    return dataset, indices


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of ``tensor``'s values, whatever its dtype (bfloat16 included) and device."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _state_digest(digest: Any, model: nn.Module, skip: str) -> None:
    for key, tensor in sorted(model.state_dict().items()):
        if _under(key, skip):
            continue  # the layer that feature_extractor removes does not change the features
        digest.update(key.encode())
        digest.update(_tensor_bytes(tensor))


def _dataset_digest(digest: Any, dataset: Dataset) -> None:
    """Hash which images (and labels) ``dataset`` holds; refuse a dataset that does not say.

    Two datasets of the same type and length may hold different images, so type and length
    are not enough: a shared key would serve one dataset's features for the other.
    """
    samples = getattr(dataset, "samples", None)  # ImageFolder: [(path, class index), ...]
    if samples is not None:
        digest.update(repr(samples).encode())
        return
    tensors = getattr(dataset, "tensors", None)  # TensorDataset: the images and labels themselves
    if tensors is None:
        raise TypeError(
            f"cannot cache features of a {type(dataset).__name__}: the cache key must tell its images "
            "apart, and only a dataset with a file list (`samples`, like ImageFolder) or with its "
            "tensors (`tensors`, like TensorDataset) says which images it holds. Use one of those, "
            "or compute the features without a cache: extract_features(feature_extractor(model), dataset)"
        )
    for tensor in tensors:
        digest.update(repr((tensor.dtype, tuple(tensor.shape))).encode())
        digest.update(_tensor_bytes(tensor))


def feature_key(model: nn.Module, dataset: Dataset) -> str:
    """The cache key of ``model``'s features on ``dataset``: a hash of backbone, weights, transform and images.

    It hashes the architecture name, every weight except the head's last linear layer (the
    one ``feature_extractor`` removes: other weights, or the same backbone after fine-tuning,
    get another key), the dataset's transform (its ``repr``) and which images: the file list
    of an ImageFolder, the contents of a TensorDataset's tensors, and subset indices. Any
    other kind of dataset raises a ``TypeError``: its type and length do not say which
    images it holds, and a wrong guess would serve another dataset's features.

    Example:
        >>> images = torch.utils.data.TensorDataset(torch.zeros(4, 3, 8, 8), torch.zeros(4))
        >>> a, b = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten()), nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten())
        >>> feature_key(a, images) == feature_key(a, images), feature_key(a, images) == feature_key(b, images)
        (True, False)
        >>> other = torch.utils.data.TensorDataset(torch.ones(4, 3, 8, 8), torch.zeros(4))
        >>> feature_key(a, images) == feature_key(a, other)  # same length, other images
        False
    """
    base, indices = _innermost(dataset)
    digest = hashlib.sha256()
    digest.update(type(model).__name__.encode())
    try:
        skip = head_path(model)
    except ValueError:
        skip = "\0"  # no recognisable head: hash everything
    _state_digest(digest, model, skip)
    digest.update(repr(getattr(base, "transform", None)).encode())
    _dataset_digest(digest, base)
    digest.update(repr(indices).encode())
    return digest.hexdigest()[:20]


class CachedFeatures(NamedTuple):
    """What ``cached_features`` returns: the tensors, their cache key, and where they came from."""

    features: torch.Tensor
    labels: torch.Tensor
    key: str
    source: str  # "computed", "memory" or "disk"
    seconds: float


_MEMORY_CACHE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def clear_feature_cache() -> None:
    """Forget the features ``cached_features`` keeps in memory (files on disk stay).

    Example:
        >>> clear_feature_cache()
    """
    _MEMORY_CACHE.clear()


def cached_features(
    model: nn.Module,
    dataset: Dataset,
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    channels_last: bool = True,
    progress: bool = False,
) -> CachedFeatures:
    """The features of ``model``'s body on ``dataset``: computed once, then served from a cache.

    The cache is in memory (for the running process) and, with ``cache_dir``, in files
    ``<cache_dir>/features-<key>.pt`` that later runs reuse. The key (``feature_key``)
    changes with the architecture, the weights, the transform and the images, so a stale
    cache is never used; it needs an ImageFolder or a TensorDataset (or a Subset of one) to
    know the images, and other datasets raise a ``TypeError``. Only cache a deterministic
    transform: with random augmentation every epoch would see the same frozen copy of each
    image (a warning says so).

    Example:
        >>> import torchvision
        >>> images = torch.utils.data.TensorDataset(torch.randn(4, 3, 32, 32), torch.arange(4))
        >>> model = torchvision.models.resnet18()
        >>> first = cached_features(model, images, device="cpu")
        >>> again = cached_features(model, images, device="cpu")
        >>> first.source, again.source, again.features.shape
        ('computed', 'memory', torch.Size([4, 512]))
    """
    started = time.perf_counter()
    base, _ = _innermost(dataset)
    if "Random" in repr(getattr(base, "transform", None)):
        warnings.warn(
            "caching features of a randomly augmented dataset freezes one augmented copy of each "
            "image; use the deterministic (evaluation) transform for cached features",
            stacklevel=2,
        )
    key = feature_key(model, dataset)
    path = Path(cache_dir) / f"features-{key}.pt" if cache_dir is not None else None
    if key in _MEMORY_CACHE:
        features, labels = _MEMORY_CACHE[key]
        if path is not None and not path.is_file():  # computed before cache_dir was given
            save_checkpoint({"features": features, "labels": labels, "key": key}, path)
        return CachedFeatures(features, labels, key, "memory", time.perf_counter() - started)
    if path is not None and path.is_file():
        stored = load_checkpoint(path)
        _MEMORY_CACHE[key] = (stored["features"], stored["labels"])
        return CachedFeatures(stored["features"], stored["labels"], key, "disk", time.perf_counter() - started)
    features, labels = extract_features(
        feature_extractor(model), dataset, batch_size=batch_size, device=device,
        channels_last=channels_last, progress=progress,
    )  # fmt: skip
    _MEMORY_CACHE[key] = (features, labels)
    if path is not None:
        save_checkpoint({"features": features, "labels": labels, "key": key}, path)  # atomic write
    return CachedFeatures(features, labels, key, "computed", time.perf_counter() - started)


def fit_linear_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None,
    num_classes: int,
    *,
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 32,
    seed: int = 0,
    device: torch.device | str | None = "cpu",
    log_dir: str | os.PathLike | None = None,
    progress: bool = False,
):
    """Train a linear head on cached features with ``pdl.fit``; return ``(head, history)``.

    ``train`` and ``val`` are ``(features, labels)`` pairs, e.g. from ``cached_features``.
    The head is an ``nn.Linear(feature_dim, num_classes)`` trained with AdamW and
    cross-entropy; put it on the model with ``replace_head(model, head)``. An epoch over
    a few hundred feature vectors takes milliseconds, so the default device is the CPU.

    Example:
        >>> x = torch.randn(64, 8); y = (x[:, 0] > 0).long()
        >>> head, history = fit_linear_probe((x, y), (x, y), 2, epochs=40, lr=0.05)
        >>> head, history["val_accuracy"][-1] > 0.9
        (Linear(in_features=8, out_features=2, bias=True), True)
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the head's initial weights
    head = nn.Linear(train[0].shape[1], num_classes)
    train_loader = pdl_data.tensor_loader(*train, batch_size=batch_size, shuffle=True, generator=generator)
    val_loader = pdl_data.tensor_loader(*val, batch_size=256) if val is not None else None
    history = fit(
        head, train_loader, val_loader,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay),
        epochs=epochs, device=device, metrics=classification_metrics(num_classes),
        log_dir=log_dir, progress=progress,
    )  # fmt: skip
    return head, history


# --------------------------------------------------------------------------------------
# Preprocessing that matches the weights
# --------------------------------------------------------------------------------------


class Preprocessing(NamedTuple):
    """Transforms for training (with augmentation) and evaluation, and the normalisation used."""

    train: Any
    eval: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int


def preprocessing(backbone: str, weights: Any = None, image_size: int | None = None) -> Preprocessing:
    """The transforms that match ``weights``: their own resize, crop, interpolation and normalisation.

    torchvision weights carry their evaluation preset (``weights.transforms()``); its numbers
    are reused here, scaled to ``image_size`` when one is given (smaller images train faster;
    the resize keeps the preset's resize/crop ratio). Files and random initialisation get the
    standard ImageNet preprocessing (the mirror's MobileNetV2 weights were trained with it).
    The training transform replaces resize + centre crop with a random resized crop and a flip.

    Example:
        >>> p = preprocessing("efficientnet_b0", "DEFAULT", image_size=160)
        >>> p.image_size, p.mean
        (160, (0.485, 0.456, 0.406))
        >>> [type(t).__name__ for t in p.eval.transforms]
        ['ToImage', 'Resize', 'CenterCrop', 'ToDtype', 'Normalize']
    """
    resolved = resolve_weights(backbone, weights)
    if isinstance(resolved, WeightsEnum):
        preset = resolved.transforms()
        crop, resize = preset.crop_size[0], preset.resize_size[0]
        mean, std, interpolation = tuple(preset.mean), tuple(preset.std), preset.interpolation
    else:
        crop, resize = 224, 256
        mean, std, interpolation = pdl_data.IMAGENET_MEAN, pdl_data.IMAGENET_STD, InterpolationMode.BILINEAR
    if image_size is not None and image_size != crop:
        crop, resize = image_size, round(image_size * resize / crop)
    # The same steps as the standard ImageNet preprocessing, with the preset's numbers.
    settings = {"resize_size": resize, "mean": mean, "std": std, "interpolation": interpolation}
    training = pdl_data.imagenet_transform(crop, train=True, **settings)
    evaluation = pdl_data.imagenet_transform(crop, train=False, **settings)
    return Preprocessing(training, evaluation, tuple(mean), tuple(std), crop)
