"""Datasets for the course: where they live, how they are fetched and verified, how they load.

One folder, the *data root*, holds every dataset. A dataset is resolved in this order:

1. already in the data root, and its checksums match;
2. copied from a *mirror* folder (an offline classroom share, a USB stick), if one is set;
3. downloaded from its official URL.

With no copy anywhere and no network you get a ``DatasetNotFoundError`` that names the
dataset, the URL and the folder to put the files in.

Settings (environment variables):

- ``PDL_DATA_ROOT``: the data root. Default: ``data/`` in a checkout of the course
  repository, else ``~/.cache/pdl/data`` (e.g. when pdl is pip-installed in Colab).
- ``PDL_DATA_MIRROR``: a folder laid out like the data root to copy from.
- ``PDL_OFFLINE=1``: never try to download.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
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

if TYPE_CHECKING:
    from torchvision.transforms import InterpolationMode

DATA_ROOT_ENV = "PDL_DATA_ROOT"
MIRROR_ENV = "PDL_DATA_MIRROR"
OFFLINE_ENV = "PDL_OFFLINE"

# --------------------------------------------------------------------------------------
# Where data lives
# --------------------------------------------------------------------------------------


def data_root() -> Path:
    """The folder that holds every dataset (created if missing).

    ``PDL_DATA_ROOT`` wins; in a checkout of the course it is the repository's ``data/``;
    otherwise a per-user cache folder.

    Example:
        >>> data_root().is_dir()
        True
    """
    configured = os.environ.get(DATA_ROOT_ENV)
    if configured:
        root = Path(configured).expanduser()
    else:
        checkout = Path(__file__).resolve().parent.parent
        if (checkout / "pyproject.toml").is_file() and (checkout / "data").is_dir():
            root = checkout / "data"
        else:
            cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
            root = cache / "pdl" / "data"
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def mirror_dir() -> Path | None:
    """The offline mirror folder from ``PDL_DATA_MIRROR``, or None when unset.

    Example:
        >>> import os
        >>> os.environ["PDL_DATA_MIRROR"] = "/media/usb/pdl-data"  # doctest: +SKIP
        >>> mirror_dir()  # doctest: +SKIP
        PosixPath('/media/usb/pdl-data')
    """
    configured = os.environ.get(MIRROR_ENV)
    return Path(configured).expanduser().resolve() if configured else None


# --------------------------------------------------------------------------------------
# What the course needs: a small registry
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    """One downloadable thing: where it sits in the data root, how to check it, where it comes from.

    A resource is either a set of ``files`` (relative path -> sha256), or a whole folder
    checked by ``file_count`` and ``tree_sha256`` (the sha256 of the ``sha256sum`` listing of
    every file, sorted by path, as the mirror's README computes it).
    """

    name: str
    path: str  # relative to the data root
    description: str
    files: dict[str, str] = field(default_factory=dict)
    file_count: int | None = None
    tree_sha256: str | None = None
    url: str | None = None  # for a folder resource: a zip holding the folder
    file_urls: dict[str, str] = field(default_factory=dict)  # per file, gzip-compressed
    note: str = ""  # shown in the "not found" error
    required: bool = True  # False: only the offline mirror has it, and the course works without it


_FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in [
        Resource(
            name="fashion-mnist",
            path="FashionMNIST/raw",
            description="Fashion-MNIST, 60,000 train + 10,000 test 28x28 images (MIT, Zalando Research)",
            files={
                "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            },
            file_urls={
                name: f"{_FASHION_MNIST_URL}{name}.gz"
                for name in [
                    "train-images-idx3-ubyte",
                    "train-labels-idx1-ubyte",
                    "t10k-images-idx3-ubyte",
                    "t10k-labels-idx1-ubyte",
                ]
            },
        ),
        Resource(
            name="hymenoptera",
            path="hymenoptera_data",
            description="ants vs bees, 245 train + 153 val images (PyTorch transfer-learning tutorial)",
            file_count=398,
            tree_sha256="01139606c5c3087d7df4094de3866bc534d26a9ce09ce3f0e90d007ec225e6cc",
            url="https://download.pytorch.org/tutorial/hymenoptera_data.zip",
        ),
        Resource(
            name="mobilenet_v2-features",
            path="weights",
            description="ImageNet-pretrained MobileNetV2 feature weights (torchvision key names, no classifier)",
            files={
                "mobilenet_v2_imagenet_features.pth": "3e26d31cdedf2ea2ed69cc3c84a21c86902372a12e10e6d0ece4f6012fffdc97",
            },
            note=(
                "This file is only distributed through the course's offline mirror. Online, use "
                "torchvision's own weights instead: MobileNet_V2_Weights.IMAGENET1K_V1."
            ),
            required=False,
        ),
    ]
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is neither in the data root, nor in the mirror, nor downloadable."""


class DatasetCorruptError(RuntimeError):
    """A copy of a dataset exists but its checksums do not match."""


# --------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tree_sha256(folder: Path) -> tuple[int, str]:
    """(file count, sha256 of the ``find . -type f | sort | xargs sha256sum`` listing)."""
    files = sorted("./" + p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    listing = "".join(f"{_sha256(folder / name)}  {name}\n" for name in files)
    return len(files), hashlib.sha256(listing.encode()).hexdigest()


def verify(resource: Resource, base: Path) -> str | None:
    """Check ``resource`` under ``base``: None when it is complete and intact, else what is wrong.

    Example:
        >>> verify(RESOURCES["hymenoptera"], Path("/nonexistent"))
        'missing folder /nonexistent/hymenoptera_data'
    """
    folder = base / resource.path
    if not folder.is_dir():
        return f"missing folder {folder}"
    for name, expected in resource.files.items():
        path = folder / name
        if not path.is_file():
            return f"missing file {path}"
        if _sha256(path) != expected:
            return f"checksum mismatch for {path}"
    if resource.tree_sha256 is not None:
        count, digest = _tree_sha256(folder)
        if count != resource.file_count:
            return f"{folder} holds {count} files, expected {resource.file_count}"
        if digest != resource.tree_sha256:
            return f"checksum mismatch for the files under {folder}"
    return None


# --------------------------------------------------------------------------------------
# Resolution: root -> mirror -> download
# --------------------------------------------------------------------------------------

_verified: dict[tuple[str, str], Path] = {}  # (name, root) -> path, so a notebook verifies once


def ensure(name: str, *, quiet: bool = True) -> Path:
    """Make sure dataset ``name`` is in the data root, and return its folder there.

    Resolution order: present and verified in the root -> copied from the mirror ->
    downloaded. The result is cached for the rest of the process.

    Example:
        >>> folder = ensure("fashion-mnist")
        >>> sorted(p.name for p in folder.iterdir())[0]
        't10k-images-idx3-ubyte'
    """
    path, _ = ensure_with_source(name, quiet=quiet)
    return path


def ensure_with_source(name: str, *, quiet: bool = True) -> tuple[Path, str]:
    """Like ``ensure``, but also says where the data came from: "root", "mirror" or "download".

    Example:
        >>> path, source = ensure_with_source("hymenoptera")
        >>> path.name, source in ("root", "mirror", "download")
        ('hymenoptera_data', True)
    """
    if name not in RESOURCES:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(RESOURCES)}")
    resource = RESOURCES[name]
    root = data_root()
    key = (name, str(root))
    if key in _verified:
        return _verified[key], "root"

    problem = verify(resource, root)
    source = "root"
    if problem is not None:
        existing = (root / resource.path).exists()
        mirror = mirror_dir()
        if mirror is not None and verify(resource, mirror) is None:
            _say(quiet, f"{name}: copying from the mirror {mirror / resource.path}")
            _install_from(resource, lambda tmp: _copy_from_mirror(resource, mirror, tmp), root)
            source = "mirror"
        elif _can_download(resource):
            _say(quiet, f"{name}: downloading from {resource.url or _FASHION_MNIST_URL}")
            _install_from(resource, lambda tmp: _download(resource, tmp), root)
            source = "download"
        else:
            raise DatasetNotFoundError(_not_found_message(resource, root, mirror, existing, problem))
        problem = verify(resource, root)
        if problem is not None:
            raise DatasetCorruptError(f"{name}: after {source} the data is still wrong: {problem}")
    _verified[key] = root / resource.path
    return _verified[key], source


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message)


def offline() -> bool:
    """True when ``PDL_OFFLINE`` is set (to anything but "0"): pdl must not try to download.

    Example:
        >>> import os; os.environ["PDL_OFFLINE"] = "1"; offline()
        True
        >>> del os.environ["PDL_OFFLINE"]; offline()
        False
    """
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0")


def _can_download(resource: Resource) -> bool:
    return not offline() and bool(resource.url or resource.file_urls)


def _not_found_message(
    resource: Resource, root: Path, mirror: Path | None, existing: bool, problem: str
) -> str:
    lines = [f"Dataset {resource.name!r} ({resource.description}) is not available."]
    if existing:
        lines.append(f"- The copy in the data root is incomplete or damaged: {problem}.")
    else:
        lines.append(f"- Not found in the data root: {root / resource.path}")
    if mirror is None:
        lines.append(f"- No mirror is set ({MIRROR_ENV}).")
    else:
        lines.append(f"- Not (intact) in the mirror: {mirror / resource.path}")
    if resource.url or resource.file_urls:
        urls = [resource.url] if resource.url else list(resource.file_urls.values())
        why = f"{OFFLINE_ENV} is set" if offline() else "the download failed"  # PDL_OFFLINE=0 is not offline
        lines.append(f"- Not downloaded ({why}). Official URL(s): {', '.join(urls)}")
    if resource.note:
        lines.append(f"- {resource.note}")
    target = root / resource.path
    if resource.files:
        lines.append(f"To fix: put {', '.join(resource.files)} into {target}")
    else:
        lines.append(f"To fix: unpack the archive so that {target} holds its files")
    lines.append(f"or point {MIRROR_ENV} at a folder that holds {resource.path}/.")
    return "\n".join(lines)


def _install_from(resource: Resource, fill, root: Path) -> None:
    """Let ``fill(tmp)`` lay the resource out under a temporary folder, then move it into place.

    Files are moved one by one with ``os.replace`` (atomic on one file system), so an
    interrupted copy or download never leaves a half-written file under its real name.
    """
    with tempfile.TemporaryDirectory(dir=root, prefix=".incoming-") as tmp:
        fill(Path(tmp))
        source = Path(tmp) / resource.path
        target = root / resource.path
        if resource.files:
            target.mkdir(parents=True, exist_ok=True)
            for name in resource.files:
                os.replace(source / name, target / name)
        else:
            if target.exists():  # a damaged earlier copy: replace it as a whole
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)


def _copy_from_mirror(resource: Resource, mirror: Path, tmp: Path) -> None:
    source = mirror / resource.path
    target = tmp / resource.path
    if resource.files:
        target.mkdir(parents=True)
        for name in resource.files:
            shutil.copyfile(source / name, target / name)
    else:
        shutil.copytree(source, target)


def _download(resource: Resource, tmp: Path) -> None:
    try:
        if resource.file_urls:
            target = tmp / resource.path
            target.mkdir(parents=True)
            for name, url in resource.file_urls.items():
                compressed = tmp / (name + ".gz")
                _fetch(url, compressed)
                with gzip.open(compressed) as src, open(target / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        else:
            archive = tmp / "archive.zip"
            _fetch(resource.url, archive)
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
    except (urllib.error.URLError, OSError, zipfile.BadZipFile) as error:
        message = _not_found_message(resource, data_root(), mirror_dir(), False, "")
        raise DatasetNotFoundError(f"{message}\nThe download failed: {error}") from None


def _fetch(url: str, path: Path) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "pdl-course"})
    with urllib.request.urlopen(request, timeout=60) as response, open(path, "wb") as f:
        shutil.copyfileobj(response, f)


def fetch_all(names: Sequence[str] | None = None) -> dict[str, tuple[Path | None, str]]:
    """Resolve every course resource (or ``names``); return name -> (folder, source or error).

    This is what ``python -m pdl data`` runs. Missing resources are reported, not raised,
    so one missing file does not hide the state of the others.

    Example:
        >>> report = fetch_all(["hymenoptera"])  # doctest: +SKIP
        >>> report["hymenoptera"][1]  # doctest: +SKIP
        'root'
    """
    report: dict[str, tuple[Path | None, str]] = {}
    for name in names or list(RESOURCES):
        try:
            report[name] = ensure_with_source(name, quiet=False)
        except (DatasetNotFoundError, DatasetCorruptError) as error:
            report[name] = (None, str(error))
    return report


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


def fashion_mnist_dataset(split: str = "train", transform=None):
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
    dataset = fashion_mnist_dataset(split)
    images, labels = dataset.data, dataset.targets
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
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
    if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
        raise ValueError(
            "tensor_loader needs tensors of the same length, got "
            + ", ".join(str(tuple(t.shape)) for t in tensors)
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
):
    """The standard ImageNet preprocessing, with light augmentation for training.

    Evaluation: resize the short side to ``resize_size`` (default ``image_size * 256/224``),
    centre-crop ``image_size``. Training: a random resized crop of ``image_size`` and a
    horizontal flip. Both end with normalization by ``mean`` and ``std`` (default: ImageNet's).
    ``interpolation`` is the resizing filter (default bilinear); the other arguments let a
    pretrained model's own preset be reproduced (``pdl.transfer.preprocessing`` does).

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
    # which pdl.transfer.feature_key hashes: passing the default explicitly would change it.
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


def hymenoptera_datasets(image_size: int = 224, *, augment: bool = True, train_transform=None, val_transform=None):
    """The ants-vs-bees ``ImageFolder`` datasets ``(train, val)``; classes ``['ants', 'bees']``.

    Transforms default to ``imagenet_transform`` (augmented for training when ``augment``);
    pass ``train_transform``/``val_transform`` to use, e.g., a pretrained model's own.
    torchvision's ImageFolder skips the one GIF in the set, so train has 244 images.

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


def train_val_split(dataset: Dataset, val_fraction: float = 0.1, *, seed: int = 0) -> tuple[Subset, Subset]:
    """Split ``dataset`` into (train, validation) subsets, the same way every time for one seed.

    Uses its own generator, so the split does not depend on (or disturb) the global RNG.

    Example:
        >>> train, val = train_val_split(TensorDataset(torch.arange(10)), 0.2, seed=0)
        >>> len(train), len(val)
        (8, 2)
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    n_val = max(1, round(len(dataset) * val_fraction))
    generator = torch.Generator().manual_seed(seed)
    train, val = torch.utils.data.random_split(dataset, [len(dataset) - n_val, n_val], generator=generator)
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

    spawning = multiprocessing.get_start_method(allow_none=True) in ("spawn", None) and sys.platform in ("win32", "darwin")
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
    follows ``PDL_DEVICE``); workers persist between epochs so they start once.

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
        persistent_workers=workers > 0,
        drop_last=drop_last,
        generator=generator,
    )


def _check_split(split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {', '.join(allowed)}, not {split!r}")
