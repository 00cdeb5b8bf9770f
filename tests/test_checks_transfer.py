"""The lecture 07 self-checks: they pass correct solutions and say what is wrong with typical mistakes."""

from __future__ import annotations

import copy
import re

import pytest
from torch import nn

from pdl.checks.transfer import check_freeze_all_but_head, check_param_groups
from pdl.transfer import head_name, train_only

# --------------------------------------------------------------------------------------
# check_freeze_all_but_head
# --------------------------------------------------------------------------------------


def freeze_by_hand(model):
    head = head_name(model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith(head + ".")


def freeze_the_pytorch_way(model):
    """Module.requires_grad_ on the whole model, then on the head: PyTorch's own tools."""
    model.requires_grad_(False)
    model.get_submodule(head_name(model)).requires_grad_(True)


def test_freeze_accepts_a_hand_written_solution_pytorch_and_pdl_transfer(capsys):
    assert check_freeze_all_but_head(freeze_by_hand) is True
    assert check_freeze_all_but_head(freeze_the_pytorch_way) is True
    assert check_freeze_all_but_head(lambda model: train_only(model, "head")) is True
    assert capsys.readouterr().out.count("✅ freeze all but the head: correct") == 3


def sentences_mix_counts(message: str) -> bool:
    """True when one sentence counts both parameter tensors and parameter values."""
    return any(
        "tensor" in sentence and re.search(r"\d,\d{3}", sentence)
        for sentence in message.split(". ")
    )


def test_the_checks_leave_the_global_random_state_alone(leaves_global_rng_alone):
    leaves_global_rng_alone(
        check_freeze_all_but_head, freeze_by_hand
    )  # it builds randomly initialised models


def test_freeze_reports_the_stub(capsys):
    def stub(model):
        raise NotImplementedError

    assert check_freeze_all_but_head(stub) is False
    assert "not attempted yet" in capsys.readouterr().out


def test_freeze_reports_a_body_that_still_trains(capsys):
    def only_resnet_names(
        model,
    ):  # works for ResNets, forgets that MobileNet's head is "classifier"
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith("fc.")

    assert check_freeze_all_but_head(only_resnet_names) is False
    out = capsys.readouterr().out
    assert (
        "on mobilenet_v2: 2 of the head's parameter tensors are frozen (e.g. classifier.1.weight)"
        in out
    )
    assert (
        "Counted in values (elements): 0 of 2,226,434 train, expected just the head's 2,562." in out
    )
    assert not sentences_mix_counts(out)


def test_freeze_reports_forgotten_parameters_with_counts(capsys):
    def forgets_biases(model):
        for name, parameter in model.named_parameters():
            if name.endswith("weight") and not name.startswith("fc."):
                parameter.requires_grad = False

    assert check_freeze_all_but_head(forgets_biases) is False
    out = capsys.readouterr().out
    assert (
        "❌ freeze all but the head: on resnet18: 20 of the 60 parameter tensors outside the head"
        in out
    )
    assert "are still trainable (e.g. bn1.bias)" in out
    assert "expected just the head's 1,026." in out
    assert not sentences_mix_counts(out)


def test_freeze_reports_a_frozen_head(capsys):
    def freezes_everything(model):
        for parameter in model.parameters():
            parameter.requires_grad = False

    assert check_freeze_all_but_head(freezes_everything) is False
    out = capsys.readouterr().out
    assert "2 of the head's parameter tensors are frozen (e.g. fc.weight)" in out
    assert "0 of 11,177,538 train, expected just the head's 1,026" in out


def test_freeze_explains_why_nothing_was_frozen(failing):
    def evaluates(model):
        model.eval()  # a common belief: eval() freezes

    failing(
        check_freeze_all_but_head, evaluates, "nothing was frozen", "model.eval() does not freeze"
    )

    def misspelled(model):
        for name, parameter in model.named_parameters():
            if not name.startswith(head_name(model) + "."):
                parameter.requires_grad_ = False  # assigns an attribute, calls nothing

    failing(
        check_freeze_all_but_head,
        misspelled,
        "you assigned to requires_grad_",
        "requires_grad = False",
    )

    def freezes_a_copy(model):
        model = copy.deepcopy(model)
        freeze_by_hand(model)
        return model

    failing(
        check_freeze_all_but_head,
        freezes_a_copy,
        "the model you were given is unchanged",
        "in place",
    )


def test_freeze_refuses_replacing_the_head(failing):
    def new_head(model):
        for parameter in model.parameters():
            parameter.requires_grad = False
        model.fc = nn.Linear(512, 2)

    failing(
        check_freeze_all_but_head,
        new_head,
        "on resnet18",
        "replaced the head (fc)",
        "only set requires_grad",
    )


@pytest.mark.parametrize("answer", [None, 3, lambda model: model.nonexistent()])
def test_freeze_never_raises(answer, capsys):
    assert check_freeze_all_but_head(answer) is False
    out = capsys.readouterr().out
    assert out.startswith("❌") and "could not judge" not in out, out


# --------------------------------------------------------------------------------------
# check_param_groups
# --------------------------------------------------------------------------------------


def groups_by_hand(model, head_lr, body_lr):
    head = head_name(model)
    head_params, body_params = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (head_params if name.startswith(head + ".") else body_params).append(parameter)
    return [{"params": head_params, "lr": head_lr}, {"params": body_params, "lr": body_lr}]


def test_param_groups_accepts_a_hand_written_solution_and_pdl_transfer(capsys):
    from pdl.transfer import param_groups

    assert check_param_groups(groups_by_hand) is True
    assert (
        check_param_groups(
            lambda m, head_lr, body_lr: param_groups(m, {"head": head_lr}, rest_lr=body_lr)
        )
        is True
    )
    assert capsys.readouterr().out.count("✅ parameter groups: correct") == 2


def test_param_groups_reports_frozen_parameters(capsys):
    def keeps_frozen(model, head_lr, body_lr):
        head = head_name(model)
        return [
            {
                "params": [p for n, p in model.named_parameters() if n.startswith(head + ".")],
                "lr": head_lr,
            },
            {
                "params": [p for n, p in model.named_parameters() if not n.startswith(head + ".")],
                "lr": body_lr,
            },
        ]

    assert check_param_groups(keeps_frozen) is False
    out = capsys.readouterr().out
    assert (
        "❌ parameter groups: on resnet18 (head_lr=0.003, body_lr=0.0002): the frozen parameter conv1.weight"
        in out
    )


def test_param_groups_reports_swapped_learning_rates(capsys):
    assert (
        check_param_groups(lambda m, head_lr, body_lr: groups_by_hand(m, body_lr, head_lr)) is False
    )
    assert "fc.weight gets lr 0.0002, expected 0.003 (the head)" in capsys.readouterr().out


def test_param_groups_reports_duplicates_and_forgotten_parameters(capsys):
    def twice(model, head_lr, body_lr):
        groups = groups_by_hand(model, head_lr, body_lr)
        return groups + [{"params": groups[0]["params"], "lr": head_lr}]

    def head_only(model, head_lr, body_lr):
        return groups_by_hand(model, head_lr, body_lr)[:1]

    assert check_param_groups(twice) is False
    assert "fc.weight is in two groups" in capsys.readouterr().out
    assert check_param_groups(head_only) is False
    assert (
        "trainable parameters are in no group (e.g. layer3.0.conv1.weight)"
        in capsys.readouterr().out
    )


def test_param_groups_reports_wrong_shapes_of_answer(capsys):
    assert check_param_groups(lambda m, a, b: list(m.parameters())) is False
    assert "group 0 should be a dict with keys 'params' and 'lr'" in capsys.readouterr().out
    assert check_param_groups(lambda m, a, b: None) is False
    assert "expected a non-empty list of dicts, got NoneType" in capsys.readouterr().out


def test_param_groups_reports_a_head_found_by_one_architecture_only(capsys):
    def fc_only(model, head_lr, body_lr):
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return [
            {"params": [p for n, p in trainable if n.startswith("fc.")], "lr": head_lr},
            {"params": [p for n, p in trainable if not n.startswith("fc.")], "lr": body_lr},
        ]

    assert check_param_groups(fc_only) is False
    assert (
        "on mobilenet_v2 (head_lr=0.003, body_lr=0.0002): classifier.1.weight gets lr 0.0002, expected 0.003"
        in (capsys.readouterr().out)
    )


def test_param_groups_accepts_generators_and_refuses_sets(capsys):
    def generators(model, head_lr, body_lr):
        groups = groups_by_hand(model, head_lr, body_lr)
        return [
            {"params": iter(g["params"]), "lr": g["lr"]} for g in groups
        ]  # like model.fc.parameters()

    assert check_param_groups(generators) is True
    capsys.readouterr()

    def sets(model, head_lr, body_lr):
        return [
            {"params": set(g["params"]), "lr": g["lr"]}
            for g in groups_by_hand(model, head_lr, body_lr)
        ]

    assert check_param_groups(sets) is False
    assert "group 0: 'params' is a set; use a list" in capsys.readouterr().out


def test_the_param_groups_check_leaves_the_global_random_state_alone(leaves_global_rng_alone):
    leaves_global_rng_alone(check_param_groups, groups_by_hand)
