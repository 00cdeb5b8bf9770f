"""The lecture 06 self-checks: they pass correct code and explain typical mistakes."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from pdl.batchnorm import BatchNorm, fold_batchnorm
from pdl.checks.batchnorm import check_batchnorm_forward, check_batchnorm_module
from pdl.checks.folding import check_fold_batchnorm

# --------------------------------------------------------------------------------------
# check_batchnorm_forward
# --------------------------------------------------------------------------------------


def bn_forward(x, gamma, beta, eps=1e-5):
    """A student's correct solution, written the way the notebook teaches it."""
    dims = [0, *range(2, x.ndim)]
    shape = [1, -1] + [1] * (x.ndim - 2)
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    return gamma.view(shape) * (x - mean) / torch.sqrt(var + eps) + beta.view(shape)


def test_forward_accepts_a_correct_solution(capsys):
    assert check_batchnorm_forward(bn_forward) is True
    assert capsys.readouterr().out.strip() == "\u2705 batch norm forward: correct"


def pytorch_forward(x, gamma, beta, eps=1e-5):
    """PyTorch's own batch norm, in training mode."""
    return F.batch_norm(x, None, None, gamma, beta, training=True, eps=eps)


def one_pass(x, gamma, beta, eps=1e-5):
    """Right in exact arithmetic, and the least precise in float32: E[x^2] - E[x]^2."""
    dims = [0, *range(2, x.ndim)]
    shape = [1, -1] + [1] * (x.ndim - 2)
    mean = x.mean(dim=dims, keepdim=True)
    var = (x**2).mean(dim=dims, keepdim=True) - mean**2
    return gamma.view(shape) * (x - mean) / torch.sqrt(var + eps) + beta.view(shape)


def with_var_mean(x, gamma, beta, eps=1e-5):
    dims = [0, *range(2, x.ndim)]
    shape = [1, -1] + [1] * (x.ndim - 2)
    var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=0)
    return (x - mean) * torch.rsqrt(var + eps) * gamma.view(shape) + beta.view(shape)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("fn", [pytorch_forward, bn_forward, one_pass, with_var_mean])
def test_forward_accepts_pytorch_and_every_correct_formula_whatever_the_rounding(fn, seed, capsys):
    # The tolerance is what float32 allows: PyTorch's own kernel and the least precise correct
    # formula pass on every input the check draws.
    assert check_batchnorm_forward(fn, seed=seed) is True, capsys.readouterr().out


def test_forward_reports_the_stub(failing):
    def stub(x, gamma, beta, eps=1e-5):
        raise NotImplementedError

    failing(check_batchnorm_forward, stub, "not attempted yet")


def test_forward_recognises_the_unbiased_variance(failing):
    def unbiased(x, gamma, beta, eps=1e-5):
        dims = [0, *range(2, x.ndim)]
        shape = [1, -1] + [1] * (x.ndim - 2)
        mean, var = x.mean(dims, keepdim=True), x.var(dims, keepdim=True)  # correction=1
        return gamma.view(shape) * (x - mean) / torch.sqrt(var + eps) + beta.view(shape)

    failing(check_batchnorm_forward, unbiased, "(16, 5)", "unbiased variance", "correction=0")


def test_forward_recognises_layer_norm(failing):
    def over_features(x, gamma, beta, eps=1e-5):
        mean = x.mean(1, keepdim=True)
        var = x.var(1, keepdim=True, correction=0)
        return gamma * (x - mean) / torch.sqrt(var + eps) + beta

    failing(check_batchnorm_forward, over_features, "layer norm")


def test_forward_recognises_per_pixel_statistics_for_images(failing):
    def only_batch_dim(x, gamma, beta, eps=1e-5):
        shape = [1, -1] + [1] * (x.ndim - 2)
        mean = x.mean(0, keepdim=True)
        var = x.var(0, keepdim=True, correction=0)
        return gamma.view(shape) * (x - mean) / torch.sqrt(var + eps) + beta.view(shape)

    # Right for (N, D), wrong for (N, C, H, W).
    failing(check_batchnorm_forward, only_batch_dim, "(8, 3, 5, 5)", "dims (0, 2, 3)")


def test_forward_recognises_missing_gamma_beta_and_missing_eps(failing):
    def no_affine(x, gamma, beta, eps=1e-5):
        return bn_forward(x, torch.ones_like(gamma), torch.zeros_like(beta), eps)

    failing(check_batchnorm_forward, no_affine, "gamma and beta are not applied")

    def no_eps(x, gamma, beta, eps=1e-5):
        return bn_forward(x, gamma, beta, eps=0.0)

    failing(check_batchnorm_forward, no_eps, "eps is missing")

    def eps_outside(x, gamma, beta, eps=1e-5):
        dims = [0, *range(2, x.ndim)]
        shape = [1, -1] + [1] * (x.ndim - 2)
        mean, var = x.mean(dims, keepdim=True), x.var(dims, keepdim=True, correction=0)
        return gamma.view(shape) * (x - mean) / (torch.sqrt(var) + eps) + beta.view(shape)

    failing(check_batchnorm_forward, eps_outside, "inside the square root")


def test_forward_catches_detached_statistics_through_the_gradient(failing):
    def detached(x, gamma, beta, eps=1e-5):
        dims = [0, *range(2, x.ndim)]
        shape = [1, -1] + [1] * (x.ndim - 2)
        mean = x.mean(dim=dims, keepdim=True).detach()
        var = x.var(dim=dims, keepdim=True, correction=0).detach()
        return gamma.view(shape) * (x - mean) / torch.sqrt(var + eps) + beta.view(shape)

    failing(check_batchnorm_forward, detached, "gradient with respect to x", "detached")


def test_forward_catches_an_output_outside_autograd(failing):
    def numpy_way(x, gamma, beta, eps=1e-5):
        return torch.from_numpy(bn_forward(x.detach(), gamma.detach(), beta.detach(), eps).numpy())

    failing(check_batchnorm_forward, numpy_way, "not connected to autograd")


# --------------------------------------------------------------------------------------
# check_batchnorm_module
# --------------------------------------------------------------------------------------


class StudentBatchNorm(nn.Module):
    """A correct hand-written layer, with gamma/beta names instead of PyTorch's weight/bias."""

    def __init__(
        self,
        num_features,
        eps=1e-5,
        momentum=0.1,
        unbiased=True,
        eval_uses_running=True,
        swap_momentum=False,
        update=True,
        no_grad=True,
    ):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.eps, self.momentum = eps, momentum
        self.unbiased, self.eval_uses_running = unbiased, eval_uses_running
        self.swap_momentum, self.update, self.no_grad = swap_momentum, update, no_grad

    def forward(self, x):
        dims = [0, *range(2, x.ndim)]
        shape = [1, -1] + [1] * (x.ndim - 2)
        if self.training or not self.eval_uses_running:
            mean = x.mean(dims)
            var = x.var(dims, correction=0)
            if self.training and self.update:
                n = x.numel() / x.shape[1]
                batch_var = var * n / (n - 1) if self.unbiased else var
                m = 1 - self.momentum if self.swap_momentum else self.momentum
                with torch.no_grad() if self.no_grad else contextlib.nullcontext():
                    self.running_mean = (1 - m) * self.running_mean + m * mean
                    self.running_var = (1 - m) * self.running_var + m * batch_var
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return self.gamma.view(shape) * x_hat + self.beta.view(shape)


def _variant(**options):
    return lambda num_features: StudentBatchNorm(num_features, **options)


class PyTorchBatchNorm(nn.modules.batchnorm._BatchNorm):
    """PyTorch's own batch norm (BatchNorm1d/2d's common base), for (N, C) and (N, C, H, W) alike."""

    def _check_input_dim(self, input):
        pass


def test_module_accepts_a_correct_layer_pytorch_and_pdl(capsys):
    for cls in (StudentBatchNorm, PyTorchBatchNorm, BatchNorm):
        assert check_batchnorm_module(cls) is True
    assert capsys.readouterr().out.count("\u2705 batch norm layer: correct") == 3


def test_module_rejects_running_statistics_kept_as_plain_attributes(failing):
    # They compute the right numbers, but .to(device) leaves them behind and state_dict() forgets them.
    class PlainAttributes(StudentBatchNorm):
        def __init__(self, num_features):
            super().__init__(num_features)
            del self.running_mean, self.running_var
            self.running_mean = torch.zeros(num_features)
            self.running_var = torch.ones(num_features)

    assert "running_mean" not in PlainAttributes(3).state_dict()
    failing(
        check_batchnorm_module,
        PlainAttributes,
        "running_mean is a plain tensor attribute, not a buffer",
        ".to(device)",
        "state_dict()",
        "register_buffer",
    )


def test_module_rejects_running_statistics_left_out_of_the_state_dict(failing):
    class NotSaved(StudentBatchNorm):
        def __init__(self, num_features):
            super().__init__(num_features)
            del self.running_var
            self.register_buffer("running_var", torch.ones(num_features), persistent=False)

    failing(
        check_batchnorm_module, NotSaved, "running_var is a buffer that state_dict() does not save"
    )


def test_module_rejects_running_statistics_as_parameters(failing):
    class TrainedStatistics(StudentBatchNorm):
        def __init__(self, num_features):
            super().__init__(num_features)
            del self.running_mean
            self.running_mean = nn.Parameter(torch.zeros(num_features))

    failing(
        check_batchnorm_module,
        TrainedStatistics,
        "running_mean is an nn.Parameter",
        "register_buffer",
    )


def test_module_rejects_running_statistics_inside_the_graph(failing):
    failing(
        check_batchnorm_module,
        _variant(no_grad=False),
        "after training batch 1",
        "running_mean is part of the autograd graph",
        "torch.no_grad()",
    )


def test_module_rejects_updates_in_eval_mode(failing):
    class AlwaysUpdates(StudentBatchNorm):
        def forward(self, x):
            out = super().forward(x)
            if not self.training:
                with torch.no_grad():
                    self.running_mean.mul_(0.9).add_(0.1 * x.mean([0, *range(2, x.ndim)]))
            return out

    failing(check_batchnorm_module, AlwaysUpdates, "changed in eval mode", "self.training")


def test_module_explains_the_unbiased_variance_in_the_normalization(failing):
    class UnbiasedNormalization(StudentBatchNorm):
        def forward(self, x):
            dims, shape = [0, *range(2, x.ndim)], [1, -1] + [1] * (x.ndim - 2)
            mean, var = x.mean(dims), x.var(dims)  # correction=1
            with torch.no_grad():
                self.running_mean.mul_(0.9).add_(0.1 * mean)
                self.running_var.mul_(0.9).add_(0.1 * var)
            return self.gamma.view(shape) * (x - mean.view(shape)) / torch.sqrt(
                var.view(shape) + self.eps
            ) + self.beta.view(shape)

    failing(
        check_batchnorm_module,
        UnbiasedNormalization,
        "training batch 1",
        "unbiased variance",
        "correction=0",
    )


def test_module_reports_answers_that_are_not_layer_classes(failing):
    failing(
        check_batchnorm_module, lambda num_features: None, "should be an nn.Module, got NoneType"
    )
    failing(
        check_batchnorm_module, nn.BatchNorm2d, "(32, 4)", "expected 4D input"
    )  # PyTorch's 2d layer, given (N, C)


def test_module_wants_the_unbiased_running_variance(failing):
    failing(
        check_batchnorm_module,
        _variant(unbiased=False),
        "after training batch 1",
        "unbiased",
        "n / (n - 1)",
    )


def test_module_wants_running_statistics_in_eval_mode(failing):
    failing(
        check_batchnorm_module,
        _variant(eval_uses_running=False),
        "eval mode",
        "running_mean and running_var",
    )


def test_module_explains_a_swapped_momentum(failing):
    failing(
        check_batchnorm_module,
        _variant(swap_momentum=True),
        "(1 - momentum) * running + momentum * batch_mean",
    )


def test_module_notices_running_statistics_that_never_move(failing):
    failing(check_batchnorm_module, _variant(update=False), "did not change")


def test_module_needs_parameters(failing):
    class NoParameters(StudentBatchNorm):
        def __init__(self, num_features):
            super().__init__(num_features)
            del self.gamma
            self.gamma = torch.ones(num_features)  # a plain tensor: the optimizer never sees it

    failing(check_batchnorm_module, NoParameters, "gamma (weight) should be an nn.Parameter")


# --------------------------------------------------------------------------------------
# check_fold_batchnorm
# --------------------------------------------------------------------------------------


def student_fold(conv, bn):
    """A correct student solution."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded = copy.deepcopy(conv)
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    folded.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1))
    folded.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
    return folded


def test_fold_accepts_a_correct_solution_pytorch_and_pdl(capsys):
    for fn in (student_fold, fuse_conv_bn_eval, fold_batchnorm):
        assert check_fold_batchnorm(fn) is True
    assert capsys.readouterr().out.count("\u2705 fold batch norm into the conv: correct") == 3


def _fold_with_scale(scale_of):
    """A fold that computes its per-channel scale with ``scale_of(bn)``: the usual place of a mistake."""

    def fold(conv, bn):
        scale = scale_of(bn)
        folded = copy.deepcopy(conv)
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
        folded.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1))
        folded.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
        return folded

    return fold


def test_fold_rejects_a_missing_eps(failing):
    no_eps = _fold_with_scale(lambda bn: bn.weight / torch.sqrt(bn.running_var))
    failing(check_fold_batchnorm, no_eps, "bias=True", "eps is missing")


def test_fold_rejects_a_fixed_eps_and_a_misplaced_one(failing):
    fixed = _fold_with_scale(lambda bn: bn.weight / torch.sqrt(bn.running_var + 1e-5))
    failing(check_fold_batchnorm, fixed, "use bn.eps", "eps=0.001")
    outside = _fold_with_scale(lambda bn: bn.weight / (torch.sqrt(bn.running_var) + bn.eps))
    failing(check_fold_batchnorm, outside, "inside the square root")
    variance = _fold_with_scale(lambda bn: bn.weight / (bn.running_var + bn.eps))
    failing(check_fold_batchnorm, variance, "not by the variance")


def test_fold_names_bias_mistakes(failing):
    def bias_with(make_bias):
        def fold(conv, bn):
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            folded = copy.deepcopy(conv)
            bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
            folded.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1))
            folded.bias = nn.Parameter(make_bias(bias, bn, scale))
            return folded

        return fold

    failing(
        check_fold_batchnorm,
        bias_with(lambda b, bn, s: (b - bn.running_mean) * s),
        "beta (bn.bias) is missing",
    )
    failing(
        check_fold_batchnorm,
        bias_with(lambda b, bn, s: (b + bn.running_mean) * s + bn.bias),
        "subtract the running mean",
    )
    failing(
        check_fold_batchnorm,
        bias_with(lambda b, bn, s: b - bn.running_mean * s + bn.bias),
        "bias=True",
        "the conv's own bias must be scaled too",
    )


def test_fold_rejects_a_conv_without_the_original_stride(failing):
    def new_conv(conv, bn):
        fresh = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding
        )
        reference = fold_batchnorm(conv, bn)
        with torch.no_grad():
            fresh.weight.copy_(reference.weight)
            fresh.bias.copy_(reference.bias)
        return fresh

    failing(
        check_fold_batchnorm, new_conv, "bias=False, stride=2", "has shape", "stride and padding"
    )


def test_fold_refuses_editing_the_batch_norm(failing):
    def adds_eps_in_place(conv, bn):
        bn.running_var += bn.eps
        return _fold_with_scale(lambda bn: bn.weight / torch.sqrt(bn.running_var))(conv, bn)

    failing(check_fold_batchnorm, adds_eps_in_place, "the original batch norm running_var changed")


def test_fold_refuses_editing_the_original_conv(failing):
    def in_place(conv, bn):
        folded = student_fold(conv, bn)
        with torch.no_grad():
            conv.weight.copy_(folded.weight)
            conv.bias.copy_(folded.bias)
        return conv

    failing(
        check_fold_batchnorm,
        in_place,
        "bias=True",
        "the original conv weight, conv bias changed",
        "copy.deepcopy",
    )


def test_fold_needs_a_bias_when_the_conv_had_none(failing):
    def keeps_no_bias(conv, bn):
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        folded = copy.deepcopy(conv)
        folded.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1))
        if conv.bias is not None:
            folded.bias = nn.Parameter((conv.bias - bn.running_mean) * scale + bn.bias)
        return folded

    failing(check_fold_batchnorm, keeps_no_bias, "bias=False", "needs a bias")


def test_fold_points_at_a_wrong_weight_scale(failing):
    def forgets_gamma(conv, bn):
        scale = 1 / torch.sqrt(bn.running_var + bn.eps)
        folded = copy.deepcopy(conv)
        folded.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1))
        folded.bias = nn.Parameter((conv.bias - bn.running_mean) * scale + bn.bias)
        return folded

    failing(check_fold_batchnorm, forgets_gamma, "gamma (bn.weight) is missing from the scale")

    squared = _fold_with_scale(
        lambda bn: (bn.weight / torch.sqrt(bn.running_var + bn.eps)) ** 2
    )  # no known mistake
    failing(
        check_fold_batchnorm,
        squared,
        "the folded weight is wrong at index",
        "gamma / sqrt(running_var + eps)",
    )


def test_fold_wants_a_conv_back(failing):
    failing(check_fold_batchnorm, lambda conv, bn: nn.Sequential(conv, bn), "return an nn.Conv2d")


def test_the_checks_leave_the_global_random_state_alone(leaves_global_rng_alone):
    leaves_global_rng_alone(check_fold_batchnorm, student_fold)  # it builds an nn.Conv2d
    leaves_global_rng_alone(check_batchnorm_forward, bn_forward)
    leaves_global_rng_alone(check_batchnorm_module, StudentBatchNorm)


@pytest.mark.parametrize(
    "check", [check_batchnorm_forward, check_batchnorm_module, check_fold_batchnorm]
)
@pytest.mark.parametrize(
    "answer", [None, 42, "batch norm", lambda *args: "not a tensor", lambda *args: torch.zeros(1)]
)
def test_the_checks_never_raise_on_any_answer(check, answer, capsys):
    assert check(answer) is False
    out = capsys.readouterr().out
    assert out.startswith("\u274c") and "could not judge" not in out, out


def test_the_notebook_stubs_are_not_attempted(capsys):
    class MyBatchNorm(nn.Module):  # the stub of exercise 2, as the notebook ships it
        def __init__(self, num_features, eps=1e-5, momentum=0.1):
            super().__init__()
            raise NotImplementedError

        def forward(self, x):
            raise NotImplementedError

    def fold_stub(conv, bn):
        raise NotImplementedError

    assert check_batchnorm_module(MyBatchNorm) is False
    assert check_fold_batchnorm(fold_stub) is False
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "\u2b1c batch norm layer: for input shape (32, 4): not attempted yet (the stub still raises NotImplementedError)",
        "\u2b1c fold batch norm into the conv: conv with bias=True, stride=1: not attempted yet "
        "(the stub still raises NotImplementedError)",
    ]
