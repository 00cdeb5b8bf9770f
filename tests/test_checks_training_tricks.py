"""The lecture 04 self-checks: they pass correct code (and PyTorch's own functions where they
exist), name the typical mistakes, and never raise."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

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


def test_standardize_accepts_torchvision_normalize(capsys):
    def with_torchvision(train, test):  # PyTorch's own: statistics computed, then v2's normalize
        mean, std = train.mean(dim=(0, 2, 3)).tolist(), train.std(dim=(0, 2, 3)).tolist()
        return TF.normalize(train, mean, std), TF.normalize(test, mean, std)

    assert check_standardize(with_torchvision) is True


def test_standardize_rejects_editing_the_callers_tensors(failing):
    # The values returned are right, but the caller's tensors were changed: lecture 01's rule.
    def in_place(train, test):
        mean = train.mean(dim=(0, 2, 3), keepdim=True)
        std = train.std(dim=(0, 2, 3), keepdim=True)
        test.sub_(mean).div_(std)
        train -= mean
        train /= std
        return train, test

    def only_test_in_place(train, test):
        mean = train.mean(dim=(0, 2, 3), keepdim=True)
        std = train.std(dim=(0, 2, 3), keepdim=True)
        return (train - mean) / std, test.sub_(mean).div_(std)

    failing(check_standardize, in_place, "changed its input train in place", "(train - mean) / std")
    failing(check_standardize, only_test_in_place, "changed its input test in place")


def test_standardize_forgotten_keepdim(failing):
    def no_keepdim(train, test):
        mean, std = train.mean(dim=(0, 2, 3)), train.std(dim=(0, 2, 3))
        return (train - mean) / std, (test - mean) / std

    failing(check_standardize, no_keepdim, "your code raised RuntimeError", "keepdim=True")


def test_standardize_half_done(failing):
    def by_variance(train, test):
        mean, var = train.mean(dim=(0, 2, 3), keepdim=True), train.var(dim=(0, 2, 3), keepdim=True)
        return (train - mean) / var, (test - mean) / var

    def centred_only(train, test):
        mean = train.mean(dim=(0, 2, 3), keepdim=True)
        return train - mean, test - mean

    failing(check_standardize, by_variance, "divided by the variance")
    failing(check_standardize, centred_only, "only centred")


def test_standardize_stub_and_float64(failing):
    def stub(train, test):
        raise NotImplementedError

    failing(check_standardize, stub, "not attempted yet")
    failing(
        check_standardize,
        lambda train, test: tuple(t.double() for t in standardize(train, test)),
        "dtype torch.float64",
    )


def test_standardize_wants_two_tensors(failing):
    failing(
        check_standardize,
        lambda train, test: standardize(train, test)[0],
        "return a tuple (train_standardized, test_standardized), got Tensor",
    )


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

    failing(
        check_kaiming_init,
        xavier,
        "Glorot's (Xavier)",
        "average of fan-in and fan-out",
        "sqrt(2 / fan_in)",
    )
    failing(check_kaiming_init, lecun, "LeCun's fan-in", "ReLU zeroes half")
    failing(check_kaiming_init, fan_out, "layer.in_features")


def test_kaiming_wants_in_place_changes_and_a_zero_bias(failing):
    def replaces_with_a_tensor(layer):
        layer.weight = torch.randn(layer.out_features, layer.in_features) * math.sqrt(
            2 / layer.in_features
        )

    def does_nothing(layer):
        return nn.init.kaiming_normal_(layer.weight.detach().clone())

    def keeps_bias(layer):
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")

    # Assigning a plain tensor to a Parameter's name is refused by nn.Module: the check reports it.
    failing(check_kaiming_init, replaces_with_a_tensor, "your code raised TypeError", "in place")
    failing(check_kaiming_init, does_nothing, "did not change")
    failing(check_kaiming_init, keeps_bias, "bias to zero")


def test_kaiming_rejects_a_new_parameter(failing):
    # The values are right, but the layer now holds a different Parameter: not in place.
    def new_parameter(layer):
        std = math.sqrt(2 / layer.in_features)
        layer.weight = nn.Parameter(torch.randn(layer.out_features, layer.in_features) * std)
        layer.bias = nn.Parameter(torch.zeros(layer.out_features))

    def new_bias(layer):
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        layer.bias = nn.Parameter(torch.zeros(layer.out_features))

    failing(
        check_kaiming_init,
        new_parameter,
        "layer.weight was replaced by a new nn.Parameter",
        "in place",
    )
    failing(check_kaiming_init, new_bias, "layer.bias was replaced")


def test_kaiming_names_scale_mistakes(failing):
    def variance_as_std(layer):
        with torch.no_grad():
            layer.weight.normal_(0.0, 2 / layer.in_features)
            layer.bias.zero_()

    def uniform_with_the_normal_bound(layer):
        bound = math.sqrt(2 / layer.in_features)
        with torch.no_grad():
            layer.weight.uniform_(-bound, bound)
            layer.bias.zero_()

    def pytorch_default(layer):
        layer.reset_parameters()
        nn.init.zeros_(layer.bias)

    failing(check_kaiming_init, variance_as_std, "that is the variance")
    failing(check_kaiming_init, uniform_with_the_normal_bound, "sqrt(6 / fan_in)")
    failing(check_kaiming_init, pytorch_default, "PyTorch's default for nn.Linear")


def test_kaiming_without_no_grad_and_the_stub(failing):
    def no_no_grad(layer):
        layer.weight.normal_(0.0, math.sqrt(2 / layer.in_features))
        layer.bias.zero_()

    def stub(layer):
        raise NotImplementedError

    failing(check_kaiming_init, no_no_grad, "torch.no_grad()")
    failing(check_kaiming_init, stub, "not attempted yet")


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

    def with_torch(param, grad, velocity, lr, momentum):  # PyTorch's own optimizer, one step
        p = param.clone().requires_grad_(True)
        p.grad = grad.clone()
        optimizer = torch.optim.SGD([p], lr=lr, momentum=momentum)
        optimizer.state[p]["momentum_buffer"] = velocity.clone()
        optimizer.step()
        return p.detach(), optimizer.state[p]["momentum_buffer"]

    for fn in (momentum_step, textbook, in_place, with_torch):
        assert check_sgd_momentum(fn) is True
    assert capsys.readouterr().out.count("\u2705 SGD with momentum: correct") == 4


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
    failing(
        check_sgd_momentum,
        lambda p, g, v, lr, m: p - lr * g,
        "return a tuple (new_param, new_velocity), got Tensor",
    )


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


@pytest.mark.parametrize("check", [check_standardize, check_kaiming_init, check_sgd_momentum])
@pytest.mark.parametrize(
    "answer",
    [
        None,
        lambda *args: None,
        lambda *args: "x",
        lambda *args: (1.0, 2.0),
        lambda *args: (torch.zeros(2), None),
    ],
    ids=[
        "None",
        "returns None",
        "returns a string",
        "returns two floats",
        "returns a tensor and None",
    ],
)
def test_odd_answers_are_judged_without_crashing(check, answer, failing):
    out = failing(check, answer)
    assert "could not judge" not in out, out  # the check's own error, caught by @exercise
