"""pdl.store and pdl.data: resolution (root -> mirror -> download), verification and repair by
manifest, datasets and loaders, the data command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import pdl.data as data
import pdl.store as store
from pdl.data import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    fashion_mnist_dataset,
    fashion_mnist_tensors,
    hymenoptera_datasets,
    make_loader,
    tensor_loader,
    train_val_split,
)
from pdl.store import RESOURCES, DatasetNotFoundError, ensure_with_source, extra_files, verify


@pytest.fixture
def mirror() -> Path:
    path = store.mirror_dir()
    if path is None:
        pytest.fail("these tests use the offline mirror: set PDL_DATA_MIRROR (.ci/run does)")
    return path


@pytest.fixture
def empty_root(tmp_path, monkeypatch):
    """A fresh, empty data root, and no memory of earlier verifications."""
    root = tmp_path / "root"
    monkeypatch.setenv("PDL_DATA_ROOT", str(root))
    monkeypatch.setattr(store, "_verified", {})
    return root


def test_mirror_copy_then_found_in_root(empty_root, mirror, monkeypatch):
    path, source = ensure_with_source("fashion-mnist")
    assert source == "mirror" and path == empty_root / "FashionMNIST" / "raw"
    assert verify(RESOURCES["fashion-mnist"], empty_root) is None
    monkeypatch.setattr(store, "_verified", {})
    monkeypatch.delenv("PDL_DATA_MIRROR")
    assert ensure_with_source("fashion-mnist")[1] == "root"  # verified in place, mirror not needed
    assert not list(empty_root.glob(".incoming-*")), "temporary folders must be cleaned up"


def test_folder_dataset_copied_from_mirror_and_verified(empty_root, mirror):
    path, source = ensure_with_source("hymenoptera")
    assert source == "mirror"
    assert len([p for p in path.rglob("*") if p.is_file()]) == 398


def test_damaged_copy_is_detected_and_replaced(empty_root, mirror, monkeypatch):
    ensure_with_source("fashion-mnist")
    labels = empty_root / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    damaged = bytearray(labels.read_bytes())
    damaged[100] ^= 0xFF
    labels.write_bytes(bytes(damaged))
    assert "checksum mismatch" in verify(RESOURCES["fashion-mnist"], empty_root)
    monkeypatch.setattr(store, "_verified", {})
    assert ensure_with_source("fashion-mnist")[1] == "mirror"  # repaired from the mirror
    assert verify(RESOURCES["fashion-mnist"], empty_root) is None


def test_missing_files_are_detected_and_files_not_in_the_manifest_do_not_count(tmp_path, mirror):
    copy = tmp_path / "hymenoptera_data"
    shutil.copytree(mirror / "hymenoptera_data", copy)
    (copy / "train" / "ants" / "my_photo.jpg").write_bytes(b"a photo of my own")
    assert verify(RESOURCES["hymenoptera"], tmp_path) is None  # the dataset's 398 files are intact
    assert extra_files(RESOURCES["hymenoptera"], tmp_path) == ["train/ants/my_photo.jpg"]
    (copy / "val" / "bees" / "10870992_eebeeb3a12.jpg").unlink()
    assert "1 of 398 files under" in verify(RESOURCES["hymenoptera"], tmp_path)
    assert "val/bees/10870992_eebeeb3a12.jpg (missing)" in verify(
        RESOURCES["hymenoptera"], tmp_path
    )


def test_a_repair_replaces_only_the_datasets_damaged_files_and_keeps_yours(
    empty_root, mirror, monkeypatch, capsys
):
    """The data-loss case: a photo you added must survive a repair of the dataset around it."""
    folder, _ = ensure_with_source("hymenoptera")
    photo = folder / "train" / "ants" / "my_photo.jpg"
    photo.write_bytes(b"a photo of my own")
    notes = folder / "NOTES.txt"
    notes.write_text("my notes")
    damaged = folder / "train" / "ants" / "0013035.jpg"
    damaged.write_bytes(b"damaged")
    (folder / "val" / "bees" / "10870992_eebeeb3a12.jpg").unlink()
    monkeypatch.setattr(store, "_verified", {})
    capsys.readouterr()
    path, source = ensure_with_source("hymenoptera")  # quiet, but a repair is always reported
    out = capsys.readouterr().out
    assert (path, source) == (folder, "mirror")
    assert photo.read_bytes() == b"a photo of my own" and notes.read_text() == "my notes"
    assert damaged.read_bytes() == (mirror / "hymenoptera_data/train/ants/0013035.jpg").read_bytes()
    assert verify(RESOURCES["hymenoptera"], empty_root) is None
    assert "repaired 2 of 398 files" in out
    assert (
        "train/ants/0013035.jpg (checksum mismatch)" in out
        and "val/bees/10870992_eebeeb3a12.jpg (missing)" in out
    )
    assert (
        "Left alone 2 file(s) that are not part of the dataset: NOTES.txt, train/ants/my_photo.jpg"
        in out
    )
    assert "pdl never deletes a file it did not create" in out


def test_the_hymenoptera_manifest_is_the_published_file_list():
    resource = RESOURCES["hymenoptera"]
    assert len(resource.files) == 398 and "train/ants/imageNotFound.gif" in resource.files
    assert any(" " in name for name in resource.files)  # the one file name with a space
    listing = "".join(f"{digest}  ./{name}\n" for name, digest in resource.files.items())
    import hashlib

    assert (
        hashlib.sha256(listing.encode()).hexdigest() == resource.manifest_sha256
    )  # the mirror README's digest


def test_offline_without_copy_names_dataset_url_and_folder(empty_root, monkeypatch):
    monkeypatch.delenv("PDL_DATA_MIRROR", raising=False)
    monkeypatch.setenv("PDL_OFFLINE", "1")
    with pytest.raises(DatasetNotFoundError) as error:
        ensure_with_source("hymenoptera")
    message = str(error.value)
    assert "'hymenoptera'" in message
    assert "https://download.pytorch.org/tutorial/hymenoptera_data.zip" in message
    assert str(empty_root / "hymenoptera_data") in message
    assert "PDL_DATA_MIRROR" in message


def test_failed_download_gives_the_same_clear_error(empty_root, monkeypatch):
    monkeypatch.delenv("PDL_DATA_MIRROR", raising=False)
    monkeypatch.delenv("PDL_OFFLINE", raising=False)
    unreachable = {
        name: f"http://127.0.0.1:9/{name}.gz" for name in RESOURCES["fashion-mnist"].file_urls
    }
    broken = store.Resource(**{**RESOURCES["fashion-mnist"].__dict__, "file_urls": unreachable})
    monkeypatch.setitem(RESOURCES, "fashion-mnist", broken)
    with pytest.raises(
        DatasetNotFoundError, match=r"(?s)'fashion-mnist'.*127\.0\.0\.1:9.*The download failed"
    ):
        ensure_with_source("fashion-mnist")
    assert not (empty_root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()


def test_pdl_offline_0_is_online_so_a_failed_download_says_so(empty_root, monkeypatch):
    monkeypatch.delenv("PDL_DATA_MIRROR", raising=False)
    monkeypatch.setenv("PDL_OFFLINE", "0")  # "0" means online (see data.offline)
    unreachable = {
        name: f"http://127.0.0.1:9/{name}.gz" for name in RESOURCES["fashion-mnist"].file_urls
    }
    broken = store.Resource(**{**RESOURCES["fashion-mnist"].__dict__, "file_urls": unreachable})
    monkeypatch.setitem(RESOURCES, "fashion-mnist", broken)
    with pytest.raises(DatasetNotFoundError) as error:
        ensure_with_source("fashion-mnist")
    assert "Not downloaded (the download failed)" in str(error.value)
    assert "PDL_OFFLINE is set" not in str(error.value)


def test_mirror_only_weights_explain_the_online_alternative(empty_root, monkeypatch):
    monkeypatch.delenv("PDL_DATA_MIRROR", raising=False)
    with pytest.raises(DatasetNotFoundError, match="MobileNet_V2_Weights.IMAGENET1K_V1"):
        ensure_with_source("mobilenet_v2-features")


def test_fashion_mnist_tensors_are_standardized_with_the_stated_statistics():
    x, y = fashion_mnist_tensors("train", normalize=False)
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (60000,)
    assert x.min() == 0 and x.max() == 1
    assert x.mean().item() == pytest.approx(FASHION_MNIST_MEAN, abs=5e-5)
    assert x.std().item() == pytest.approx(FASHION_MNIST_STD, abs=5e-5)
    z, _ = fashion_mnist_tensors("train", flatten=True, limit=1000)
    assert z.shape == (1000, 784)
    assert torch.equal(torch.bincount(fashion_mnist_tensors("test")[1]), torch.full((10,), 1000))
    with pytest.raises(ValueError, match="split must be one of train, test"):
        fashion_mnist_tensors("val")
    for bad in (-5, 0, 2.5, True):  # limit=-5 used to keep all but 5 samples
        with pytest.raises(ValueError, match="limit must be a positive number of samples"):
            fashion_mnist_tensors("test", limit=bad)


def test_fashion_mnist_dataset_matches_the_tensors():
    from torchvision.transforms import v2

    dataset = fashion_mnist_dataset(
        "test", transform=v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    )
    x, y = fashion_mnist_tensors("test", normalize=False, limit=5)
    assert len(dataset) == 10000
    for i in range(5):
        image, label = dataset[i]
        torch.testing.assert_close(
            image.as_subclass(torch.Tensor), x[i]
        )  # same pixels, same scaling
        assert label == y[i].item()


def test_tensor_loader_yields_the_same_batches_as_a_plain_dataloader():
    x, y = torch.randn(100, 3), torch.arange(100)
    fast = tensor_loader(
        x, y, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    plain = DataLoader(
        TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    for (xa, ya), (xb, yb) in zip(fast, plain, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert len(fast) == 4
    with pytest.raises(ValueError, match="same length"):
        tensor_loader(x, y[:10])
    with pytest.raises(ValueError, match="empty tensors"):
        tensor_loader(x[:0], y[:0])
    with pytest.raises(TypeError, match=r"needs torch tensors, got ndarray.*torch.from_numpy"):
        tensor_loader(x.numpy(), y)


def test_hymenoptera_image_folders():
    train, val = hymenoptera_datasets(64)
    assert train.classes == val.classes == ["ants", "bees"]
    assert (len(train), len(val)) == (244, 153)  # ImageFolder skips the one GIF
    image, label = val[0]
    assert image.shape == (3, 64, 64) and label == 0
    # Normalized with ImageNet statistics: values centred near zero, not in [0, 1].
    assert image.min() < 0


def test_train_val_split_is_reproducible_and_disjoint():
    dataset = TensorDataset(torch.arange(100))
    a_train, a_val = train_val_split(dataset, 0.2, seed=1)
    b_train, b_val = train_val_split(dataset, 0.2, seed=1)
    assert a_val.indices == b_val.indices and len(a_val) == 20
    assert not set(a_train.indices) & set(a_val.indices)
    assert train_val_split(dataset, 0.2, seed=2)[1].indices != a_val.indices
    with pytest.raises(ValueError, match="between 0 and 1"):
        train_val_split(dataset, 1.5)


def test_make_loader_defaults(monkeypatch):
    loader = make_loader(TensorDataset(torch.zeros(10, 3)), batch_size=4, num_workers=0)
    assert len(loader) == 3 and loader.num_workers == 0 and not loader.pin_memory
    # Workers start afresh every epoch, seeded by the loader: what makes resuming exact.
    assert not make_loader(TensorDataset(torch.zeros(10, 3)), num_workers=2).persistent_workers
    monkeypatch.setattr(data.sys, "platform", "darwin")
    monkeypatch.setitem(sys.modules, "ipykernel", sys)  # pretend to run inside Jupyter
    monkeypatch.setattr("multiprocessing.get_start_method", lambda allow_none=False: "spawn")
    assert data.default_num_workers() == 0


def test_make_loader_pins_memory_only_for_a_cuda_target(monkeypatch):
    # Pretend a CUDA GPU is installed: pinning should still follow where the batches go.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    dataset = TensorDataset(torch.zeros(10, 3))
    monkeypatch.setenv("PDL_DEVICE", "cpu")
    assert not make_loader(dataset, num_workers=0).pin_memory  # PDL_DEVICE=cpu: the batches stay
    assert make_loader(dataset, num_workers=0, device="cuda").pin_memory
    monkeypatch.setenv("PDL_DEVICE", "cuda")
    assert make_loader(dataset, num_workers=0).pin_memory
    assert not make_loader(dataset, num_workers=0, device="cpu").pin_memory


def test_imagenet_transform_settings_default_to_the_standard_preprocessing():
    from PIL import Image
    from torchvision.transforms import v2

    image = Image.new("RGB", (300, 200), color=(120, 60, 30))
    assert repr(data.imagenet_transform(128, resize_size=146)) == repr(data.imagenet_transform(128))
    bicubic = v2.InterpolationMode.BICUBIC
    custom = data.imagenet_transform(
        128, resize_size=160, mean=(0.5,) * 3, std=(0.25,) * 3, interpolation=bicubic
    )
    resize, normalize = custom.transforms[1], custom.transforms[-1]
    assert resize.size == [160] and resize.interpolation == bicubic
    assert (normalize.mean, normalize.std) == ([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    assert custom(image).shape == (3, 128, 128)


def test_data_command_reports_every_resource(empty_root, mirror):
    result = subprocess.run([sys.executable, "-m", "pdl", "data"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ok] fashion-mnist" in result.stdout and "copied from the mirror" in result.stdout
    assert "[ok] hymenoptera" in result.stdout and "[ok] mobilenet_v2-features" in result.stdout


def test_data_command_fails_clearly_offline(empty_root, monkeypatch):
    monkeypatch.delenv("PDL_DATA_MIRROR", raising=False)
    monkeypatch.setenv("PDL_OFFLINE", "1")
    result = subprocess.run([sys.executable, "-m", "pdl", "data"], capture_output=True, text=True)
    assert result.returncode == 1
    assert "[missing] fashion-mnist" in result.stdout and "[missing] hymenoptera" in result.stdout
    assert "[skipped] mobilenet_v2-features: optional" in result.stdout
