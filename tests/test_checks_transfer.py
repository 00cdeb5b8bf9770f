"""The lecture 07 self-checks: they pass correct solutions and say what is wrong with typical mistakes."""

from __future__ import annotations

from pdl.checks.transfer import check_freeze_all_but_head, check_param_groups
from pdl.transfer import head_name, train_only

# --------------------------------------------------------------------------------------
# check_freeze_all_but_head
# --------------------------------------------------------------------------------------


def freeze_by_hand(model):
    head = head_name(model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith(head + ".")


def test_freeze_accepts_a_hand_written_solution_and_pdl_transfer(capsys):
    assert check_freeze_all_but_head(freeze_by_hand) is True
    assert check_freeze_all_but_head(lambda model: train_only(model, "head")) is True
    assert capsys.readouterr().out.count("✅ freeze all but the head: correct") == 2


def test_the_checks_leave_the_global_random_state_alone(leaves_global_rng_alone):
    leaves_global_rng_alone(check_freeze_all_but_head, freeze_by_hand)  # it builds randomly initialised models


def test_freeze_reports_the_stub(capsys):
    def stub(model):
        raise NotImplementedError

    assert check_freeze_all_but_head(stub) is False
    assert "not attempted yet" in capsys.readouterr().out


def test_freeze_reports_a_body_that_still_trains(capsys):
    def only_resnet_names(model):  # works for ResNets, forgets that MobileNet's head is "classifier"
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith("fc.")

    assert check_freeze_all_but_head(only_resnet_names) is False
    out = capsys.readouterr().out
    assert "on mobilenet_v2, the head's classifier.1.weight is frozen: 0 trainable, expected 2,562" in out


def test_freeze_reports_forgotten_parameters_with_counts(capsys):
    def forgets_biases(model):
        for name, parameter in model.named_parameters():
            if name.endswith("weight") and not name.startswith("fc."):
                parameter.requires_grad = False

    assert check_freeze_all_but_head(forgets_biases) is False
    out = capsys.readouterr().out
    assert "❌ freeze all but the head: on resnet18," in out
    assert "parameters outside the head are still trainable (e.g. bn1.bias)" in out
    assert "expected 1,026 (just the head)" in out


def test_freeze_reports_a_frozen_head(capsys):
    def freezes_everything(model):
        for parameter in model.parameters():
            parameter.requires_grad = False

    assert check_freeze_all_but_head(freezes_everything) is False
    assert "the head's fc.weight is frozen: 0 trainable, expected 1,026" in capsys.readouterr().out


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
    assert check_param_groups(lambda m, head_lr, body_lr: param_groups(m, {"head": head_lr}, rest_lr=body_lr)) is True
    assert capsys.readouterr().out.count("✅ parameter groups: correct") == 2


def test_param_groups_reports_frozen_parameters(capsys):
    def keeps_frozen(model, head_lr, body_lr):
        head = head_name(model)
        return [
            {"params": [p for n, p in model.named_parameters() if n.startswith(head + ".")], "lr": head_lr},
            {"params": [p for n, p in model.named_parameters() if not n.startswith(head + ".")], "lr": body_lr},
        ]

    assert check_param_groups(keeps_frozen) is False
    out = capsys.readouterr().out
    assert "❌ parameter groups: on resnet18 (head_lr=0.003, body_lr=0.0002): the frozen parameter conv1.weight" in out


def test_param_groups_reports_swapped_learning_rates(capsys):
    assert check_param_groups(lambda m, head_lr, body_lr: groups_by_hand(m, body_lr, head_lr)) is False
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
    assert "trainable parameters are in no group (e.g. layer3.0.conv1.weight)" in capsys.readouterr().out


def test_param_groups_reports_wrong_shapes_of_answer(capsys):
    assert check_param_groups(lambda m, a, b: list(m.parameters())) is False
    assert "group 0 should be a dict with keys 'params' and 'lr'" in capsys.readouterr().out
    assert check_param_groups(lambda m, a, b: None) is False
    assert "expected a non-empty list of dicts, got NoneType" in capsys.readouterr().out
