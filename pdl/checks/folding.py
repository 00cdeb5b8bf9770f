"""Self-check for lecture 06's last exercise: folding a batch norm into the convolution before it.

- ``check_fold_batchnorm(fn)``: ``fn(conv, bn)`` returns one conv that computes ``bn(conv(x))``
  in eval mode, and leaves the original conv and batch norm unchanged.

The reference is ``bn(conv(x))`` computed in float64; ``pdl.batchnorm.fold_batchnorm`` and the
classic mistakes, recomputed, name what is wrong. The tolerance is the one of the other lecture
06 checks (the forward pass and the whole layer), which are in ``pdl/checks/batchnorm.py``.
PyTorch's own ``torch.nn.utils.fusion.fuse_conv_bn_eval`` passes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from pdl.batchnorm import fold_batchnorm
from pdl.checks.batchnorm import TOL  # what float32 allows, explained there
from pdl.checks.core import call_safely, close, compare_tensors, exercise, report

__all__ = ["check_fold_batchnorm"]


# --------------------------------------------------------------------------------------
# Folding into the convolution
# --------------------------------------------------------------------------------------


@exercise
def check_fold_batchnorm(fn: Callable, *, seed: int = 0) -> bool:
    """Check ``fn(conv, bn) -> nn.Conv2d``: one convolution equal to ``bn(conv(x))`` in eval mode.

    Tried with a conv that has a bias and padding, and one without a bias (``bias=False`` is
    usual before batch norm) and with stride 2, with random running statistics and gamma/beta.
    The batch norm has ``eps=1e-3`` and one channel with a running variance as small as that,
    so ``bn.eps`` must be used. The original conv and batch norm must stay unchanged.

    Example:
        >>> from torch.nn.utils.fusion import fuse_conv_bn_eval  # PyTorch's own
        >>> check_fold_batchnorm(fuse_conv_bn_eval)
        ✅ fold batch norm into the conv: correct
        True
    """
    title = "fold batch norm into the conv"
    generator = torch.Generator().manual_seed(seed)
    for bias, stride in ((True, 1), (False, 2)):
        problem = _check_fold_once(fn, bias, stride, generator)
        if problem is not None:
            return report(title, f"conv with bias={bias}, stride={stride}: {problem}")
    return report(title, None)


def _fold_mistakes(
    conv: nn.Conv2d, bn: nn.BatchNorm2d
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The folded (weight, bias) that each classic mistake produces."""
    gamma, beta, mean, var, eps = bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps
    b = conv.bias if conv.bias is not None else torch.zeros_like(mean)
    right = gamma / torch.sqrt(var + eps)
    scales = {
        "eps is missing: scale = gamma / sqrt(running_var + bn.eps); a channel with a tiny running "
        "variance blows up without it": gamma / torch.sqrt(var),
        f"use bn.eps (this batch norm was built with eps={eps:g}), not PyTorch's default 1e-5": gamma
        / torch.sqrt(var + 1e-5),
        "eps belongs inside the square root: gamma / sqrt(running_var + eps)": gamma
        / (torch.sqrt(var) + eps),
        "divide by the standard deviation sqrt(running_var + eps), not by the variance": gamma
        / (var + eps),
        "gamma (bn.weight) is missing from the scale: scale = gamma / sqrt(running_var + eps)": 1
        / torch.sqrt(var + eps),
    }
    mistakes = {
        hint: (conv.weight * s.reshape(-1, 1, 1, 1), (b - mean) * s + beta)
        for hint, s in scales.items()
    }
    weight = conv.weight * right.reshape(-1, 1, 1, 1)
    mistakes[
        "beta (bn.bias) is missing from the folded bias: b' = (b - running_mean) * scale + beta"
    ] = (weight, (b - mean) * right)
    mistakes["subtract the running mean: b' = (b - running_mean) * scale + beta"] = (
        weight,
        (b + mean) * right + beta,
    )
    if conv.bias is not None:
        mistakes[
            "the conv's own bias must be scaled too: b' = (b - running_mean) * scale + beta"
        ] = (weight, b - mean * right + beta)
    return mistakes


def _fold_hint(folded: nn.Conv2d, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> str | None:
    weight, bias = folded.weight, folded.bias
    if bias is None or weight.shape != conv.weight.shape:
        return None
    with torch.no_grad():
        mistakes = _fold_mistakes(conv, bn)
        right_weight = fold_batchnorm(conv, bn).weight
    for hint, (wrong_weight, wrong_bias) in mistakes.items():  # the exact mistake first
        if close(weight, wrong_weight, **TOL) and close(bias, wrong_bias, **TOL):
            return hint
    if close(weight, right_weight, **TOL):
        return None
    for hint, (wrong_weight, _) in mistakes.items():  # then a wrong scale, whatever the bias
        if close(weight, wrong_weight, **TOL):
            return hint
    return None


def _check_fold_once(
    fn: Callable, bias: bool, stride: int, generator: torch.Generator
) -> str | None:
    with (
        torch.random.fork_rng()
    ):  # its random initial weights are overwritten: leave the notebook's generator alone
        conv = nn.Conv2d(3, 6, 3, padding=1, stride=stride, bias=bias)
    bn = nn.BatchNorm2d(6, eps=1e-3)
    with torch.no_grad():
        conv.weight.normal_(0, 0.3, generator=generator)
        if bias:
            conv.bias.normal_(generator=generator)
        bn.weight.uniform_(0.5, 2.0, generator=generator)
        bn.bias.normal_(generator=generator)
        bn.running_mean.normal_(generator=generator)
        bn.running_var.uniform_(0.2, 3.0, generator=generator)
        bn.running_var[-1] = 1e-3  # a nearly dead channel: eps matters here
    conv.eval()
    bn.eval()
    original = {f"conv {k}": v.clone() for k, v in conv.state_dict().items()}
    original |= {f"batch norm {k}": v.clone() for k, v in bn.state_dict().items()}
    x = torch.randn(4, 3, 8, 8, generator=generator)
    with torch.no_grad():
        exact = copy.deepcopy(bn).double()(copy.deepcopy(conv).double()(x.double())).float()

    folded, error = call_safely(fn, conv, bn)
    if error:
        return error
    if not isinstance(folded, nn.Conv2d):
        return f"return an nn.Conv2d, got {type(folded).__name__}"
    now = {f"conv {k}": v for k, v in conv.state_dict().items()} | {
        f"batch norm {k}": v for k, v in bn.state_dict().items()
    }
    changed = [k for k, v in now.items() if not torch.equal(v, original[k])]
    if changed:
        return (
            f"the original {', '.join(changed)} changed: build a new layer "
            "(copy.deepcopy(conv) or nn.Conv2d(...)) instead of editing the ones in the model"
        )
    with torch.no_grad():
        got, error = call_safely(folded, x)
    if error:
        return f"calling the folded conv: {error}"
    problem = compare_tensors(got, exact, name="folded(x)", **TOL)
    if problem is None:
        return None
    if isinstance(got, torch.Tensor) and got.shape != exact.shape:
        return (
            problem
            + " (the folded conv needs the original's kernel size, stride and padding: copy.deepcopy(conv))"
        )
    if not bias and folded.bias is None:
        return "the folded conv needs a bias (beta - scale * running_mean) even when the original had none"
    hint = _fold_hint(folded, conv, bn)
    if hint:
        return hint
    weight_problem = compare_tensors(
        folded.weight.detach(),
        fold_batchnorm(conv, bn).weight.detach(),
        name="the folded weight",
        **TOL,
    )
    if weight_problem:
        return (
            weight_problem
            + " (W' = W * gamma / sqrt(running_var + eps), one factor per output channel)"
        )
    return problem + " (b' = (b - running_mean) * gamma / sqrt(running_var + eps) + beta)"
