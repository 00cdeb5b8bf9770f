"""Self-checks for lecture 06 (batch normalization).

Each check runs your code next to the reference in ``pdl.batchnorm`` on fresh random inputs,
prints one line (a success line, or what is wrong and a hint why) and returns True/False.

- ``check_batchnorm_forward(fn)``: ``fn(x, gamma, beta, eps=1e-5)`` is the training-mode
  forward pass for ``(N, D)`` and ``(N, C, H, W)`` inputs; outputs *and* gradients are compared.
- ``check_batchnorm_module(cls)``: a whole layer class with running statistics, in training
  and in eval mode.
- ``check_fold_batchnorm(fn)``: ``fn(conv, bn)`` returns one conv that computes ``bn(conv(x))``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pdl.batchnorm import BatchNorm, _per_channel, batch_norm, batch_norm_statistics, fold_batchnorm
from pdl.checks.core import call_safely, close, compare_tensors, exercise, report

__all__ = ["check_batchnorm_forward", "check_batchnorm_module", "check_fold_batchnorm"]

OUTPUT_TOL = {"atol": 1e-5, "rtol": 1e-4}
GRAD_TOL = {"atol": 1e-4, "rtol": 1e-3}  # different but correct formulas round differently


def _channels_input(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Random activations whose channels have different means and scales; the last channel has
    a tiny variance, so that a missing ``eps`` shows."""
    channels = shape[1]
    broadcast = (1, channels, *[1] * (len(shape) - 2))
    scale = torch.rand(channels, generator=generator) * 3 + 0.5
    scale[-1] = 0.003
    shift = torch.randn(channels, generator=generator) * 2
    return torch.randn(shape, generator=generator) * scale.reshape(broadcast) + shift.reshape(broadcast)


def _closest_mistake(got: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> str | None:
    """Recognise the classic batch-norm mistakes by recomputing them."""
    mean, var = batch_norm_statistics(x)
    n = x.numel() // x.shape[1]

    def c(values: torch.Tensor) -> torch.Tensor:  # (C,) -> (1, C, 1, ...), to broadcast against x
        return _per_channel(values, x)

    candidates = {
        "you divided by the unbiased variance (torch.var's default divides by n - 1); "
        "normalization uses the biased one: x.var(..., correction=0) or ((x - mean) ** 2).mean(...)":
            batch_norm(x, gamma, beta, eps, mean, var * n / (n - 1)),
        "eps is missing: divide by sqrt(var + eps), so a (nearly) constant channel stays finite":
            batch_norm(x, gamma, beta, 0.0, mean, var),
        "eps belongs inside the square root: (x - mean) / sqrt(var + eps)":
            c(gamma) * (x - c(mean)) / (c(var).sqrt() + eps) + c(beta),
        "gamma and beta are not applied: return gamma * x_hat + beta":
            batch_norm(x, None, None, eps, mean, var),
        "you normalized each sample over its features (that is layer norm); batch norm takes one "
        "mean per feature/channel over the batch (dim 0, and dims 2, 3 for images)":
            _normalize_over(x, list(range(1, x.ndim)), gamma, beta, eps),
    }
    if x.ndim == 4:
        candidates[
            "for (N, C, H, W) inputs each channel has ONE mean over the batch and all pixels: "
            "reduce over dims (0, 2, 3), not just 0"
        ] = _normalize_over(x, [0], gamma, beta, eps)
        candidates["reduce over dims (0, 2, 3): one statistic per channel"] = _normalize_over(x, [0, 1], gamma, beta, eps)
    for hint, wrong in candidates.items():
        if close(got, wrong, **OUTPUT_TOL):
            return hint
    return None


def _normalize_over(x: torch.Tensor, dims: list[int], gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, correction=0)
    return _per_channel(gamma, x) * (x - mean) / torch.sqrt(var + eps) + _per_channel(beta, x)


@exercise
def check_batchnorm_forward(fn: Callable, *, seed: int = 0) -> bool:
    """Check ``fn(x, gamma, beta, eps=1e-5)``: batch norm's training-mode forward pass.

    It must work for ``(N, D)`` inputs (statistics over the batch) and ``(N, C, H, W)``
    inputs (statistics over the batch and the pixels of each channel), and stay differentiable:
    the gradients with respect to ``x``, ``gamma`` and ``beta`` are compared as well.

    Example:
        >>> from pdl.batchnorm import batch_norm
        >>> check_batchnorm_forward(lambda x, gamma, beta, eps=1e-5: batch_norm(x, gamma, beta, eps))
        ✅ batch norm forward: correct
        True
    """
    title = "batch norm forward"
    generator = torch.Generator().manual_seed(seed)
    for shape in [(16, 5), (8, 3, 5, 5)]:
        problem = _check_forward_on(fn, shape, generator)
        if problem is not None:
            return report(title, f"for input shape {shape}: {problem}")
    return report(title, None)


def _check_forward_on(fn: Callable, shape: tuple[int, ...], generator: torch.Generator) -> str | None:
    eps = 1e-5
    channels = shape[1]
    x = _channels_input(shape, generator)
    gamma = torch.rand(channels, generator=generator) + 0.5
    beta = torch.randn(channels, generator=generator)
    upstream = torch.randn(shape, generator=generator)

    inputs = [t.clone().requires_grad_(True) for t in (x, gamma, beta)]
    got, error = call_safely(fn, *inputs, eps=eps)
    if error:
        return error
    expected_inputs = [t.clone().requires_grad_(True) for t in (x, gamma, beta)]
    expected = batch_norm(*expected_inputs, eps=eps)
    problem = compare_tensors(got, expected.detach(), name="the output", **OUTPUT_TOL)
    if problem is not None:
        hint = _closest_mistake(got, x, gamma, beta, eps) if isinstance(got, torch.Tensor) else None
        return hint or problem
    if not got.requires_grad:
        return (
            "the output is right but not connected to autograd (did you use .detach(), .item(), "
            "NumPy, or torch.no_grad()?): gamma and beta could not learn"
        )
    _, error = call_safely(lambda: (got * upstream).sum().backward())
    if error:
        return f"backward through your output failed: {error}"
    (expected * upstream).sum().backward()
    for name, mine, reference in zip(("x", "gamma", "beta"), inputs, expected_inputs, strict=True):
        if mine.grad is None:
            return f"no gradient reaches {name}: the output must be computed from it with torch operations"
        problem = compare_tensors(mine.grad, reference.grad, name=f"the gradient with respect to {name}", **GRAD_TOL)
        if problem is not None:
            if name == "x":
                problem += (
                    " (the output is right, so the statistics are probably detached: batch norm "
                    "backpropagates through the batch mean and variance too)"
                )
            return problem
    return None


# --------------------------------------------------------------------------------------
# A whole layer with running statistics
# --------------------------------------------------------------------------------------


def _attribute(module: nn.Module, names: tuple[str, ...]) -> torch.Tensor | None:
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, torch.Tensor):
            return value
    return None


@exercise
def check_batchnorm_module(cls: type, *, seed: int = 0) -> bool:
    """Check a batch-norm layer class ``cls(num_features)`` against ``pdl.batchnorm.BatchNorm``.

    The class must have learnable ``weight``/``bias`` (or ``gamma``/``beta``) parameters of
    shape ``(C,)``, ``running_mean`` and ``running_var`` tensors, PyTorch's defaults
    (``eps=1e-5``, ``momentum=0.1``), and handle ``(N, C)`` and ``(N, C, H, W)`` inputs.
    Checked over three training batches (outputs, gradients, running statistics) and then in
    eval mode (outputs from the running statistics, which must not move).

    Example:
        >>> check_batchnorm_module(BatchNorm)
        ✅ batch norm layer: correct
        True
    """
    title = "batch norm layer"
    generator = torch.Generator().manual_seed(seed)
    for shape in [(32, 4), (8, 3, 5, 5)]:
        problem = _check_module_on(cls, shape, generator)
        if problem is not None:
            return report(title, f"for input shape {shape}: {problem}")
    return report(title, None)


def _check_module_on(cls: type, shape: tuple[int, ...], generator: torch.Generator) -> str | None:
    channels = shape[1]
    layer, error = call_safely(cls, channels)
    if error:
        return f"creating {getattr(cls, '__name__', cls)}({channels}) failed: {error}"
    if not isinstance(layer, nn.Module):
        return f"{getattr(cls, '__name__', cls)}({channels}) should be an nn.Module, got {type(layer).__name__}"
    gamma = _attribute(layer, ("weight", "gamma"))
    beta = _attribute(layer, ("bias", "beta"))
    for name, value in (("gamma (weight)", gamma), ("beta (bias)", beta)):
        if not isinstance(value, nn.Parameter):
            return f"{name} should be an nn.Parameter of shape ({channels},), so that the optimizer trains it"
        if value.shape != (channels,):
            return f"{name} has shape {tuple(value.shape)}, expected ({channels},): one value per channel"
    if _attribute(layer, ("running_mean",)) is None or _attribute(layer, ("running_var",)) is None:
        return "the layer needs running_mean and running_var tensors (register them as buffers)"

    reference = BatchNorm(channels)
    with torch.no_grad():  # random gamma/beta, the same in both layers, so that they matter
        reference.weight.uniform_(0.5, 2.0, generator=generator)
        reference.bias.normal_(generator=generator)
        gamma.copy_(reference.weight)
        beta.copy_(reference.bias)
    upstream = torch.randn(shape, generator=generator)

    layer.train()
    for batch in range(1, 4):
        x = _channels_input(shape, generator)
        previous = _running_statistics(layer)
        step_problem = _compare_step(layer, reference, x, upstream, (gamma, beta), f"training batch {batch}")
        if step_problem:
            return step_problem
        problem = _compare_running(layer, reference, previous, x, batch)
        if problem:
            return problem

    layer.eval()
    reference.eval()
    x = _channels_input(shape, generator)
    frozen = _running_statistics(layer)
    problem = _compare_step(layer, reference, x, upstream, (gamma, beta), "eval mode")
    if problem:
        with torch.no_grad():
            got, _ = call_safely(layer, x)
            uses_batch = batch_norm(x, reference.weight, reference.bias)
            if isinstance(got, torch.Tensor) and got.shape == x.shape and torch.allclose(got, uses_batch, **OUTPUT_TOL):
                return "in eval mode the layer still uses the batch's statistics; it must use running_mean and running_var"
        return problem
    now = _running_statistics(layer)
    if not (torch.equal(now[0], frozen[0]) and torch.equal(now[1], frozen[1])):
        return "the running statistics changed in eval mode; update them only when self.training is True"
    return None


def _running_statistics(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of the layer's running statistics, looked up afresh: a layer may assign new tensors."""
    return (
        _attribute(layer, ("running_mean",)).detach().clone(),
        _attribute(layer, ("running_var",)).detach().clone(),
    )


def _compare_step(layer, reference, x, upstream, params, when: str) -> str | None:
    for p in (*params, *reference.parameters()):
        p.grad = None
    mine_x = x.clone().requires_grad_(True)
    got, error = call_safely(layer, mine_x)
    if error:
        return f"{when}: {error}"
    ref_x = x.clone().requires_grad_(True)
    expected = reference(ref_x)
    problem = compare_tensors(got, expected.detach(), name=f"{when}: the output", **OUTPUT_TOL)
    if problem:
        return problem
    if not got.requires_grad:
        return f"{when}: the output is not connected to autograd (.detach(), NumPy or no_grad inside forward?)"
    _, error = call_safely(lambda: (got * upstream).sum().backward())
    if error:
        return (f"{when}: backward failed ({error}); are the running statistics part of the graph? "
                "Update them from detached values (under torch.no_grad())")
    (expected * upstream).sum().backward()
    pairs = [("x", mine_x.grad, ref_x.grad), ("gamma", params[0].grad, reference.weight.grad),
             ("beta", params[1].grad, reference.bias.grad)]  # fmt: skip
    for name, mine, ref in pairs:
        if mine is None:
            return f"{when}: no gradient reaches {name}"
        problem = compare_tensors(mine, ref, name=f"{when}: the gradient with respect to {name}", **GRAD_TOL)
        if problem:
            return problem
    return None


def _compare_running(layer, reference, previous, x, batch: int) -> str | None:
    running_mean, running_var = _running_statistics(layer)
    when = f"after training batch {batch}"
    if torch.equal(running_mean, previous[0]) and torch.equal(running_var, previous[1]):
        return f"{when}: running_mean and running_var did not change; update them in training mode"
    mean_problem = compare_tensors(running_mean, reference.running_mean, name=f"{when}: running_mean", **OUTPUT_TOL)
    var_problem = compare_tensors(running_var, reference.running_var, name=f"{when}: running_var", **OUTPUT_TOL)
    if mean_problem is None and var_problem is None:
        return None
    # Something is wrong: replay the known mistakes with this batch's statistics.
    mean, var = batch_norm_statistics(x)
    momentum = reference.momentum
    if mean_problem:
        if close(running_mean, momentum * previous[0] + (1 - momentum) * mean, **OUTPUT_TOL):
            return (f"{when}: running_mean weights the batch with 1 - momentum; PyTorch's rule is "
                    f"running = (1 - momentum) * running + momentum * batch_mean, with momentum = {momentum}")
        return mean_problem
    if close(running_var, (1 - momentum) * previous[1] + momentum * var, **OUTPUT_TOL):
        n = x.numel() // x.shape[1]
        return (f"{when}: running_var should track the *unbiased* batch variance, "
                f"var * n / (n - 1) with n = {n} values per channel (PyTorch does so)")
    return var_problem


# --------------------------------------------------------------------------------------
# Folding into the convolution
# --------------------------------------------------------------------------------------


@exercise
def check_fold_batchnorm(fn: Callable, *, seed: int = 0) -> bool:
    """Check ``fn(conv, bn) -> nn.Conv2d``: one convolution equal to ``bn(conv(x))`` in eval mode.

    Tried with a conv that has a bias and one without (``bias=False`` is usual before batch
    norm), with random running statistics and gamma/beta. The original conv must stay unchanged.

    Example:
        >>> check_fold_batchnorm(fold_batchnorm)
        ✅ fold batch norm into the conv: correct
        True
    """
    title = "fold batch norm into the conv"
    generator = torch.Generator().manual_seed(seed)
    for bias in (True, False):
        problem = _check_fold_once(fn, bias, generator)
        if problem is not None:
            return report(title, f"conv with bias={bias}: {problem}")
    return report(title, None)


def _check_fold_once(fn: Callable, bias: bool, generator: torch.Generator) -> str | None:
    with torch.random.fork_rng():  # its random initial weights are overwritten: leave the notebook's generator alone
        conv = nn.Conv2d(3, 6, 3, padding=1, stride=1, bias=bias)
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        conv.weight.normal_(0, 0.3, generator=generator)
        if bias:
            conv.bias.normal_(generator=generator)
        bn.weight.uniform_(0.5, 2.0, generator=generator)
        bn.bias.normal_(generator=generator)
        bn.running_mean.normal_(generator=generator)
        bn.running_var.uniform_(0.2, 3.0, generator=generator)
    bn.eval()
    original = {k: v.clone() for k, v in conv.state_dict().items()}
    x = torch.randn(4, 3, 8, 8, generator=generator)
    with torch.no_grad():
        expected = bn(conv(x))

    folded, error = call_safely(fn, conv, bn)
    if error:
        return error
    if not isinstance(folded, nn.Conv2d):
        return f"return an nn.Conv2d, got {type(folded).__name__}"
    changed = [k for k, v in conv.state_dict().items() if not torch.equal(v, original[k])]
    if changed:
        return (f"the original conv's {', '.join(changed)} changed: build a new layer "
                "(copy.deepcopy(conv) or nn.Conv2d(...)) instead of editing the one in the model")
    with torch.no_grad():
        got, error = call_safely(folded, x)
    if error:
        return f"calling the folded conv: {error}"
    problem = compare_tensors(got, expected, name="folded(x)", **OUTPUT_TOL)
    if problem and not bias and folded.bias is None:
        return "the folded conv needs a bias (beta - scale * running_mean) even when the original had none"
    if problem:
        reference = fold_batchnorm(conv, bn)
        weight_problem = compare_tensors(folded.weight.detach(), reference.weight.detach(), name="the folded weight", **OUTPUT_TOL)
        if weight_problem:
            return weight_problem + " (W' = W * gamma / sqrt(running_var + eps), one factor per output channel)"
        return problem + " (b' = (b - running_mean) * gamma / sqrt(running_var + eps) + beta)"
    return None
