"""Where the course's files live, and how they get there: the data root, the mirror, downloads.

One folder, the *data root*, holds every dataset. A dataset is resolved in this order:

1. already in the data root, and its checksums match;
2. copied from a *mirror* folder (an offline classroom share, a USB stick), if one is set;
3. downloaded from its official URL.

Every dataset has a *manifest*: the relative path and sha256 of each of its files. Only
those files are verified, and only those are repaired: a damaged or missing file is copied
again, one file at a time. Files you add yourself (a photo of your own in
``hymenoptera_data/train/ants/``) are never touched; ``ensure`` says what it repaired and
what it left alone. With no copy anywhere and no network you get a ``DatasetNotFoundError``
that names the dataset, the URL and the folder to put the files in.

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
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(
            f"the data root {root} is a file, not a folder: point {DATA_ROOT_ENV} at a folder"
        )
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def mirror_dir() -> Path | None:
    """The offline mirror folder from ``PDL_DATA_MIRROR``, or None when unset.

    Example:
        >>> from unittest import mock
        >>> with mock.patch.dict("os.environ", {"PDL_DATA_MIRROR": "/media/usb/pdl-data"}):
        ...     mirror_dir().as_posix()
        '/media/usb/pdl-data'
    """
    configured = os.environ.get(MIRROR_ENV)
    return Path(configured).expanduser().resolve() if configured else None


def offline() -> bool:
    """True when ``PDL_OFFLINE`` is set (to anything but "0"): pdl must not try to download.

    Example:
        >>> from unittest import mock
        >>> with mock.patch.dict("os.environ", {"PDL_OFFLINE": "1"}):
        ...     offline()
        True
        >>> with mock.patch.dict("os.environ", {"PDL_OFFLINE": "0"}):
        ...     offline()
        False
    """
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0")


# --------------------------------------------------------------------------------------
# What the course needs: a small registry, one manifest per dataset
# --------------------------------------------------------------------------------------

_MANIFESTS = Path(__file__).resolve().parent / "manifests"


def read_manifest(name: str, sha256: str) -> dict[str, str]:
    """The manifest ``pdl/manifests/<name>``: relative path -> sha256, in ``sha256sum`` format.

    ``sha256`` is the published digest of the manifest itself (for hymenoptera, the one in the
    mirror's README), so a damaged manifest is caught before it judges any data.

    Example:
        >>> files = read_manifest("hymenoptera_data.sha256", RESOURCES["hymenoptera"].manifest_sha256)
        >>> len(files), "train/ants/0013035.jpg" in files
        (398, True)
    """
    text = (_MANIFESTS / name).read_text(encoding="utf-8")
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != sha256:
        raise RuntimeError(f"the manifest {_MANIFESTS / name} is damaged: reinstall pdl")
    files = {}
    for line in text.splitlines():
        digest, _, path = line.partition("  ")  # sha256sum's two spaces; names may hold spaces
        files[path.removeprefix("./")] = digest
    return files


@dataclass(frozen=True)
class Resource:
    """One downloadable thing: where it sits in the data root, its files, where it comes from.

    ``files`` is the manifest: each file's path (relative to ``path``) and its sha256.
    """

    name: str
    path: str  # relative to the data root
    description: str
    files: Mapping[str, str]
    url: str | None = None  # a zip holding the folder
    file_urls: Mapping[str, str] = field(default_factory=dict)  # per file, gzip-compressed
    manifest_sha256: str | None = None  # the digest of the manifest file, when it is one
    note: str = ""  # shown in the "not found" error
    required: bool = True  # False: only the offline mirror has it, and the course works without it


_FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
_HYMENOPTERA_MANIFEST_SHA256 = "01139606c5c3087d7df4094de3866bc534d26a9ce09ce3f0e90d007ec225e6cc"

RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in [
        Resource(
            name="fashion-mnist",
            path="FashionMNIST/raw",
            description="Fashion-MNIST, 60,000 train + 10,000 test 28x28 images (MIT, Zalando Research)",
            files=_FASHION_MNIST_FILES,
            file_urls={name: f"{_FASHION_MNIST_URL}{name}.gz" for name in _FASHION_MNIST_FILES},
        ),
        Resource(
            name="hymenoptera",
            path="hymenoptera_data",
            description="ants vs bees, 245 train + 153 val images (PyTorch transfer-learning tutorial)",
            files=read_manifest("hymenoptera_data.sha256", _HYMENOPTERA_MANIFEST_SHA256),
            manifest_sha256=_HYMENOPTERA_MANIFEST_SHA256,
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
# Verification: the manifest's files, and nothing else
# --------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_files(
    resource: Resource, base: Path, names: Sequence[str] | None = None
) -> dict[str, str]:
    """What is wrong with ``resource``'s own files under ``base``: relative path -> problem.

    An empty dict means every file of the manifest (or of ``names``) is there and intact.

    Example:
        >>> check_files(RESOURCES["fashion-mnist"], Path("/nonexistent"))["t10k-labels-idx1-ubyte"]
        'missing'
    """
    folder = base / resource.path
    problems = {}
    for name in names if names is not None else resource.files:
        path = folder / name
        if not path.is_file():
            problems[name] = "missing"
        elif _sha256(path) != resource.files[name]:
            problems[name] = "checksum mismatch"
    return problems


def verify(resource: Resource, base: Path) -> str | None:
    """Check ``resource`` under ``base``: None when its files are complete and intact, else what is wrong.

    Files that are not in the manifest are not the dataset's and do not count (see ``extra_files``).

    Example:
        >>> verify(RESOURCES["hymenoptera"], Path("/nonexistent"))
        'missing folder /nonexistent/hymenoptera_data'
    """
    folder = base / resource.path
    if not folder.is_dir():
        return f"missing folder {folder}"
    problems = check_files(resource, base)
    if not problems:
        return None
    return f"{len(problems)} of {len(resource.files)} files under {folder}: {_few(problems)}"


def extra_files(resource: Resource, base: Path) -> list[str]:
    """Files under ``resource``'s folder that are not in its manifest (yours: pdl leaves them alone).

    Example:
        >>> extra_files(RESOURCES["hymenoptera"], Path("/nonexistent"))
        []
    """
    folder = base / resource.path
    if not folder.is_dir():
        return []
    present = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(name for name in present if name not in resource.files)


def _few(problems: Mapping[str, str] | Sequence[str], limit: int = 3) -> str:
    items = (
        [f"{k} ({v})" for k, v in problems.items()]
        if isinstance(problems, Mapping)
        else list(problems)
    )
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


# --------------------------------------------------------------------------------------
# Resolution: root -> mirror -> download, repairing file by file
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

    Only the manifest's missing or damaged files are copied or downloaded, one by one; other
    files in the folder are left alone. A repair is always reported (``quiet`` or not):
    which files were replaced, and which files that are not the dataset's were left as they are.

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

    problems = check_files(resource, root)
    source = "root"
    if problems:
        existed = len(problems) < len(resource.files)  # some files were there: this is a repair
        mirror = mirror_dir()
        if mirror is not None and not check_files(resource, mirror, list(problems)):
            _say(
                quiet,
                f"{name}: copying {len(problems)} file(s) from the mirror {mirror / resource.path}",
            )
            _install(
                resource,
                root,
                list(problems),
                lambda tmp: _copy_from_mirror(resource, mirror, tmp, problems),
            )
            source = "mirror"
        elif _can_download(resource):
            _say(quiet, f"{name}: downloading from {resource.url or _FASHION_MNIST_URL}")
            _install(resource, root, list(problems), lambda tmp: _download(resource, tmp))
            source = "download"
        else:
            raise DatasetNotFoundError(_not_found_message(resource, root, mirror, problems))
        still_wrong = check_files(resource, root, list(problems))
        if still_wrong:
            raise DatasetCorruptError(
                f"{name}: after copying from the {source}, files are still wrong: {_few(still_wrong)}"
            )
        if existed:
            print(_repair_message(resource, root, source, problems))
    _verified[key] = root / resource.path
    return _verified[key], source


def _repair_message(
    resource: Resource, root: Path, source: str, repaired: Mapping[str, str]
) -> str:
    where = {"mirror": f"from the mirror {mirror_dir()}", "download": "by downloading them again"}[
        source
    ]
    lines = [
        f"{resource.name}: repaired {len(repaired)} of {len(resource.files)} files in {root / resource.path} "
        f"{where}: {_few(repaired)}."
    ]
    extras = extra_files(resource, root)
    if extras:
        lines.append(
            f"Left alone {len(extras)} file(s) that are not part of the dataset: {_few(extras)} "
            "(pdl never deletes a file it did not create; remove them yourself if they should not be there)."
        )
    return "\n".join(lines)


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message)


def _can_download(resource: Resource) -> bool:
    return not offline() and bool(resource.url or resource.file_urls)


def _not_found_message(
    resource: Resource, root: Path, mirror: Path | None, problems: Mapping[str, str]
) -> str:
    lines = [f"Dataset {resource.name!r} ({resource.description}) is not available."]
    if len(problems) < len(resource.files):
        lines.append(f"- The copy in the data root is incomplete or damaged: {_few(problems)}.")
    else:
        lines.append(f"- Not found in the data root: {root / resource.path}")
    if mirror is None:
        lines.append(f"- No mirror is set ({MIRROR_ENV}).")
    else:
        lines.append(f"- Not (intact) in the mirror: {mirror / resource.path}")
    if resource.url or resource.file_urls:
        urls = [resource.url] if resource.url else list(resource.file_urls.values())
        why = (
            f"{OFFLINE_ENV} is set" if offline() else "the download failed"
        )  # PDL_OFFLINE=0 is not offline
        lines.append(f"- Not downloaded ({why}). Official URL(s): {', '.join(urls)}")
    if resource.note:
        lines.append(f"- {resource.note}")
    target = root / resource.path
    if resource.url:
        lines.append(f"To fix: unpack the archive so that {target} holds its files")
    else:
        lines.append(f"To fix: put {', '.join(resource.files)} into {target}")
    lines.append(f"or point {MIRROR_ENV} at a folder that holds {resource.path}/.")
    return "\n".join(lines)


def _install(
    resource: Resource, root: Path, names: list[str], fill: Callable[[Path], None]
) -> None:
    """Let ``fill(tmp)`` lay the resource out under a temporary folder, then move ``names`` into place.

    Files are moved one by one with ``os.replace`` (atomic on one file system), so an
    interrupted copy or download never leaves a half-written file under its real name.
    Only the manifest's files named in ``names`` are replaced; nothing else is touched.
    """
    with tempfile.TemporaryDirectory(dir=root, prefix=".incoming-") as tmp:
        fill(Path(tmp))
        source, target = Path(tmp) / resource.path, root / resource.path
        for name in names:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(source / name, target / name)


def _copy_from_mirror(
    resource: Resource, mirror: Path, tmp: Path, names: Mapping[str, str]
) -> None:
    for name in names:
        destination = tmp / resource.path / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mirror / resource.path / name, destination)


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
        message = _not_found_message(
            resource, data_root(), mirror_dir(), dict.fromkeys(resource.files, "missing")
        )
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
        >>> report = fetch_all(["hymenoptera"])
        >>> report["hymenoptera"][1] in ("root", "mirror", "download")
        True
    """
    report: dict[str, tuple[Path | None, str]] = {}
    for name in names or list(RESOURCES):
        try:
            report[name] = ensure_with_source(name, quiet=False)
        except (DatasetNotFoundError, DatasetCorruptError) as error:
            report[name] = (None, str(error))
    return report
