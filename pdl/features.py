"""Features of a frozen backbone (lecture 07): extract them once, cache them, train a linear probe.

A frozen backbone is a fixed function of the image, so its outputs can be computed once
and reused for every epoch of training a new head on top:

- ``feature_extractor(model)``: the body without its last linear layer, frozen, always in eval mode;
- ``extract_features``: run it over a dataset once, keep the features (and labels) on the CPU;
- ``cached_features``: the same, computed once per process (and, with ``cache_dir``, once
  per disk), keyed by a hash of the backbone, its weights, the transform and the images;
- ``fit_linear_probe``: a linear head trained on the features with ``pdl.fit``.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from pdl.checkpoint import load_checkpoint, remove_stale_temporary_files, save_checkpoint
from pdl.data import make_loader, tensor_loader
from pdl.device import get_device
from pdl.metrics import classification_metrics
from pdl.train import fit
from pdl.transfer import _under, freeze, head_path, replace_head

if TYPE_CHECKING:
    from pdl.history import History

__all__ = [
    "CachedFeatures",
    "FeatureExtractor",
    "cached_features",
    "clear_feature_cache",
    "extract_features",
    "feature_extractor",
    "feature_key",
    "fit_linear_probe",
]


class FeatureExtractor(nn.Module):
    """A frozen copy of a model's body that stays in eval mode: a fixed function of the image.

    ``model.train()`` on a model that holds it calls its ``train()`` too, which keeps it (and
    everything in it) in eval mode: no dropout, BatchNorm with its running statistics.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.body = copy.deepcopy(model)
        replace_head(self.body, nn.Identity())
        freeze(self.body)
        self.train(False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


def feature_extractor(model: nn.Module) -> FeatureExtractor:
    """A frozen copy of ``model`` that outputs what its head's last linear layer receives.

    For a ResNet or MobileNet that is the globally pooled feature vector (512 / 1280 numbers
    per image). The copy has every parameter frozen and stays in eval mode even inside a
    model that is put in train mode (no dropout, BatchNorm with its running statistics): a
    fixed function of the image, which is what makes caching its outputs valid.
    ``model`` itself is unchanged (see ``FeatureExtractor``).

    Example:
        >>> import torchvision
        >>> extractor = feature_extractor(torchvision.models.resnet18())
        >>> extractor(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 512])
    """
    return FeatureExtractor(model)


def extract_features(
    extractor: nn.Module,
    data: Dataset | DataLoader,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    channels_last: bool = True,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``extractor`` over ``data`` once (eval mode, ``inference_mode``); return ``(features, labels)`` on the CPU.

    ``data`` is a dataset of ``(image, label)`` pairs or a DataLoader over one; for unlabeled
    images (a dataset of images alone, or ``(image,)`` tuples) ``labels`` is None.
    ``channels_last`` stores images as (N, H, W, C) in memory, the layout that the CPU's and
    the GPU's fast convolution kernels prefer: 25-45% faster inference on the course's CPUs.

    Example:
        >>> import torchvision
        >>> images = torch.utils.data.TensorDataset(torch.randn(5, 3, 32, 32), torch.arange(5))
        >>> x, y = extract_features(feature_extractor(torchvision.models.resnet18()), images, device="cpu")
        >>> x.shape, y.tolist()
        (torch.Size([5, 512]), [0, 1, 2, 3, 4])
    """
    device = get_device(device)
    if isinstance(data, DataLoader):
        loader = data
    else:  # pinned memory only when the batches go to a CUDA GPU
        loader = make_loader(data, batch_size=batch_size, device=device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    extractor = extractor.to(device, memory_format=memory_format).eval()
    features, labels = [], []
    # Updated by hand, not tqdm(loader): see pdl.train.train_one_epoch (no second iter(loader)).
    try:
        total = len(loader)
    except TypeError:  # an iterable dataset need not know its length
        total = None
    bar = tqdm(total=total, desc="features", leave=False, disable=not progress)
    with torch.inference_mode():
        for batch in loader:
            images, targets = _images_and_labels(batch)
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            features.append(extractor(images).float().cpu())
            if targets is not None:
                labels.append(torch.as_tensor(targets).cpu())
            bar.update()
    bar.close()
    if not features:
        raise ValueError("extract_features got no images: the dataset or loader is empty")
    return torch.cat(features), torch.cat(labels) if labels else None


def _images_and_labels(batch: Any) -> tuple[torch.Tensor, Any]:
    """``(images, labels)`` of a batch; labels None for a batch of images alone."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if (
        isinstance(batch, (tuple, list))
        and len(batch) in (1, 2)
        and isinstance(batch[0], torch.Tensor)
    ):
        return batch[0], batch[1] if len(batch) == 2 else None
    raise TypeError(
        f"extract_features needs batches of images, or (images, labels) pairs; got a {type(batch).__name__}"
        + (f" of length {len(batch)}" if hasattr(batch, "__len__") else "")
        + ". A Dataset's __getitem__ should return an image tensor, or (image, label)."
    )


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
    labels: torch.Tensor | None  # None for unlabeled images
    key: str
    source: str  # "computed", "memory" or "disk"
    seconds: float


_MEMORY_CACHE: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}


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
    if path is not None:
        remove_stale_temporary_files(path.parent)  # left by a process killed while writing one
    if key in _MEMORY_CACHE:
        features, labels = _copies(*_MEMORY_CACHE[key])  # the cache keeps its own, unchanged
        if path is not None and not path.is_file():  # computed before cache_dir was given
            save_checkpoint({"features": features, "labels": labels, "key": key}, path)
        return CachedFeatures(features, labels, key, "memory", time.perf_counter() - started)
    if path is not None and path.is_file():
        stored = load_checkpoint(path)
        _MEMORY_CACHE[key] = (stored["features"], stored["labels"])
        features, labels = _copies(stored["features"], stored["labels"])
        return CachedFeatures(features, labels, key, "disk", time.perf_counter() - started)
    features, labels = extract_features(
        feature_extractor(model), dataset, batch_size=batch_size, device=device,
        channels_last=channels_last, progress=progress,
    )  # fmt: skip
    _MEMORY_CACHE[key] = _copies(features, labels)
    if path is not None:
        save_checkpoint({"features": features, "labels": labels, "key": key}, path)  # atomic write
    return CachedFeatures(features, labels, key, "computed", time.perf_counter() - started)


def _copies(
    features: torch.Tensor, labels: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    # Hand out copies: an in-place edit of a returned tensor (features -= mean) must not
    # change what later requests get.
    return features.clone(), labels.clone() if labels is not None else None


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
) -> tuple[nn.Linear, History]:
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
    train_loader = tensor_loader(*train, batch_size=batch_size, shuffle=True, generator=generator)
    val_loader = tensor_loader(*val, batch_size=256) if val is not None else None
    history = fit(
        head, train_loader, val_loader,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay),
        epochs=epochs, device=device, metrics=classification_metrics(num_classes),
        log_dir=log_dir, progress=progress,
    )  # fmt: skip
    return head, history
