"""pdl.transfer on resnet18 and mobilenet_v2 (random weights): heads, freezing, parameter groups."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torchvision
from backbones import ARCHS, HEAD_SIZES, make
from torch import nn

import pdl
from pdl.transfer import (
    EvalModeBatchNorm2d,
    count_parameters,
    freeze,
    head_name,
    head_path,
    layerwise_lrs,
    param_groups,
    replace_head,
    stages,
    train_from,
    train_only,
    unfreeze,
)


def trainable_names(model: nn.Module) -> set[str]:
    return {k for k, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------


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
    assert trainable_names(mobilenet) == {
        k for k, _ in mobilenet.named_parameters() if k.startswith(("features.18.", "classifier."))
    }


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
    unfreeze(model)  # the layers are plain BatchNorm2d again (new objects, the same tensors)
    bns = {k: m for k, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    model.train()
    assert all(m.training for m in bns.values())
    model.eval()
    assert not any(m.training for m in bns.values())


def test_fit_leaves_frozen_parts_exactly_as_they_were():
    model = make("resnet18")
    train_only(model, "layer4", "fc")
    before = copy.deepcopy(model.state_dict())
    data = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]))] * 2
    pdl.fit(
        model,
        data,
        loss_fn=nn.CrossEntropyLoss(),
        epochs=1,
        device="cpu",
        progress=False,
        optimizer=torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1),
    )
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


def test_frozen_batchnorm_is_an_eval_mode_class_with_the_same_tensors_and_keys():
    model = make("resnet18")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # built before freezing
    before = {k: v for k, v in model.state_dict().items()}
    bn_weight = model.bn1.weight
    train_only(model, "head")
    assert type(model.bn1) is EvalModeBatchNorm2d and isinstance(model.bn1, nn.BatchNorm2d)
    assert "train" not in vars(model.bn1)  # no instance's method replaced: the class says it
    assert model.bn1.weight is bn_weight  # the same Parameter: the optimizer still holds it
    assert any(p is bn_weight for g in optimizer.param_groups for p in g["params"])
    assert list(model.state_dict()) == list(before)
    plain = torchvision.models.resnet18(num_classes=2)
    plain.load_state_dict(model.state_dict())  # strict: a frozen model's weights load anywhere
    unfreeze(model)
    assert type(model.bn1) is nn.BatchNorm2d and model.bn1.weight is bn_weight


def test_freeze_warns_about_batchnorm_kinds_it_cannot_keep_in_eval_mode():
    class OtherNorm(nn.modules.batchnorm._BatchNorm):
        def _check_input_dim(self, input):
            pass

    model = nn.Sequential(nn.Linear(4, 4), OtherNorm(4))
    with pytest.warns(UserWarning, match=r"1 is a frozen OtherNorm.*\.eval\(\) yourself"):
        freeze(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        freeze(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))  # the usual kinds: no warning
