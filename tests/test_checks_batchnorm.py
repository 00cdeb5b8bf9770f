"""The lecture 06 self-checks: they pass correct code and explain typical mistakes."""

from __future__ import annotations

import copy

import torch
from torch import nn

from pdl.checks.batchnorm import (
    check_batchnorm_forward,
    check_batchnorm_module,
    check_fold_batchnorm,
)

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

    def __init__(self, num_features, eps=1e-5, momentum=0.1, unbiased=True, eval_uses_running=True,
                 swap_momentum=False, update=True):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.eps, self.momentum = eps, momentum
        self.unbiased, self.eval_uses_running = unbiased, eval_uses_running
        self.swap_momentum, self.update = swap_momentum, update

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
                with torch.no_grad():
                    self.running_mean = (1 - m) * self.running_mean + m * mean
                    self.running_var = (1 - m) * self.running_var + m * batch_var
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return self.gamma.view(shape) * x_hat + self.beta.view(shape)


def _variant(**options):
    return lambda num_features: StudentBatchNorm(num_features, **options)


def test_module_accepts_a_correct_layer(capsys):
    assert check_batchnorm_module(StudentBatchNorm) is True
    assert capsys.readouterr().out.strip() == "\u2705 batch norm layer: correct"


def test_module_wants_the_unbiased_running_variance(failing):
    failing(check_batchnorm_module, _variant(unbiased=False), "after training batch 1", "unbiased", "n / (n - 1)")


def test_module_wants_running_statistics_in_eval_mode(failing):
    failing(check_batchnorm_module, _variant(eval_uses_running=False), "eval mode", "running_mean and running_var")


def test_module_explains_a_swapped_momentum(failing):
    failing(check_batchnorm_module, _variant(swap_momentum=True), "(1 - momentum) * running + momentum * batch_mean")


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


def test_fold_accepts_a_correct_solution(capsys):
    assert check_fold_batchnorm(student_fold) is True
    assert capsys.readouterr().out.strip() == "\u2705 fold batch norm into the conv: correct"


def test_fold_refuses_editing_the_original_conv(failing):
    def in_place(conv, bn):
        folded = student_fold(conv, bn)
        with torch.no_grad():
            conv.weight.copy_(folded.weight)
            conv.bias.copy_(folded.bias)
        return conv

    failing(check_fold_batchnorm, in_place, "bias=True", "changed", "copy.deepcopy")


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

    failing(check_fold_batchnorm, forgets_gamma, "the folded weight", "gamma / sqrt(running_var + eps)")


def test_fold_wants_a_conv_back(failing):
    failing(check_fold_batchnorm, lambda conv, bn: nn.Sequential(conv, bn), "return an nn.Conv2d")


def test_the_checks_leave_the_global_random_state_alone(leaves_global_rng_alone):
    leaves_global_rng_alone(check_fold_batchnorm, student_fold)  # it builds an nn.Conv2d
    leaves_global_rng_alone(check_batchnorm_forward, bn_forward)
    leaves_global_rng_alone(check_batchnorm_module, StudentBatchNorm)
