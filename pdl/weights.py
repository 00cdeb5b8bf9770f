"""Pretrained weights (lecture 07): which ones, where their file is, a backbone built with them.

- ``build_backbone("resnet18", "DEFAULT", num_classes=2)``: a torchvision model by name, with
  weights from torchvision's weights API (the torch hub cache), from a local ``state_dict``
  file, or none (random initialisation); the head is replaced for ``num_classes``.
- ``resolve_weights``, ``describe_weights``, ``hub_checkpoint_path``: what a ``weights``
  argument means, in words, and where torch keeps the file.
- ``load_weights_file``: a ``state_dict`` file into a model, where only the head may differ.
- ``preprocessing``: the transforms that match the weights.

How to name weights (the ``weights`` argument everywhere):

- ``None`` or ``"none"``: random initialisation (training from scratch).
- A torchvision weights enum (``ResNet18_Weights.IMAGENET1K_V1``) or its name, with or without
  the class (``"ResNet18_Weights.IMAGENET1K_V1"``, ``"IMAGENET1K_V1"``, ``"DEFAULT"``). The
  file is looked up in the torch hub cache (``<torch.hub.get_dir()>/checkpoints``) and
  downloaded there once when missing, by torch.hub itself.
- A path to a ``state_dict`` file (``"weights/my_backbone.pth"``), loaded with
  ``weights_only=True``. Only the head's keys may be missing from it or extra in it.
- ``"data:<path>"``: a file in pdl's data root (``pdl.store.data_root()``), fetched through
  ``pdl.store.ensure`` like the datasets (from the offline mirror, verified by checksum), e.g.
  ``"data:weights/mobilenet_v2_imagenet_features.pth"``, the ImageNet MobileNetV2 features of
  the course's offline mirror. Being a plain string, it can be a notebook parameter.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum
from torchvision.transforms import InterpolationMode

from pdl import store
from pdl.checkpoint import CheckpointError, holds_pickled_objects, load_checkpoint
from pdl.data import IMAGENET_MEAN, IMAGENET_STD, imagenet_transform
from pdl.transfer import _under, head_name, head_path, replace_head

__all__ = [
    "LoadReport",
    "Preprocessing",
    "WeightsFileError",
    "WeightsNotAvailableError",
    "build_backbone",
    "describe_weights",
    "hub_checkpoint_path",
    "load_hub_weights",
    "load_weights_file",
    "preprocessing",
    "resolve_weights",
]

DATA_PREFIX = "data:"


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
        raise TypeError(
            f"weights must be None, a torchvision weights enum, a name or a path; got {type(weights).__name__}"
        )
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
        names = ", ".join(dict.fromkeys(["DEFAULT", *available.__members__]))
        raise ValueError(
            f"{backbone!r} has no weights {weights!r}; choose one of: {names}"
        ) from None


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
        raise FileNotFoundError(
            f"weights file {path} does not exist (working directory: {Path.cwd()}): check the path, "
            "or use weights=None for random initialisation"
        )
    return path.resolve()


def _data_file(relative: str) -> Path:
    """A file in the data root; one that belongs to a pdl.data resource is fetched and verified."""
    relative_path = Path(relative)
    for resource in store.RESOURCES.values():
        if Path(resource.path) == relative_path.parent and relative_path.name in resource.files:
            return store.ensure(resource.name) / relative_path.name
    return _existing_file(store.data_root() / relative_path)


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


def load_hub_weights(
    weights: WeightsEnum, backbone: str, *, progress: bool = True
) -> dict[str, torch.Tensor]:
    """The state_dict of torchvision ``weights``, from the torch hub cache (downloaded there once).

    torch.hub's own ``load_state_dict_from_url`` (through the weights API's
    ``get_state_dict``) does the work: it downloads a missing file (checking the sha256
    prefix in its name) and loads it with ``weights_only=True``. pdl adds the errors:
    offline without the file, a failed download, or a damaged or unsafe file in the cache,
    each named with the file and what to do.

    Example:
        >>> from torchvision.models import ResNet18_Weights
        >>> from unittest import mock
        >>> with mock.patch.dict("os.environ", {"PDL_OFFLINE": "1"}), mock.patch("torch.hub.get_dir", lambda: "/nonexistent"):
        ...     load_hub_weights(ResNet18_Weights.DEFAULT, "resnet18")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        pdl.weights.WeightsNotAvailableError: The pretrained weights ResNet18_Weights.IMAGENET1K_V1 for 'resnet18' are not available: PDL_OFFLINE is set...
    """
    path = hub_checkpoint_path(weights)
    if not path.is_file() and store.offline():
        raise WeightsNotAvailableError(
            _weights_missing_message(weights, backbone, path, f"{store.OFFLINE_ENV} is set")
        )
    try:
        return weights.get_state_dict(progress=progress, check_hash=True, weights_only=True)
    except Exception as error:
        if not holds_pickled_objects(error):
            raise _hub_error(weights, backbone, path, error) from None
        raise WeightsFileError(
            f"Refused to load {path} from the torch hub cache: it is not a plain tensor file (it holds pickled "
            "Python objects, and unpickling them could run any code in it). torchvision's own files hold only "
            f"tensors, so this one came from elsewhere: delete it, and it is downloaded again from {weights.url}."
        ) from None


def _hub_error(weights: WeightsEnum, backbone: str, path: Path, error: Exception) -> Exception:
    if (
        not path.is_file()
    ):  # nothing arrived: the download failed (a hash mismatch leaves no file either)
        return WeightsNotAvailableError(
            _weights_missing_message(weights, backbone, path, f"the download failed: {error}")
        )
    # torch's own text is left out: for a file it cannot unpickle it suggests weights_only=False.
    return WeightsFileError(
        f"Could not read {path} ({path.stat().st_size} bytes) in the torch hub cache: it is truncated or "
        f"damaged ({type(error).__name__}). Delete it, and it is downloaded again from {weights.url}."
    )


def _weights_missing_message(weights: WeightsEnum, backbone: str, path: Path, why: str) -> str:
    return (
        f"The pretrained weights {weights} for {backbone!r} are not available: {why}.\n"
        f"torchvision looks for the file {path.name} in the torch hub cache folder {path.parent} "
        "(move that cache with TORCH_HOME or torch.hub.set_dir).\n"
        f"To fix: on a machine with internet, download {weights.url} and put {path.name} into "
        f"{path.parent}/; or use weights=None (random initialisation) or a local state_dict file "
        "(weights='path/to/file.pth')."
    )


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
            parts.append(
                f"not in the file (the head, left as initialised): {', '.join(self.missing)}"
            )
        if self.unexpected:
            parts.append(
                f"ignored (head keys the model does not have): {', '.join(self.unexpected)}"
            )
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
        # torch.hub puts the file into its cache and proves it holds only tensors; torchvision's
        # builder then loads that same file and does its architecture's own work with it (some
        # models change their input handling for pretrained weights), which pdl does not copy.
        load_hub_weights(resolved, name, progress=progress)
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
        raise WeightsFileError(
            f"{path.name} ({size} bytes) is not a readable weights file: {error}"
        ) from None
    for key in ("model", "state_dict"):  # a training checkpoint that holds a state_dict
        if isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsFileError(
            f"{path} holds a dict with keys {list(state)[:5]}, not a state_dict (a dict of parameter name -> tensor)"
        )
    return dict(state)


def _summarize_keys(missing, unexpected, mismatched, own, state) -> str:
    def few(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    parts = []
    if missing:
        parts.append(
            f"{len(missing)} of the model's {len(own)} keys are missing from the file ({few(missing)})"
        )
    if unexpected:
        parts.append(
            f"{len(unexpected)} of the file's {len(state)} keys are unknown to the model ({few(unexpected)})"
        )
    if mismatched:
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched[:3]]
        parts.append(f"{len(mismatched)} keys have other shapes ({', '.join(shapes)})")
    return "; ".join(parts)


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


def preprocessing(
    backbone: str, weights: Any = None, image_size: int | None = None
) -> Preprocessing:
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
        mean, std, interpolation = IMAGENET_MEAN, IMAGENET_STD, InterpolationMode.BILINEAR
    if image_size is not None and image_size != crop:
        crop, resize = image_size, round(image_size * resize / crop)
    # The same steps as the standard ImageNet preprocessing, with the preset's numbers.
    settings = {"resize_size": resize, "mean": mean, "std": std, "interpolation": interpolation}
    training = imagenet_transform(crop, train=True, **settings)
    evaluation = imagenet_transform(crop, train=False, **settings)
    return Preprocessing(training, evaluation, tuple(mean), tuple(std), crop)
