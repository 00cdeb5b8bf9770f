"""pdl.weights: weights by name, state_dict files, the torch hub cache, preprocessing presets.

Nothing here downloads: torchvision's hub weights are tested against a temporary torch hub
folder, offline (PDL_OFFLINE=1), both with and without a file in it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from backbones import ARCHS, HEAD_SIZES, MIRROR_WEIGHTS, make
from torch import nn
from torchvision.models import MobileNet_V2_Weights, ResNet18_Weights
from torchvision.transforms import v2

import pdl
from pdl.transfer import head_name, head_path
from pdl.weights import (
    WeightsFileError,
    WeightsNotAvailableError,
    build_backbone,
    hub_checkpoint_path,
    load_hub_weights,
    load_weights_file,
    preprocessing,
    resolve_weights,
)


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub folder for the test, and offline mode: nothing can be downloaded."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setenv("PDL_OFFLINE", "1")
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


class NotATensor:
    """Pickled into a file, it makes the file unloadable with weights_only=True."""


class Payload:
    """A pickle that would create ``marker`` when unpickled: code that must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# --------------------------------------------------------------------------------------
# Weights names
# --------------------------------------------------------------------------------------


def test_resolve_weights_accepts_names_enums_none_and_files(tmp_path):
    assert resolve_weights("resnet18", None) is None
    assert resolve_weights("resnet18", "none") is None
    assert resolve_weights("resnet18", "DEFAULT") is ResNet18_Weights.IMAGENET1K_V1
    assert resolve_weights("resnet18", "IMAGENET1K_V1") is ResNet18_Weights.IMAGENET1K_V1
    assert resolve_weights("resnet18", "ResNet18_Weights.DEFAULT") is ResNet18_Weights.IMAGENET1K_V1
    assert (
        resolve_weights("mobilenet_v2", MobileNet_V2_Weights.IMAGENET1K_V2)
        is MobileNet_V2_Weights.IMAGENET1K_V2
    )
    file = tmp_path / "w.pth"
    torch.save({}, file)
    assert resolve_weights("resnet18", str(file)) == file.resolve()
    assert resolve_weights("resnet18", file) == file.resolve()


def test_resolve_weights_errors_say_what_is_possible(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"'resnet18' has no weights 'IMAGENET1K_V9'; choose one of: DEFAULT, IMAGENET1K_V1",
    ):
        resolve_weights("resnet18", "IMAGENET1K_V9")
    with pytest.raises(ValueError, match="another architecture, not for 'resnet18'"):
        resolve_weights("resnet18", MobileNet_V2_Weights.DEFAULT)
    with pytest.raises(ValueError, match="unknown backbone 'resnet17'"):
        resolve_weights("resnet17", "DEFAULT")
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        resolve_weights("resnet18", str(tmp_path / "missing.pth"))


def test_data_prefix_fetches_the_mirror_file_through_pdl_data():
    path = resolve_weights("mobilenet_v2", MIRROR_WEIGHTS)
    assert path == pdl.store.data_root() / "weights" / "mobilenet_v2_imagenet_features.pth"
    assert path.is_file()


@pytest.mark.parametrize("arch", ARCHS)
def test_build_backbone_replaces_the_head(arch):
    features, name = HEAD_SIZES[arch]
    model = make(arch, num_classes=3)
    assert head_name(model) == name
    head = model.get_submodule(head_path(model))
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (features, 3)
    model.eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


# --------------------------------------------------------------------------------------
# state_dict files
# --------------------------------------------------------------------------------------


def test_load_a_body_only_state_dict_reports_the_missing_head(tmp_path):
    source = make("mobilenet_v2", None)
    body = {k: v for k, v in source.state_dict().items() if not k.startswith("classifier.")}
    torch.save(body, tmp_path / "body.pth")
    model = make("mobilenet_v2", None)
    torch.manual_seed(1)
    report = load_weights_file(model, tmp_path / "body.pth")
    assert report.missing == ["classifier.1.weight", "classifier.1.bias"]
    assert report.loaded == len(body) and not report.unexpected and not report.mismatched
    assert all(torch.equal(model.state_dict()[k], v) for k, v in body.items())
    assert (
        "not in the file (the head, left as initialised): classifier.1.weight, classifier.1.bias"
        in str(report)
    )


def test_load_a_file_with_a_head_of_another_size_and_a_checkpoint_dict(tmp_path):
    torch.save(
        {"model": make("resnet18", None).state_dict(), "epoch": 3}, tmp_path / "ckpt.pt"
    )  # 1000 classes
    model = make("resnet18", 2)
    report = load_weights_file(model, tmp_path / "ckpt.pt")
    assert report.mismatched == ["fc.weight", "fc.bias"] and model.fc.out_features == 2


def test_a_file_of_another_architecture_is_refused_with_a_clear_message(tmp_path):
    torch.save(make("resnet18", None).state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(
        WeightsFileError,
        match=r"resnet.pth does not fit this MobileNetV2 beyond its head 'classifier': "
        r"\d+ of the model's \d+ keys are missing from the file \(features.0.0.weight",
    ):
        load_weights_file(make("mobilenet_v2"), tmp_path / "resnet.pth")
    state = make("resnet18", None).state_dict()
    del state["layer1.0.conv1.weight"]
    torch.save(state, tmp_path / "incomplete.pth")
    with pytest.raises(
        WeightsFileError,
        match=r"1 of the model's 122 keys are missing from the file \(layer1.0.conv1.weight\)",
    ):
        load_weights_file(make("resnet18"), tmp_path / "incomplete.pth")


def test_unreadable_or_unsafe_files_are_refused(tmp_path):
    (tmp_path / "notes.pth").write_text("these are not weights")
    with pytest.raises(WeightsFileError, match="notes.pth .* is not a readable weights file"):
        load_weights_file(make("resnet18"), tmp_path / "notes.pth")
    torch.save(
        {"fc.weight": torch.zeros(2, 512), "payload": NotATensor()}, tmp_path / "pickled.pth"
    )
    with pytest.raises(
        WeightsFileError, match="not a readable weights file"
    ):  # weights_only refuses objects
        load_weights_file(make("resnet18"), tmp_path / "pickled.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(
        WeightsFileError, match=r"holds a list, not a dict \(a checkpoint or a state_dict\)"
    ):
        load_weights_file(make("resnet18"), tmp_path / "list.pth")


def test_the_mirror_file_holds_every_mobilenet_v2_body_weight():
    model = build_backbone("mobilenet_v2", MIRROR_WEIGHTS, num_classes=2, verbose=False)
    stored = torch.load(
        pdl.store.data_root() / "weights/mobilenet_v2_imagenet_features.pth", weights_only=True
    )
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stored.items())


# --------------------------------------------------------------------------------------
# torchvision weights through the torch hub cache
# --------------------------------------------------------------------------------------


def test_offline_without_the_file_the_error_names_weights_file_and_folder(hub_dir):
    with pytest.raises(WeightsNotAvailableError) as error:
        build_backbone("resnet18", "DEFAULT", num_classes=2)
    message = str(error.value)
    assert "ResNet18_Weights.IMAGENET1K_V1" in message
    assert "resnet18-f37072fd.pth" in message
    assert str(hub_dir / "checkpoints") in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message


def test_a_failed_download_gives_the_same_clear_error(hub_dir, monkeypatch):
    monkeypatch.delenv("PDL_OFFLINE")

    class Unreachable:
        """Weights whose URL is a port where nothing listens: torch.hub's real download fails at once."""

        url = "http://127.0.0.1:9/models/resnet18-f37072fd.pth"

        def get_state_dict(self, **kwargs):  # what the weights API does
            return torch.hub.load_state_dict_from_url(self.url, **kwargs)

        def __str__(self):
            return "ResNet18_Weights.IMAGENET1K_V1"

    with pytest.raises(
        WeightsNotAvailableError,
        match=r"(?s)the download failed: .*resnet18-f37072fd.pth in the torch hub cache",
    ):
        load_hub_weights(Unreachable(), "resnet18", progress=False)
    assert not (hub_dir / "checkpoints" / "resnet18-f37072fd.pth").exists()


def test_a_file_in_the_hub_cache_loads_offline(hub_dir):
    # torchvision checks the sha256 prefix in the file name only while downloading, so a file
    # already in the cache is used as it is: here a random ResNet-18 stands in for the real one.
    saved = make("resnet18", None).state_dict()
    path = hub_checkpoint_path(ResNet18_Weights.IMAGENET1K_V1)
    assert path == hub_dir / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(saved, path)
    model = build_backbone(
        "resnet18", "ResNet18_Weights.IMAGENET1K_V1", num_classes=2, verbose=False
    )
    assert all(
        torch.equal(model.state_dict()[k], v) for k, v in saved.items() if not k.startswith("fc.")
    )
    assert model.fc.out_features == 2


def test_a_hub_file_with_pickled_objects_is_refused_and_never_run(hub_dir, tmp_path):
    path = hub_checkpoint_path(ResNet18_Weights.IMAGENET1K_V1)
    path.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({**make("resnet18", None).state_dict(), "payload": Payload(marker)}, path)
    with pytest.raises(WeightsFileError) as error:
        build_backbone("resnet18", "DEFAULT", verbose=False)
    message = str(error.value)
    assert "not a plain tensor file" in message and str(path) in message and "delete it" in message
    assert (
        "weights_only=False" not in message
    )  # never advise loading a file from elsewhere unsafely
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 half a zip", b"not a checkpoint at all"])
def test_a_damaged_hub_file_is_named_with_what_to_do(hub_dir, content):
    path = hub_checkpoint_path(ResNet18_Weights.IMAGENET1K_V1)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(
        WeightsFileError,
        match=r"Could not read .*resnet18-f37072fd.pth .*Delete it, and it is downloaded again",
    ):
        build_backbone("resnet18", "DEFAULT", verbose=False)
    assert path.read_bytes() == content  # pdl never deletes a file it did not create


# --------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------


def test_preprocessing_follows_the_weights():
    from PIL import Image

    image = Image.new("RGB", (300, 200), color=(120, 60, 30))
    p = preprocessing("resnet18", "DEFAULT", image_size=160)
    assert p.image_size == 160 and p.mean == pdl.data.IMAGENET_MEAN
    assert p.eval(image).shape == (3, 160, 160) and p.train(image).shape == (3, 160, 160)
    resize = next(t for t in p.eval.transforms if isinstance(t, v2.Resize))
    assert resize.size == [round(160 * 256 / 224)]
    efficientnet = preprocessing("efficientnet_b0", "DEFAULT")  # its preset uses bicubic resizing
    assert (
        next(t for t in efficientnet.eval.transforms if isinstance(t, v2.Resize)).interpolation
        == v2.InterpolationMode.BICUBIC
    )
    mobilenet = preprocessing("mobilenet_v2", "DEFAULT")  # IMAGENET1K_V2: resize 232, crop 224
    assert next(t for t in mobilenet.eval.transforms if isinstance(t, v2.Resize)).size == [232]
    plain = preprocessing("mobilenet_v2", None, image_size=128)
    assert plain.std == pdl.data.IMAGENET_STD and plain.eval(image).shape == (3, 128, 128)
    assert any(isinstance(t, v2.RandomResizedCrop) for t in plain.train.transforms)


def test_path_objects_and_relative_paths_are_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("weights").mkdir()
    torch.save(make("resnet18", None).state_dict(), "weights/r18.pth")
    model = build_backbone("resnet18", "weights/r18.pth", num_classes=2, verbose=False)
    assert model.fc.out_features == 2
