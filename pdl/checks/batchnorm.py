"""Self-checks for lecture 06 (batch normalization): the forward pass and the whole layer.

Each check runs your code next to the reference in ``pdl.batchnorm`` on fresh random inputs,
prints one line (a success line, or what is wrong and a hint why) and returns True/False.

- ``check_batchnorm_forward(fn)``: ``fn(x, gamma, beta, eps=1e-5)`` is the training-mode
  forward pass for ``(N, D)`` and ``(N, C, H, W)`` inputs; outputs *and* gradients are compared.
- ``check_batchnorm_module(cls)``: a whole layer class with running statistics (registered as
  buffers), in training and in eval mode.

The third check of the lecture, ``check_fold_batchnorm`` (folding a batch norm into the conv),
is in ``pdl/checks/folding.py``; it uses the tolerance ``TOL`` defined here.

The references are computed in float64, so the only difference a correct float32 answer
shows is its own rounding. PyTorch's own functions (``F.batch_norm``, ``nn.BatchNorm2d``)
pass every check.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pdl.batchnorm import BatchNorm, _per_channel, batch_norm, batch_norm_statistics
from pdl.checks.core import NOT_ATTEMPTED, call_safely, close, compare_tensors, exercise, report

__all__ = ["check_batchnorm_forward", "check_batchnorm_module"]

# float32 keeps about 7 significant digits. Correct answers written in different ways
# (two-pass variance, torch.var_mean, the one-pass E[x^2] - E[x]^2, PyTorch's own kernels)
# stay within about 1e-5 of the exact value, relative to max(1, |value|); every mistake the
# checks look for is off by a percent or more. |got - exact| <= 1e-4 * (1 + |exact|):
TOL = {"atol": 1e-4, "rtol": 1e-4}


def _channels_input(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Random activations whose channels have different means and scales.

    The last channel spreads very little (standard deviation 0.003, a variance below eps), so
    that a missing or misplaced ``eps`` shows. It is centred at 0: a tiny spread around a
    large mean would magnify float32 rounding enough to fail correct code.
    """
    channels = shape[1]
    broadcast = (1, channels, *[1] * (len(shape) - 2))
    scale = torch.rand(channels, generator=generator) * 3 + 0.5
    shift = torch.randn(channels, generator=generator) * 2
    scale[-1], shift[-1] = 0.003, 0.0
    return torch.randn(shape, generator=generator) * scale.reshape(broadcast) + shift.reshape(
        broadcast
    )


def _closest_mistake(
    got: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float
) -> str | None:
    """Recognise the classic batch-norm mistakes by recomputing them."""
    mean, var = batch_norm_statistics(x)
    n = x.numel() // x.shape[1]

    def c(values: torch.Tensor) -> torch.Tensor:  # (C,) -> (1, C, 1, ...), to broadcast against x
        return _per_channel(values, x)

    candidates = {
        "you divided by the unbiased variance (torch.var's default divides by n - 1); "
        "normalization uses the biased one: x.var(..., correction=0) or ((x - mean) ** 2).mean(...)": batch_norm(
            x, gamma, beta, eps, mean, var * n / (n - 1)
        ),
        "eps is missing: divide by sqrt(var + eps), so a (nearly) constant channel stays finite": batch_norm(
            x, gamma, beta, 0.0, mean, var
        ),
        "eps belongs inside the square root: (x - mean) / sqrt(var + eps)": c(gamma)
        * (x - c(mean))
        / (c(var).sqrt() + eps)
        + c(beta),
        "gamma and beta are not applied: return gamma * x_hat + beta": batch_norm(
            x, None, None, eps, mean, var
        ),
        "you normalized each sample over its features (that is layer norm); batch norm takes one "
        "mean per feature/channel over the batch (dim 0, and dims 2, 3 for images)": _normalize_over(
            x, list(range(1, x.ndim)), gamma, beta, eps
        ),
    }
    if x.ndim == 4:
        candidates[
            "for (N, C, H, W) inputs each channel has ONE mean over the batch and all pixels: "
            "reduce over dims (0, 2, 3), not just 0"
        ] = _normalize_over(x, [0], gamma, beta, eps)
        candidates["reduce over dims (0, 2, 3): one statistic per channel"] = _normalize_over(
            x, [0, 1], gamma, beta, eps
        )
    for hint, wrong in candidates.items():
        if close(got, wrong, **TOL):
            return hint
    return None


def _normalize_over(
    x: torch.Tensor, dims: list[int], gamma: torch.Tensor, beta: torch.Tensor, eps: float
) -> torch.Tensor:
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
        >>> import torch.nn.functional as F
        >>> check_batchnorm_forward(lambda x, gamma, beta, eps=1e-5: F.batch_norm(x, None, None, gamma, beta, training=True, eps=eps))
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


def _check_forward_on(
    fn: Callable, shape: tuple[int, ...], generator: torch.Generator
) -> str | None:
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
    exact_inputs = [t.double().requires_grad_(True) for t in (x, gamma, beta)]
    exact = batch_norm(*exact_inputs, eps=eps)
    problem = compare_tensors(got, exact.detach().float(), name="the output", **TOL)
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
    (exact * upstream.double()).sum().backward()
    for name, mine, reference in zip(("x", "gamma", "beta"), inputs, exact_inputs, strict=True):
        if mine.grad is None:
            return f"no gradient reaches {name}: the output must be computed from it with torch operations"
        problem = compare_tensors(
            mine.grad, reference.grad.float(), name=f"the gradient with respect to {name}", **TOL
        )
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
    shape ``(C,)``, ``running_mean`` and ``running_var`` registered as buffers (so that
    ``.to()`` moves them and ``state_dict()`` saves them), PyTorch's defaults (``eps=1e-5``,
    ``momentum=0.1``), and handle ``(N, C)`` and ``(N, C, H, W)`` inputs. Checked over three
    training batches (outputs, gradients, running statistics) and then in eval mode (outputs
    from the running statistics, which must not move).

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


def _structure_problem(layer: nn.Module, channels: int) -> str | None:
    """What is wrong with the layer's parameters and buffers, before it computes anything."""
    for name, value in (("gamma (weight)", _attribute(layer, ("weight", "gamma"))),
                        ("beta (bias)", _attribute(layer, ("bias", "beta")))):  # fmt: skip
        if not isinstance(value, nn.Parameter):
            return f"{name} should be an nn.Parameter of shape ({channels},), so that the optimizer trains it"
        if value.shape != (channels,):
            return f"{name} has shape {tuple(value.shape)}, expected ({channels},): one value per channel"
    buffers, saved = dict(layer.named_buffers()), layer.state_dict()
    for name in ("running_mean", "running_var"):
        value = getattr(layer, name, None)
        if not isinstance(value, torch.Tensor):
            return (
                f"the layer needs a {name} tensor of shape ({channels},) (register it as a buffer)"
            )
        if isinstance(value, nn.Parameter):
            return (
                f"{name} is an nn.Parameter, so the optimizer would train it; it is a statistic, "
                f"not a weight: self.register_buffer('{name}', ...)"
            )
        if name not in buffers:
            return (
                f"{name} is a plain tensor attribute, not a buffer: .to(device) would leave it "
                f"behind and state_dict() would not save it. Use self.register_buffer('{name}', ...)"
            )
        if name not in saved:
            return (
                f"{name} is a buffer that state_dict() does not save (persistent=False): a checkpoint "
                "would lose the statistics the layer needs in eval mode"
            )
        if value.shape != (channels,):
            return f"{name} has shape {tuple(value.shape)}, expected ({channels},): one value per channel"
    return None


def _check_module_on(cls: type, shape: tuple[int, ...], generator: torch.Generator) -> str | None:
    channels = shape[1]
    with (
        torch.random.fork_rng()
    ):  # a layer may initialise randomly: leave the notebook's generator alone
        layer, error = call_safely(cls, channels)
    if error:
        return (
            error
            if error == NOT_ATTEMPTED
            else f"creating {getattr(cls, '__name__', cls)}({channels}) failed: {error}"
        )
    if not isinstance(layer, nn.Module):
        return f"{getattr(cls, '__name__', cls)}({channels}) should be an nn.Module, got {type(layer).__name__}"
    problem = _structure_problem(layer, channels)
    if problem:
        return problem
    gamma, beta = _attribute(layer, ("weight", "gamma")), _attribute(layer, ("bias", "beta"))

    reference = BatchNorm(channels).double()  # exact: the float64 reference
    with torch.no_grad():  # random gamma/beta, the same in both layers, so that they matter
        gamma.copy_(torch.rand(channels, generator=generator) * 1.5 + 0.5)
        beta.copy_(torch.randn(channels, generator=generator))
        reference.weight.copy_(gamma)
        reference.bias.copy_(beta)
    upstream = torch.randn(shape, generator=generator)

    layer.train()
    for batch in range(1, 4):
        x = _channels_input(shape, generator)
        previous = _running_statistics(layer)
        step_problem = _compare_step(
            layer, reference, x, upstream, (gamma, beta), f"training batch {batch}"
        )
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
            uses_batch = batch_norm(x, reference.weight.float(), reference.bias.float())
            if close(got, uses_batch, **TOL):
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
    ref_x = x.double().requires_grad_(True)
    expected = reference(ref_x)
    problem = compare_tensors(got, expected.detach().float(), name=f"{when}: the output", **TOL)
    if problem:
        if layer.training and isinstance(got, torch.Tensor):
            hint = _closest_mistake(
                got.detach(), x, params[0].detach(), params[1].detach(), reference.eps
            )
            if hint:
                return f"{when}: {hint}"
        return problem
    if not got.requires_grad:
        return f"{when}: the output is not connected to autograd (.detach(), NumPy or no_grad inside forward?)"
    _, error = call_safely(lambda: (got * upstream).sum().backward())
    if error:
        return (
            f"{when}: backward failed ({error}); are the running statistics part of the graph? "
            "Update them from detached values (under torch.no_grad())"
        )
    (expected * upstream.double()).sum().backward()
    pairs = [("x", mine_x.grad, ref_x.grad), ("gamma", params[0].grad, reference.weight.grad),
             ("beta", params[1].grad, reference.bias.grad)]  # fmt: skip
    for name, mine, ref in pairs:
        if mine is None:
            return f"{when}: no gradient reaches {name}"
        problem = compare_tensors(
            mine, ref.float(), name=f"{when}: the gradient with respect to {name}", **TOL
        )
        if problem:
            return problem
    return None


def _compare_running(layer, reference, previous, x, batch: int) -> str | None:
    when = f"after training batch {batch}"
    for name in ("running_mean", "running_var"):
        value = getattr(layer, name)
        if value.requires_grad:
            return (
                f"{when}: {name} is part of the autograd graph (it requires grad), so every batch's "
                "graph stays in memory; update it under torch.no_grad() or from detached values"
            )
        if name not in dict(layer.named_buffers()):
            return (
                f"{when}: {name} is no longer a buffer (forward replaced it with a plain attribute); "
                f"update it in place (self.{name}.mul_(...).add_(...)) or assign a tensor to the registered name"
            )
    running_mean, running_var = _running_statistics(layer)
    if torch.equal(running_mean, previous[0]) and torch.equal(running_var, previous[1]):
        return f"{when}: running_mean and running_var did not change; update them in training mode"
    expected_mean, expected_var = reference.running_mean.float(), reference.running_var.float()
    mean_problem = compare_tensors(running_mean, expected_mean, name=f"{when}: running_mean", **TOL)
    var_problem = compare_tensors(running_var, expected_var, name=f"{when}: running_var", **TOL)
    if mean_problem is None and var_problem is None:
        return None
    # Something is wrong: replay the known mistakes with this batch's statistics.
    mean, var = batch_norm_statistics(x)
    momentum = reference.momentum
    if mean_problem:
        if close(running_mean, momentum * previous[0] + (1 - momentum) * mean, **TOL):
            return (
                f"{when}: running_mean weights the batch with 1 - momentum; PyTorch's rule is "
                f"running = (1 - momentum) * running + momentum * batch_mean, with momentum = {momentum}"
            )
        return mean_problem
    if close(running_var, (1 - momentum) * previous[1] + momentum * var, **TOL):
        n = x.numel() // x.shape[1]
        return (
            f"{when}: running_var should track the *unbiased* batch variance, "
            f"var * n / (n - 1) with n = {n} values per channel (PyTorch does so)"
        )
    return var_problem
