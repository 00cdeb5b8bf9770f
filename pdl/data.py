"""Datasets and loaders for the course: Fashion-MNIST, ants vs bees, splits and DataLoaders.

Where the files come from (the data root, the offline mirror, downloads, verification) is
``pdl.store``'s business; the functions here ask it for a folder with ``ensure(name)`` and
turn the files into tensors, ``Dataset`` objects and ``DataLoader`` objects:

- ``fashion_mnist_tensors()`` (the whole set as two tensors) and ``fashion_mnist_dataset()``
  (the usual per-sample torchvision dataset);
- ``tensor_loader()``: batches sliced from in-memory tensors;
- ``hymenoptera_datasets()`` with ``imagenet_transform()``: ``ImageFolder`` datasets for lecture 07;
- ``train_val_split()``, ``make_loader()``, ``default_num_workers()``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    TensorDataset,
)

from pdl.device import get_device
from pdl.store import ensure

if TYPE_CHECKING:  # for the type hints only: torchvision's datasets load when they are used
    from torchvision.datasets import FashionMNIST, ImageFolder
    from torchvision.transforms import InterpolationMode, v2

# --------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
# Mean and standard deviation of the 60,000 training images after scaling pixels to [0, 1]
# (tests/test_data.py recomputes them).
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530


def fashion_mnist_dataset(split: str = "train", transform: Callable | None = None) -> FashionMNIST:
    """Fashion-MNIST as the usual torchvision ``Dataset``: one PIL image at a time.

    This is the per-sample pipeline (decode -> transform -> collate) that real datasets
    need; for Fashion-MNIST it is ~10x slower per epoch than ``fashion_mnist_tensors``.

    Example:
        >>> from torchvision.transforms import v2
        >>> ds = fashion_mnist_dataset("test", transform=v2.Compose(
        ...     [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]))
        >>> ds[0][0].shape
        torch.Size([1, 28, 28])
    """
    from torchvision.datasets import FashionMNIST

    _check_split(split, ("train", "test"))
    folder = ensure("fashion-mnist")  # .../FashionMNIST/raw
    return FashionMNIST(str(folder.parent.parent), train=split == "train", transform=transform)


def fashion_mnist_tensors(
    split: str = "train", *, normalize: bool = True, flatten: bool = False, limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as two in-memory tensors: images ``(N, 1, 28, 28)`` float32 and labels ``(N,)``.

    Pixels are scaled to [0, 1] and, with ``normalize``, standardized with the training set's
    mean and std. ``flatten`` gives ``(N, 784)`` for an MLP; ``limit`` keeps the first N samples.
    The whole training set is 188 MB as float32, and an epoch over it is about 10x faster than
    through PIL images and transforms.

    Example:
        >>> x, y = fashion_mnist_tensors("test", flatten=True, limit=100)
        >>> x.shape, y.dtype
        (torch.Size([100, 784]), torch.int64)
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        # A negative limit would slice from the end (limit=-5 keeps all but 5 samples).
        raise ValueError(
            f"limit must be a positive number of samples, or None for all of them; got {limit!r}"
        )
    dataset = fashion_mnist_dataset(split)
    images, labels = dataset.data, dataset.targets
    if limit is not None:
        images, labels = (
            images[:limit],
            labels[:limit],
        )  # a limit above the set's size keeps all of it
    x = images.unsqueeze(1).float().div_(255)
    if normalize:
        x.sub_(FASHION_MNIST_MEAN).div_(FASHION_MNIST_STD)
    if flatten:
        x = x.flatten(1)
    return x, labels.clone()


def tensor_loader(
    *tensors: torch.Tensor,
    batch_size: int = 64,
    shuffle: bool = False,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """A DataLoader over in-memory tensors that slices a whole batch at once.

    A plain ``DataLoader(TensorDataset(x, y), batch_size=64)`` indexes one sample at a time
    and stacks them again; here a ``BatchSampler`` hands the dataset a list of indices, and
    ``x[indices]`` gathers the batch in one operation. Same batches, less Python per epoch.

    Example:
        >>> loader = tensor_loader(torch.arange(10.0), torch.arange(10), batch_size=4)
        >>> [len(xb) for xb, yb in loader]
        [4, 4, 2]
    """
    not_tensors = [type(t).__name__ for t in tensors if not isinstance(t, torch.Tensor)]
    if not_tensors:
        raise TypeError(
            f"tensor_loader needs torch tensors, got {', '.join(not_tensors)}: convert NumPy arrays "
            "with torch.from_numpy(x) (and .float() for inputs: NumPy's default float64 is not what models use)"
        )
    if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
        raise ValueError(
            "tensor_loader needs tensors of the same length (one target per input), got "
            + ", ".join(str(tuple(t.shape)) for t in tensors)
            + ": slice them to the same samples, e.g. x[:n], y[:n]"
        )
    if len(tensors[0]) == 0:
        raise ValueError(
            "tensor_loader got empty tensors (0 samples): an epoch over them would train nothing"
        )
    dataset = TensorDataset(*tensors)
    sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    batches = BatchSampler(sampler, batch_size=batch_size, drop_last=drop_last)
    # batch_size=None: the dataset already returns whole batches, so no collation is needed.
    # The generator is given to the DataLoader too, which draws its worker seed from it first,
    # exactly as DataLoader(..., shuffle=True, generator=g) does: same generator, same batches.
    return DataLoader(dataset, sampler=batches, batch_size=None, generator=generator)


# --------------------------------------------------------------------------------------
# Images: ImageFolder with ImageNet preprocessing (hymenoptera ants/bees)
# --------------------------------------------------------------------------------------

# The statistics every ImageNet-pretrained torchvision model was trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_transform(
    image_size: int = 224,
    *,
    train: bool = False,
    resize_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: InterpolationMode | None = None,
) -> v2.Compose:
    """The standard ImageNet preprocessing, with light augmentation for training.

    Evaluation: resize the short side to ``resize_size`` (default ``image_size * 256/224``),
    centre-crop ``image_size``. Training: a random resized crop of ``image_size`` and a
    horizontal flip. Both end with normalization by ``mean`` and ``std`` (default: ImageNet's).
    ``interpolation`` is the resizing filter (default bilinear); the other arguments let a
    pretrained model's own preset be reproduced (``pdl.weights.preprocessing`` does).

    Example:
        >>> from PIL import Image
        >>> t = imagenet_transform(128)
        >>> t(Image.new("RGB", (300, 200))).shape
        torch.Size([3, 128, 128])
        >>> imagenet_transform(128, resize_size=160).transforms[1].size  # the Resize step
        [160]
    """
    from torchvision.transforms import v2

    # None leaves torchvision's default (bilinear) in place, and with it the transforms' repr,
    # which pdl.features.feature_key hashes: passing the default explicitly would change it.
    resizing = {"antialias": True}
    if interpolation is not None:
        resizing["interpolation"] = interpolation
    if train:
        geometry = [v2.RandomResizedCrop(image_size, **resizing), v2.RandomHorizontalFlip()]
    else:
        resize_size = round(image_size * 256 / 224) if resize_size is None else resize_size
        geometry = [v2.Resize(resize_size, **resizing), v2.CenterCrop(image_size)]
    return v2.Compose(
        [
            v2.ToImage(),
            *geometry,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


def hymenoptera_datasets(
    image_size: int = 224,
    *,
    augment: bool = True,
    train_transform: Callable | None = None,
    val_transform: Callable | None = None,
) -> tuple[ImageFolder, ImageFolder]:
    """The ants-vs-bees ``ImageFolder`` datasets ``(train, val)``; classes ``['ants', 'bees']``.

    Transforms default to ``imagenet_transform`` (augmented for training when ``augment``);
    pass ``train_transform``/``val_transform`` to use, e.g., a pretrained model's own.
    torchvision's ImageFolder skips the one GIF in the set, so train has 244 images; it loads
    every image in the class folders, also ones you add yourself (``pdl.store`` leaves them alone).

    Example:
        >>> train, val = hymenoptera_datasets(128)
        >>> len(train), len(val), train.classes
        (244, 153, ['ants', 'bees'])
    """
    from torchvision.datasets import ImageFolder

    folder = ensure("hymenoptera")
    train_transform = train_transform or imagenet_transform(image_size, train=augment)
    val_transform = val_transform or imagenet_transform(image_size, train=False)
    return (
        ImageFolder(str(folder / "train"), transform=train_transform),
        ImageFolder(str(folder / "val"), transform=val_transform),
    )


# --------------------------------------------------------------------------------------
# Splits and loaders
# --------------------------------------------------------------------------------------


def train_val_split(
    dataset: Dataset, val_fraction: float = 0.1, *, seed: int = 0
) -> tuple[Subset, Subset]:
    """Split ``dataset`` into (train, validation) subsets, the same way every time for one seed.

    Uses its own generator, so the split does not depend on (or disturb) the global RNG.

    Example:
        >>> train, val = train_val_split(TensorDataset(torch.arange(10)), 0.2, seed=0)
        >>> len(train), len(val)
        (8, 2)
    """
    if not 0 < val_fraction < 1:
        raise ValueError(
            f"val_fraction must be between 0 and 1 (e.g. 0.1 keeps 10% for validation), got {val_fraction}"
        )
    n_val = max(1, round(len(dataset) * val_fraction))
    generator = torch.Generator().manual_seed(seed)
    train, val = torch.utils.data.random_split(
        dataset, [len(dataset) - n_val, n_val], generator=generator
    )
    return train, val


def default_num_workers() -> int:
    """How many DataLoader worker processes to use by default.

    0 inside Jupyter on Windows and macOS: there workers are *spawned*, and a dataset or
    transform defined in a notebook cannot be sent to them (the infamous "Can't get
    attribute ... on <module '__main__'>" error). Elsewhere up to 4, leaving a core for
    the training process.

    Example:
        >>> default_num_workers() >= 0
        True
    """
    import multiprocessing

    spawning = multiprocessing.get_start_method(allow_none=True) in (
        "spawn",
        None,
    ) and sys.platform in ("win32", "darwin")
    in_notebook = "ipykernel" in sys.modules
    if spawning and in_notebook:
        return 0
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def make_loader(
    dataset: Dataset,
    batch_size: int = 32,
    *,
    shuffle: bool = False,
    num_workers: int | None = None,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> DataLoader:
    """A DataLoader with defaults that work in notebooks on every OS.

    ``num_workers`` defaults to ``default_num_workers()``; memory is pinned only when a CUDA
    GPU will receive the batches (``device``, by default ``pdl.device.get_device()``, which
    follows ``PDL_DEVICE``).

    Workers start afresh every epoch (``persistent_workers=False``), seeded from ``generator``
    (or the global RNG): that is what lets ``pdl.fit(resume=...)`` repeat an uninterrupted run
    exactly, random augmentation included. Persistent workers would carry their random state
    from epoch to epoch, and no checkpoint can capture the state of another process. Starting
    workers costs a fraction of a second per epoch on Linux.

    Example:
        >>> loader = make_loader(TensorDataset(torch.zeros(10, 3)), batch_size=4, num_workers=0)
        >>> len(loader)
        3
    """
    workers = default_num_workers() if num_workers is None else num_workers
    # Pinned (page-locked) memory only speeds up copies to a CUDA GPU; for batches that stay
    # on the CPU it just costs an extra copy. So ask where the batches go, not what is installed.
    target = torch.device(device) if device is not None else get_device()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=target.type == "cuda",
        persistent_workers=False,  # see above: exact resume
        drop_last=drop_last,
        generator=generator,
    )


def _check_split(split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {', '.join(allowed)}, not {split!r}")
