"""pdl.features: the frozen extractor, extraction, the feature cache and its keys, the linear probe."""

from __future__ import annotations

import pytest
import torch
from backbones import ARCHS, HEAD_SIZES, MIRROR_WEIGHTS, make
from torch import nn
from torch.utils.data import Subset, TensorDataset
from torchvision.transforms import v2

import pdl
from pdl.features import (
    cached_features,
    clear_feature_cache,
    extract_features,
    feature_extractor,
    feature_key,
    fit_linear_probe,
)
from pdl.transfer import count_parameters, head_path, replace_head
from pdl.weights import build_backbone, preprocessing


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
    model.get_submodule(head_path(model)).register_forward_hook(
        lambda m, inputs, out: received.append(inputs[0])
    )
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
    assert torch.equal(first.features, from_disk.features) and torch.equal(
        first.labels, from_disk.labels
    )
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
    relabelled = TensorDataset(
        a.tensors[0], 1 - a.tensors[1]
    )  # cached labels come from the dataset too
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
        cached_features(
            make("resnet18"), Images(4, transform=v2.RandomHorizontalFlip()), device="cpu"
        )


def test_linear_probe_on_features_plugs_into_the_model():
    model = make("resnet18").eval()
    data = Images(40)
    train = cached_features(model, data, device="cpu")
    # Make the classes separable in feature space: what pretrained features do for real images.
    labels = (train.features[:, 0] > train.features[:, 0].median()).long()
    head, history = fit_linear_probe(
        (train.features, labels), (train.features, labels), 2, epochs=60, lr=0.05
    )
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


def test_feature_extractor_stays_in_eval_mode_inside_a_training_model():
    extractor = feature_extractor(make("mobilenet_v2"))  # its head keeps a Dropout
    model = nn.Sequential(extractor, nn.Linear(1280, 2)).train()
    assert not extractor.training and not any(m.training for m in extractor.modules())
    assert model[1].training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))  # no dropout, no batch statistics


def test_the_memory_cache_hands_out_copies():
    clear_feature_cache()
    model, data = make("resnet18"), Images(4)
    first = cached_features(model, data, device="cpu")
    reference = first.features.clone()
    first.features.sub_(first.features.mean(0))  # an in-place edit by the caller ...
    again = cached_features(model, data, device="cpu")
    assert again.source == "memory" and torch.equal(
        again.features, reference
    )  # ... does not reach the cache
    again.labels.fill_(7)
    assert torch.equal(cached_features(model, data, device="cpu").labels, data.tensors[1])


def test_extract_features_on_unlabeled_images_returns_no_labels():
    extractor = feature_extractor(make("resnet18"))
    unlabeled = TensorDataset(torch.randn(5, 3, 32, 32))  # yields (image,) tuples
    features, labels = extract_features(extractor, unlabeled, batch_size=2, device="cpu")
    assert features.shape == (5, 512) and labels is None
    loader = torch.utils.data.DataLoader(
        torch.randn(3, 3, 32, 32), batch_size=2
    )  # yields bare image batches
    assert extract_features(extractor, loader, device="cpu")[0].shape == (3, 512)
    with pytest.raises(
        TypeError, match=r"needs batches of images, or \(images, labels\) pairs; got a dict"
    ):
        extract_features(extractor, [{"image": torch.randn(1, 3, 32, 32)}], device="cpu")


def test_extract_features_iterates_the_loader_once_with_a_progress_bar():
    class CountingLoader(torch.utils.data.DataLoader):
        iterations = 0

        def __iter__(self):
            CountingLoader.iterations += 1
            return super().__iter__()

    loader = CountingLoader(Images(4), batch_size=2)
    extract_features(feature_extractor(make("resnet18")), loader, device="cpu", progress=True)
    assert CountingLoader.iterations == 1  # tqdm(loader) would have called iter() twice


def test_a_cache_dir_is_cleaned_of_temporary_files_a_killed_process_left(tmp_path):
    import os

    stale, mine = tmp_path / ".features-0123.pt.abcd1234.tmp", tmp_path / "notes.tmp"
    stale.write_bytes(b"half"), mine.write_bytes(b"mine")
    os.utime(stale, (0, 0))  # written long ago
    cached_features(make("resnet18"), Images(2), cache_dir=tmp_path, device="cpu")
    assert not stale.exists() and mine.read_bytes() == b"mine"
