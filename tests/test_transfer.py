"""pdl.transfer on resnet18 and mobilenet_v2 with random weights (and the mirror's real MobileNetV2 features).

Nothing here downloads: torchvision's hub weights are tested against a temporary torch hub
folder, offline (PDL_OFFLINE=1), both with and without a file in it.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import Subset, TensorDataset
from torchvision.models import MobileNet_V2_Weights, ResNet18_Weights
from torchvision.transforms import v2

import pdl
from pdl.transfer import (
    WeightsFileError,
    WeightsNotAvailableError,
    build_backbone,
    cached_features,
    clear_feature_cache,
    count_parameters,
    extract_features,
    feature_extractor,
    feature_key,
    fit_linear_probe,
    freeze,
    head_name,
    head_path,
    hub_checkpoint_path,
    layerwise_lrs,
    load_weights_file,
    param_groups,
    preprocessing,
    replace_head,
    resolve_weights,
    stages,
    train_from,
    train_only,
    unfreeze,
)

ARCHS = ["resnet18", "mobilenet_v2"]
MIRROR_WEIGHTS = "data:weights/mobilenet_v2_imagenet_features.pth"
HEAD_SIZES = {"resnet18": (512, "fc"), "mobilenet_v2": (1280, "classifier")}


def make(arch: str, num_classes: int | None = 2) -> nn.Module:
    torch.manual_seed(0)
    return build_backbone(arch, None, num_classes=num_classes, verbose=False)


def trainable_names(model: nn.Module) -> set[str]:
    return {k for k, p in model.named_parameters() if p.requires_grad}


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


# --------------------------------------------------------------------------------------
# Weights names
# --------------------------------------------------------------------------------------


def test_resolve_weights_accepts_names_enums_none_and_files(tmp_path):
    assert resolve_weights("resnet18", None) is None
    assert resolve_weights("resnet18", "none") is None
    assert resolve_weights("resnet18", "DEFAULT") is ResNet18_Weights.IMAGENET1K_V1
    assert resolve_weights("resnet18", "IMAGENET1K_V1") is ResNet18_Weights.IMAGENET1K_V1
    assert resolve_weights("resnet18", "ResNet18_Weights.DEFAULT") is ResNet18_Weights.IMAGENET1K_V1
    assert resolve_weights("mobilenet_v2", MobileNet_V2_Weights.IMAGENET1K_V2) is MobileNet_V2_Weights.IMAGENET1K_V2
    file = tmp_path / "w.pth"
    torch.save({}, file)
    assert resolve_weights("resnet18", str(file)) == file.resolve()
    assert resolve_weights("resnet18", file) == file.resolve()


def test_resolve_weights_errors_say_what_is_possible(tmp_path):
    with pytest.raises(ValueError, match=r"'resnet18' has no weights 'IMAGENET1K_V9'; choose one of: DEFAULT, IMAGENET1K_V1"):
        resolve_weights("resnet18", "IMAGENET1K_V9")
    with pytest.raises(ValueError, match="another architecture, not for 'resnet18'"):
        resolve_weights("resnet18", MobileNet_V2_Weights.DEFAULT)
    with pytest.raises(ValueError, match="unknown backbone 'resnet17'"):
        resolve_weights("resnet17", "DEFAULT")
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        resolve_weights("resnet18", str(tmp_path / "missing.pth"))


def test_data_prefix_fetches_the_mirror_file_through_pdl_data():
    path = resolve_weights("mobilenet_v2", MIRROR_WEIGHTS)
    assert path == pdl.data.data_root() / "weights" / "mobilenet_v2_imagenet_features.pth"
    assert path.is_file()


# --------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_build_backbone_replaces_the_head(arch):
    features, name = HEAD_SIZES[arch]
    model = make(arch, num_classes=3)
    assert head_name(model) == name
    head = model.get_submodule(head_path(model))
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (features, 3)
    model.eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_head_names_across_architectures():
    efficientnet = torchvision.models.efficientnet_b0()
    assert head_path(efficientnet) == "classifier.1"
    replace_head(efficientnet, 5)
    assert efficientnet.classifier[1].out_features == 5
    assert isinstance(efficientnet.classifier[0], nn.Dropout)  # the rest of the head stays

    class ViTLike(nn.Module):  # torchvision's ViTs call theirs "heads", with a "head" inside
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 8)
            self.heads = nn.Sequential()
            self.heads.add_module("head", nn.Linear(8, 1000))

        def forward(self, x):
            return self.heads(self.body(x))

    vit = ViTLike()
    assert (head_name(vit), head_path(vit)) == ("heads", "heads.head")
    replace_head(vit, 2)
    assert vit(torch.zeros(1, 4)).shape == (1, 2)
    with pytest.raises(ValueError, match="cannot find the head of this Sequential"):
        head_name(nn.Sequential(nn.Linear(2, 2)))


def test_replace_head_with_a_module_and_validation():
    model = make("resnet18", None)
    trained = nn.Linear(512, 2)
    assert replace_head(model, trained) is trained and model.fc is trained
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        replace_head(model, 0)


# --------------------------------------------------------------------------------------
# Freezing, counting, stages
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_train_only_the_head(arch):
    features, name = HEAD_SIZES[arch]
    model = make(arch)
    total = sum(p.numel() for p in model.parameters())
    count = train_only(model, "head")
    assert count == (features * 2 + 2, total)
    assert count.frozen == total - features * 2 - 2
    assert all(k.startswith(name + ".") for k in trainable_names(model))
    assert str(count).startswith(f"{features * 2 + 2:,} of {total:,} parameters trainable")


def test_train_from_a_stage_and_unfreeze():
    model = make("resnet18")
    count = train_from(model, "layer4")
    expected = {k for k, _ in model.named_parameters() if k.startswith(("layer4.", "fc."))}
    assert trainable_names(model) == expected
    assert count.trainable == sum(p.numel() for k, p in model.named_parameters() if k in expected)
    assert unfreeze(model).trainable == count.total
    assert freeze(model, "layer1", "conv1").trainable == count.total - sum(
        p.numel() for k, p in model.named_parameters() if k.startswith(("layer1.", "conv1."))
    )
    with pytest.raises(ValueError, match="no module 'layer9'"):
        train_from(model, "layer9")


def test_stages():
    assert stages(make("resnet18")) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
    mobilenet = make("mobilenet_v2")
    assert stages(mobilenet) == [f"features.{i}" for i in range(19)]
    train_from(mobilenet, stages(mobilenet)[-1])
    assert trainable_names(mobilenet) == {k for k, _ in mobilenet.named_parameters() if k.startswith(("features.18.", "classifier."))}


def test_count_parameters_counts_shared_weights_once():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert count_parameters(model) == (12, 12)


@pytest.mark.parametrize("arch", ARCHS)
def test_frozen_batchnorm_stays_in_eval_mode_and_keeps_its_statistics(arch):
    model = make(arch)
    last = stages(model)[-1]
    train_from(model, last)
    bns = {k: m for k, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    frozen = {k for k in bns if not k.startswith(last + ".")}
    assert frozen and len(frozen) < len(bns)
    before = {k: bns[k].running_mean.clone() for k in bns}
    model.train()  # what fit does at the start of every epoch
    assert {k for k, m in bns.items() if not m.training} == frozen
    model(torch.randn(4, 3, 64, 64))
    for k, m in bns.items():
        changed = not torch.equal(m.running_mean, before[k])
        assert changed == (k not in frozen), k  # batch statistics updated only where training
    unfreeze(model)
    model.train()
    assert all(m.training for m in bns.values())
    model.eval()
    assert not any(m.training for m in bns.values())


def test_fit_leaves_frozen_parts_exactly_as_they_were():
    model = make("resnet18")
    train_only(model, "layer4", "fc")
    before = copy.deepcopy(model.state_dict())
    data = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]))] * 2
    pdl.fit(model, data, loss_fn=nn.CrossEntropyLoss(), epochs=1, device="cpu", progress=False,
            optimizer=torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1))
    after = model.state_dict()
    for key in before:
        same = torch.equal(before[key], after[key])
        if key.startswith(("layer4.", "fc.")) and not key.endswith("num_batches_tracked"):
            assert not same or "running" in key, key  # trained
        elif not key.startswith(("layer4.", "fc.")):
            assert same, key  # weights *and* BatchNorm statistics untouched


def test_frozen_batchnorm_survives_a_deep_copy():
    model = make("mobilenet_v2")
    train_only(model, "head")
    clone = copy.deepcopy(model)
    clone.train()
    assert not clone.features[0][1].training
    unfreeze(clone)
    model.train()
    assert not model.features[0][1].training  # the original is still frozen
    clone.train()
    assert clone.features[0][1].training


# --------------------------------------------------------------------------------------
# Parameter groups
# --------------------------------------------------------------------------------------


def test_param_groups_head_and_body():
    model = make("resnet18")
    train_from(model, "layer3")
    groups = param_groups(model, {"head": 1e-3}, rest_lr=1e-4)
    assert [(g["name"], g["lr"]) for g in groups] == [("fc", 1e-3), ("rest", 1e-4)]
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped})
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(groups)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-4]


def test_param_groups_most_specific_name_wins_and_nothing_is_forgotten():
    model = make("resnet18")
    groups = param_groups(model, {"layer4": 1e-4, "layer4.1": 1e-3, "fc": 1e-2}, rest_lr=1e-5)
    by_name = {g["name"]: g for g in groups}
    names = {id(p): k for k, p in model.named_parameters()}
    assert all(names[id(p)].startswith("layer4.1.") for p in by_name["layer4.1"]["params"])
    assert all(names[id(p)].startswith("layer4.0.") for p in by_name["layer4"]["params"])
    with pytest.raises(ValueError, match="belong to none of .*pass rest_lr"):
        param_groups(model, {"fc": 1e-3})


@pytest.mark.parametrize("arch", ARCHS)
def test_layerwise_lrs_cover_every_parameter(arch):
    model = make(arch)
    lrs = layerwise_lrs(model, 1e-3, factor=0.5)
    assert lrs[head_name(model)] == 1e-3 and lrs[stages(model)[-1]] == 5e-4
    assert list(lrs.values()) == sorted(lrs.values(), reverse=True)
    groups = param_groups(model, lrs)  # no rest_lr needed: every stage has a rate
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


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
    assert "not in the file (the head, left as initialised): classifier.1.weight, classifier.1.bias" in str(report)


def test_load_a_file_with_a_head_of_another_size_and_a_checkpoint_dict(tmp_path):
    torch.save({"model": make("resnet18", None).state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")  # 1000 classes
    model = make("resnet18", 2)
    report = load_weights_file(model, tmp_path / "ckpt.pt")
    assert report.mismatched == ["fc.weight", "fc.bias"] and model.fc.out_features == 2


def test_a_file_of_another_architecture_is_refused_with_a_clear_message(tmp_path):
    torch.save(make("resnet18", None).state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(WeightsFileError, match=r"resnet.pth does not fit this MobileNetV2 beyond its head 'classifier': "
                       r"\d+ of the model's \d+ keys are missing from the file \(features.0.0.weight"):
        load_weights_file(make("mobilenet_v2"), tmp_path / "resnet.pth")
    state = make("resnet18", None).state_dict()
    del state["layer1.0.conv1.weight"]
    torch.save(state, tmp_path / "incomplete.pth")
    with pytest.raises(WeightsFileError, match=r"1 of the model's 122 keys are missing from the file \(layer1.0.conv1.weight\)"):
        load_weights_file(make("resnet18"), tmp_path / "incomplete.pth")


def test_unreadable_or_unsafe_files_are_refused(tmp_path):
    (tmp_path / "notes.pth").write_text("these are not weights")
    with pytest.raises(WeightsFileError, match="notes.pth .* is not a readable weights file"):
        load_weights_file(make("resnet18"), tmp_path / "notes.pth")
    torch.save({"fc.weight": torch.zeros(2, 512), "payload": NotATensor()}, tmp_path / "pickled.pth")
    with pytest.raises(WeightsFileError, match="not a readable weights file"):  # weights_only refuses objects
        load_weights_file(make("resnet18"), tmp_path / "pickled.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(WeightsFileError, match=r"holds a list, not a dict \(a checkpoint or a state_dict\)"):
        load_weights_file(make("resnet18"), tmp_path / "list.pth")


def test_the_mirror_file_holds_every_mobilenet_v2_body_weight():
    model = build_backbone("mobilenet_v2", MIRROR_WEIGHTS, num_classes=2, verbose=False)
    stored = torch.load(pdl.data.data_root() / "weights/mobilenet_v2_imagenet_features.pth", weights_only=True)
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
    from pdl import transfer

    monkeypatch.delenv("PDL_OFFLINE")
    # The real download code against a port where nothing listens: fails at once, offline or not.
    class Unreachable:
        url = "http://127.0.0.1:9/models/resnet18-f37072fd.pth"

        def __str__(self):
            return "ResNet18_Weights.IMAGENET1K_V1"

    with pytest.raises(WeightsNotAvailableError, match=r"(?s)the download failed: .*resnet18-f37072fd.pth in the torch hub cache"):
        transfer._ensure_in_hub_cache(Unreachable(), "resnet18", progress=False)
    assert not (hub_dir / "checkpoints" / "resnet18-f37072fd.pth").exists()


def test_a_file_in_the_hub_cache_loads_offline(hub_dir):
    # torchvision checks the sha256 prefix in the file name only while downloading, so a file
    # already in the cache is used as it is: here a random ResNet-18 stands in for the real one.
    saved = make("resnet18", None).state_dict()
    path = hub_checkpoint_path(ResNet18_Weights.IMAGENET1K_V1)
    assert path == hub_dir / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(saved, path)
    model = build_backbone("resnet18", "ResNet18_Weights.IMAGENET1K_V1", num_classes=2, verbose=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items() if not k.startswith("fc."))
    assert model.fc.out_features == 2
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # the safe-loading switch is restored


def test_a_hub_file_with_pickled_objects_is_refused(hub_dir):
    path = hub_checkpoint_path(ResNet18_Weights.IMAGENET1K_V1)
    path.parent.mkdir(parents=True)
    torch.save({**make("resnet18", None).state_dict(), "payload": NotATensor()}, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        build_backbone("resnet18", "DEFAULT", verbose=False)
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


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
    assert next(t for t in efficientnet.eval.transforms if isinstance(t, v2.Resize)).interpolation == v2.InterpolationMode.BICUBIC
    mobilenet = preprocessing("mobilenet_v2", "DEFAULT")  # IMAGENET1K_V2: resize 232, crop 224
    assert next(t for t in mobilenet.eval.transforms if isinstance(t, v2.Resize)).size == [232]
    plain = preprocessing("mobilenet_v2", None, image_size=128)
    assert plain.std == pdl.data.IMAGENET_STD and plain.eval(image).shape == (3, 128, 128)
    assert any(isinstance(t, v2.RandomResizedCrop) for t in plain.train.transforms)


# --------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------


class Images(TensorDataset):
    """A tensor dataset with a ``transform`` attribute, like ImageFolder (only its repr matters)."""

    def __init__(self, n: int = 12, transform=None, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        super().__init__(torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 2)
        self.transform = transform


@pytest.mark.parametrize("arch", ARCHS)
def test_feature_extractor_outputs_what_the_head_receives(arch):
    model = make(arch).eval()
    received = []
    model.get_submodule(head_path(model)).register_forward_hook(lambda m, inputs, out: received.append(inputs[0]))
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        model(x)
        features = feature_extractor(model)(x)
    assert features.shape == (3, HEAD_SIZES[arch][0])
    torch.testing.assert_close(features, received[0])
    assert isinstance(model.get_submodule(head_path(model)), nn.Linear)  # the model is unchanged
    assert count_parameters(feature_extractor(model)).trainable == 0


def test_extract_features_with_and_without_channels_last():
    extractor = feature_extractor(make("resnet18"))
    data = Images(10)
    a, labels = extract_features(extractor, data, batch_size=4, device="cpu", channels_last=True)
    b, _ = extract_features(extractor, data, batch_size=4, device="cpu", channels_last=False)
    assert a.shape == (10, 512) and labels.tolist() == (torch.arange(10) % 2).tolist()
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_cached_features_memory_then_disk(tmp_path):
    clear_feature_cache()
    model = make("resnet18")
    data = Images(8)
    first = cached_features(model, data, cache_dir=tmp_path, device="cpu")
    again = cached_features(model, data, cache_dir=tmp_path, device="cpu")
    clear_feature_cache()
    from_disk = cached_features(model, data, cache_dir=tmp_path, device="cpu")
    assert (first.source, again.source, from_disk.source) == ("computed", "memory", "disk")
    assert torch.equal(first.features, from_disk.features) and torch.equal(first.labels, from_disk.labels)
    assert (tmp_path / f"features-{first.key}.pt").is_file()
    assert first.features.shape == (8, 512)


def test_feature_key_changes_with_weights_transform_and_images_not_with_the_head():
    model = make("resnet18")
    data = Images(8, transform=v2.Resize(32))
    key = feature_key(model, data)
    replace_head(model, 5)
    assert feature_key(model, data) == key  # the head does not change the features
    assert feature_key(model, Images(8, transform=v2.Resize(64))) != key
    assert feature_key(model, Subset(data, [0, 1, 2])) != key
    assert feature_key(make("mobilenet_v2"), data) != key
    with torch.no_grad():
        model.layer4[1].conv2.weight[0, 0, 0, 0] += 1e-3
    assert feature_key(model, data) != key


def test_feature_key_tells_tensor_datasets_of_equal_length_apart():
    clear_feature_cache()
    model = make("resnet18")
    a, b = Images(6, seed=0), Images(6, seed=1)  # same type, same length, other images
    assert feature_key(model, a) != feature_key(model, b)
    first, second = cached_features(model, a, device="cpu"), cached_features(model, b, device="cpu")
    assert (first.source, second.source) == ("computed", "computed")
    assert not torch.equal(first.features, second.features)
    relabelled = TensorDataset(a.tensors[0], 1 - a.tensors[1])  # cached labels come from the dataset too
    assert feature_key(model, relabelled) != feature_key(model, TensorDataset(*a.tensors))


def test_feature_key_refuses_a_dataset_that_does_not_say_which_images_it_holds():
    class Generated(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return torch.randn(3, 32, 32), 0

    with pytest.raises(TypeError, match="cannot cache features of a Generated.*extract_features"):
        feature_key(make("resnet18"), Generated())
    with pytest.raises(TypeError, match="cannot cache features of a Generated"):
        cached_features(make("resnet18"), Subset(Generated(), [0, 1]), device="cpu")


def test_feature_key_covers_every_head_layer_before_the_last_linear():
    class VGGLike(nn.Module):  # like VGG or ConvNeXt: layers in the head before its last linear
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.classifier = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 10))

        def forward(self, x):
            return self.classifier(self.features(x))

    torch.manual_seed(0)
    model, data = VGGLike(), Images(4)
    key = feature_key(model, data)
    replace_head(model, 2)  # classifier.2, the layer feature_extractor removes
    assert feature_key(model, data) == key
    with torch.no_grad():
        model.classifier[0].weight[0, 0] += 1.0  # shapes the features: feature_extractor keeps it
    assert feature_key(model, data) != key


def test_caching_augmented_images_warns():
    with pytest.warns(UserWarning, match="randomly augmented"):
        cached_features(make("resnet18"), Images(4, transform=v2.RandomHorizontalFlip()), device="cpu")


def test_linear_probe_on_features_plugs_into_the_model():
    model = make("resnet18").eval()
    data = Images(40)
    train = cached_features(model, data, device="cpu")
    # Make the classes separable in feature space: what pretrained features do for real images.
    labels = (train.features[:, 0] > train.features[:, 0].median()).long()
    head, history = fit_linear_probe((train.features, labels), (train.features, labels), 2, epochs=60, lr=0.05)
    assert history["val_accuracy"][-1] >= 0.9
    replace_head(model, head)
    with torch.inference_mode():
        scores = model(data.tensors[0])
    torch.testing.assert_close(scores, head(train.features), atol=1e-4, rtol=1e-4)


def test_mirror_features_are_real_imagenet_features():
    """The linear probe on the mirror's MobileNetV2 separates ants from bees; random weights do not."""
    train_set, val_set = pdl.data.hymenoptera_datasets(
        train_transform=preprocessing("mobilenet_v2", None, 112).eval,
        val_transform=preprocessing("mobilenet_v2", None, 112).eval,
    )
    subset = Subset(train_set, list(range(0, len(train_set), 2)))  # 122 images, both classes
    val_subset = Subset(val_set, list(range(0, len(val_set), 2)))  # 77 images
    accuracies = {}
    for weights in (MIRROR_WEIGHTS, None):
        torch.manual_seed(0)
        model = build_backbone("mobilenet_v2", weights, num_classes=2, verbose=False)
        train = cached_features(model, subset, device="cpu")
        val = cached_features(model, val_subset, device="cpu")
        _, history = fit_linear_probe(train[:2], val[:2], 2, epochs=30)
        accuracies[weights] = history["val_accuracy"][-1]
    assert accuracies[MIRROR_WEIGHTS] >= 0.85, accuracies
    assert accuracies[None] <= accuracies[MIRROR_WEIGHTS] - 0.15, accuracies


def test_path_objects_and_relative_paths_are_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("weights").mkdir()
    torch.save(make("resnet18", None).state_dict(), "weights/r18.pth")
    model = build_backbone("resnet18", "weights/r18.pth", num_classes=2, verbose=False)
    assert model.fc.out_features == 2


def test_feature_extractor_stays_in_eval_mode_inside_a_training_model():
    extractor = feature_extractor(make("mobilenet_v2"))  # its head keeps a Dropout
    model = nn.Sequential(extractor, nn.Linear(1280, 2)).train()
    assert not extractor.training and not any(m.training for m in extractor.modules())
    assert model[1].training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))  # no dropout, no batch statistics
