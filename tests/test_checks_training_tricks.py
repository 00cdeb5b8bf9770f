"""The lecture 04 self-checks: they pass correct code and explain typical mistakes."""

from __future__ import annotations

import math

import torch
from torch import nn

from pdl.checks.training_tricks import check_kaiming_init, check_sgd_momentum, check_standardize

# --------------------------------------------------------------------------------------
# check_standardize
# --------------------------------------------------------------------------------------


def standardize(train, test):
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True, correction=0)
    return (train - mean) / std, (test - mean) / std


def test_standardize_accepts_a_correct_solution(capsys):
    assert check_standardize(standardize) is True
    assert capsys.readouterr().out.strip() == "\u2705 standardize per channel: correct"


def test_standardize_wants_training_statistics_for_the_test_set(failing):
    def own_statistics(train, test):
        return standardize(train, train)[0], standardize(test, test)[0]

    failing(check_standardize, own_statistics, "test images", "their own statistics")


def test_standardize_wants_one_statistic_per_channel(failing):
    def global_statistics(train, test):
        mean, std = train.mean(), train.std()
        return (train - mean) / std, (test - mean) / std

    def per_pixel(train, test):
        mean, std = train.mean(0), train.std(0)
        return (train - mean) / std, (test - mean) / std

    failing(check_standardize, global_statistics, "all channels together", "(0, 2, 3)")
    failing(check_standardize, per_pixel, "for every pixel")


def test_standardize_wants_two_tensors(failing):
    failing(check_standardize, lambda train, test: standardize(train, test)[0], "return a tuple (train_standardized, test_standardized), got Tensor")


# --------------------------------------------------------------------------------------
# check_kaiming_init
# --------------------------------------------------------------------------------------


def kaiming(layer):
    with torch.no_grad():
        layer.weight.normal_(0.0, math.sqrt(2 / layer.in_features))
        layer.bias.zero_()


def test_kaiming_accepts_normal_and_uniform(capsys):
    assert check_kaiming_init(kaiming) is True

    def uniform(layer):
        nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
        nn.init.zeros_(layer.bias)

    assert check_kaiming_init(uniform) is True
    assert capsys.readouterr().out.count("\u2705 Kaiming initialization: correct") == 2


def test_kaiming_recognises_xavier_and_fan_out(failing):
    def xavier(layer):
        nn.init.xavier_normal_(layer.weight)
        nn.init.zeros_(layer.bias)

    def lecun(layer):
        with torch.no_grad():
            layer.weight.normal_(0.0, math.sqrt(1 / layer.in_features))
            layer.bias.zero_()

    def fan_out(layer):
        with torch.no_grad():
            layer.weight.normal_(0.0, math.sqrt(2 / layer.out_features))
            layer.bias.zero_()

    failing(check_kaiming_init, xavier, "Xavier (Glorot)", "sqrt(2 / fan_in)")
    failing(check_kaiming_init, lecun, "ReLU zeroes half")
    failing(check_kaiming_init, fan_out, "layer.in_features")


def test_kaiming_wants_in_place_changes_and_a_zero_bias(failing):
    def replaces_with_a_tensor(layer):
        layer.weight = torch.randn(layer.out_features, layer.in_features) * math.sqrt(2 / layer.in_features)

    def does_nothing(layer):
        return nn.init.kaiming_normal_(layer.weight.detach().clone())

    def keeps_bias(layer):
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")

    # Assigning a plain tensor to a Parameter's name is refused by nn.Module: the check reports it.
    failing(check_kaiming_init, replaces_with_a_tensor, "your code raised TypeError")
    failing(check_kaiming_init, does_nothing, "did not change")
    failing(check_kaiming_init, keeps_bias, "bias to zero")


# --------------------------------------------------------------------------------------
# check_sgd_momentum
# --------------------------------------------------------------------------------------


def momentum_step(param, grad, velocity, lr, momentum):
    velocity = momentum * velocity + grad
    return param - lr * velocity, velocity


def test_momentum_accepts_pytorch_and_textbook_forms(capsys):
    def textbook(param, grad, velocity, lr, momentum):
        velocity = momentum * velocity - lr * grad
        return param + velocity, velocity

    def in_place(param, grad, velocity, lr, momentum):
        velocity.mul_(momentum).add_(grad)
        param.sub_(lr * velocity)
        return param, velocity

    for fn in (momentum_step, textbook, in_place):
        assert check_sgd_momentum(fn) is True
    assert capsys.readouterr().out.count("\u2705 SGD with momentum: correct") == 3


def test_momentum_explains_typical_mistakes(failing):
    def plain_sgd(param, grad, velocity, lr, momentum):
        return param - lr * grad, velocity

    def dampened(param, grad, velocity, lr, momentum):
        velocity = momentum * velocity + (1 - momentum) * grad
        return param - lr * velocity, velocity

    def old_velocity(param, grad, velocity, lr, momentum):
        return param - lr * velocity, momentum * velocity + grad

    def uphill(param, grad, velocity, lr, momentum):
        velocity = momentum * velocity + grad
        return param + lr * velocity, velocity

    failing(check_sgd_momentum, plain_sgd, "step 2", "not carried over")
    failing(check_sgd_momentum, dampened, "step 1", "without a (1 - momentum) factor")
    failing(check_sgd_momentum, old_velocity, "step 1", "uses the old velocity")
    failing(check_sgd_momentum, uphill, "downhill")


def test_momentum_reports_the_stub_and_a_wrong_return(failing):
    def stub(param, grad, velocity, lr, momentum):
        raise NotImplementedError

    failing(check_sgd_momentum, stub, "not attempted yet")
    failing(check_sgd_momentum, lambda p, g, v, lr, m: p - lr * g, "return a tuple (new_param, new_velocity), got Tensor")


# --------------------------------------------------------------------------------------
# All three
# --------------------------------------------------------------------------------------


def test_the_checks_leave_the_global_random_state_alone(leaves_global_rng_alone):
    # check_kaiming_init seeds the global generator for the student's code: inside fork_rng.
    leaves_global_rng_alone(check_kaiming_init, kaiming)
    leaves_global_rng_alone(check_standardize, standardize)
    leaves_global_rng_alone(check_sgd_momentum, momentum_step)


def test_standardize_hints_for_float64_answers(failing):
    # A float64 answer over the wrong dims gets the hint (torch.allclose used to raise on the dtypes).
    def global_statistics_in_float64(train, test):
        train, test = train.double(), test.double()
        mean, std = train.mean(), train.std()
        return (train - mean) / std, (test - mean) / std

    failing(check_standardize, global_statistics_in_float64, "all channels together")
