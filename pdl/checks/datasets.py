"""Self-checks for lecture 05, part 2: your own ``Dataset`` subclass.

- ``check_image_dataset(cls)``: ``cls(images, labels, transform=None)``, a
  ``torch.utils.data.Dataset`` with ``__len__`` and ``__getitem__`` that applies its transform.

The check runs your class on small tensors it makes itself, inside ``torch.random.fork_rng()``,
so the notebook's random numbers are the same with or without it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from pdl.checks.core import call_safely, close, compare_tensors, exercise, report, unpack

__all__ = ["check_image_dataset"]


# --------------------------------------------------------------------------------------
# Your own Dataset
# --------------------------------------------------------------------------------------


class _CountingTransform:
    """A transform that doubles the image and adds 1, and counts how often it was called."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return image * 2 + 1


def _label(value: Any) -> int | None:
    """A label as an int: a Python int or a one-element integer tensor; None otherwise."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


@exercise
def check_image_dataset(cls: Any) -> bool:
    """Check ``cls(images, labels, transform=None)``: a ``torch.utils.data.Dataset`` subclass.

    ``len(dataset)`` is the number of images; ``dataset[i]`` returns the pair
    ``(image, label)`` of sample ``i``, the image passed through ``transform`` (when one is
    given) at that moment, so that random augmentation is drawn anew each time. It must
    also work in a ``DataLoader``.

    Example:
        >>> class ImageDataset(Dataset):
        ...     def __init__(self, images, labels, transform=None):
        ...         self.images, self.labels, self.transform = images, labels, transform
        ...     def __len__(self):
        ...         return len(self.images)
        ...     def __getitem__(self, index):
        ...         image = self.images[index]
        ...         if self.transform is not None:
        ...             image = self.transform(image)
        ...         return image, int(self.labels[index])
        >>> check_image_dataset(ImageDataset)
        ✅ your Dataset: correct
        True
    """
    # a random transform, and DataLoader's worker seed, use the global generator
    with torch.random.fork_rng():
        return report("your Dataset", _check_dataset_class(cls))


def _check_dataset_class(cls: Any) -> str | None:
    generator = torch.Generator().manual_seed(11)
    images = torch.rand(7, 1, 5, 5, generator=generator)
    labels = torch.tensor([3, 0, 9, 1, 4, 4, 2])
    name = getattr(cls, "__name__", type(cls).__name__)

    dataset, error = call_safely(cls, images.clone(), labels.clone())
    if error:
        hint = " (give transform a default: transform=None)" if "transform" in error else ""
        return f"{name}(images, labels) without a transform: {error}{hint}"
    if not isinstance(dataset, Dataset):
        return f"{name} should subclass torch.utils.data.Dataset, got a {type(dataset).__name__}"
    length, error = call_safely(len, dataset)
    if error:
        return f"len(dataset): {error} (define __len__)"
    if length != len(images):
        return (
            f"len(dataset) is {length}, expected {len(images)}, the number of images "
            "(len(self.images) counts along the first dimension)"
        )
    for index in (0, 3, 6):
        problem = _check_item(dataset, index, images[index], int(labels[index]))
        if problem:
            return f"without a transform, {problem}"

    transform = _CountingTransform()
    dataset, error = call_safely(cls, images.clone(), labels.clone(), transform=transform)
    if error:
        return f"{name}(images, labels, transform=...): {error}"
    if transform.calls:
        return (
            "the transform already ran in __init__: call it in __getitem__, on the one image "
            "asked for, so random augmentation is drawn anew every time it is loaded"
        )
    for index in (1, 5):
        problem = _check_item(
            dataset, index, images[index] * 2 + 1, int(labels[index]), untransformed=images[index]
        )
        if problem:
            return f"with a transform, {problem}"
    if transform.calls != 2:
        return f"two items were loaded but the transform ran {transform.calls} times: once per item"

    loader = DataLoader(dataset, batch_size=4)
    batches, error = call_safely(lambda: [(tuple(x.shape), tuple(y.shape)) for x, y in loader])
    if error:
        return f"a DataLoader over your dataset failed: {error}"
    if batches != [((4, 1, 5, 5), (4,)), ((3, 1, 5, 5), (3,))]:
        return (
            f"a DataLoader(batch_size=4) gave batches {batches}, expected images (4, 1, 5, 5) "
            "and labels (4,), then (3, 1, 5, 5) and (3,)"
        )
    return None


def _check_item(
    dataset: Dataset,
    index: int,
    image: torch.Tensor,
    label: int,
    untransformed: torch.Tensor | None = None,
) -> str | None:
    item, error = call_safely(dataset.__getitem__, index)
    if error:
        return f"dataset[{index}]: {error}"
    pair, problem = unpack(item, ("image", "label"))
    if problem:
        return f"dataset[{index}]: {problem}"
    got_image, got_label = pair
    if (
        _label(got_image) is not None
        and isinstance(got_label, torch.Tensor)
        and got_label.ndim >= 2
    ):
        return f"dataset[{index}] returned (label, image); return (image, label), in that order"
    if untransformed is not None and close(got_image, untransformed):
        return f"dataset[{index}] returned the image untransformed: apply self.transform in __getitem__"
    if not close(got_image, image):
        if isinstance(got_image, torch.Tensor) and got_image.shape == image.shape:
            return f"dataset[{index}] returned the wrong image: use the index, self.images[index]"
        return f"dataset[{index}]: " + (
            compare_tensors(got_image, image, name="the image") or "wrong image"
        )
    if _label(got_label) != label:
        return (
            f"dataset[{index}] returned label {got_label!r}, expected {label} (self.labels[index])"
        )
    return None
