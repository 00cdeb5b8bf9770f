"""Self-checks for lecture 00 (why frameworks exist): gradients written by hand in NumPy.

- ``check_linear_backward``: the backward pass of a linear layer.
- ``check_softmax_ce_grad``: the gradient of the softmax cross-entropy loss.

Each check calls your function on fresh inputs made with its own random generator (so the
notebook's random state is left alone), compares the answer with PyTorch's autograd in
float64 and prints one line: a success line, or the first thing that is wrong, with a hint.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pdl.checks.core import call_safely, compare_arrays, exercise, report, unpack

__all__ = ["check_linear_backward", "check_softmax_ce_grad"]


def _generator(seed: int) -> torch.Generator:
    # A private generator: the check's inputs are fresh but repeatable, and the notebook's
    # global random state (torch.manual_seed) is not disturbed by running a check.
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------
# Lecture 00: gradients by hand in NumPy
# --------------------------------------------------------------------------------------


@exercise
def check_linear_backward(linear_backward: Callable) -> bool:
    """Check ``linear_backward(x, weight, grad_out) -> (grad_x, grad_weight, grad_bias)``.

    The layer computes ``out = x @ weight.T + bias`` (``weight`` has shape (out, in), as in
    ``nn.Linear``), for a batch ``x`` of shape (N, in). Given ``grad_out`` = dLoss/dout, of
    shape (N, out), return the NumPy arrays dLoss/dx, dLoss/dweight and dLoss/dbias.
    The reference is PyTorch's autograd, in float64.

    Example:
        >>> check_linear_backward(lambda x, w, g: (g @ w, g.T @ x, g.sum(axis=0)))
        ✅ linear backward: correct
        True
    """
    title = "linear backward"
    gen = _generator(0)
    n, d_in, d_out = 5, 4, 3  # all different, so a transposed answer shows up as a wrong shape
    x = torch.randn(n, d_in, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(d_out, generator=gen, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(n, d_out, generator=gen, dtype=torch.float64)
    (x @ weight.T + bias).backward(grad_out)

    result, problem = call_safely(
        linear_backward,
        x.detach().numpy().copy(),
        weight.detach().numpy().copy(),
        grad_out.numpy().copy(),
    )
    if problem:
        return report(title, problem)
    grads, problem = unpack(result, ("grad_x", "grad_weight", "grad_bias"))
    if problem:
        return report(title, problem)
    hints = {
        "grad_x": " (dL/dx has the shape of x: grad_out @ weight)",
        "grad_weight": " (dL/dweight has the shape of weight: grad_out.T @ x)",
        "grad_bias": " (the bias is shared by every example: sum grad_out over the batch axis only, "
        "grad_out.sum(axis=0), one value per output)",
    }
    for got, expected, name in zip(grads, (x.grad, weight.grad, bias.grad), hints, strict=True):
        problem = compare_arrays(got, expected.numpy(), name)
        if problem:
            return report(
                title,
                problem + (hints[name] if "shape" in problem or "single number" in problem else ""),
            )
    return report(title, None)


def _softmax_ce_reference(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = logits.clone().requires_grad_(True)
    F.cross_entropy(logits, labels).backward()  # mean over the batch, like the lecture's loss
    return logits.grad


@exercise
def check_softmax_ce_grad(softmax_ce_grad: Callable) -> bool:
    """Check ``softmax_ce_grad(logits, labels)``: the gradient of the mean cross-entropy loss.

    ``logits`` is a float64 NumPy array of shape (N, C), ``labels`` an integer array of
    shape (N,). The loss is ``mean_i(-log softmax(logits_i)[labels_i])``, so the answer is
    ``(softmax(logits) - one_hot(labels)) / N``. The check also feeds large logits (around
    1000): a softmax that does not subtract the row maximum overflows there.

    Example:
        >>> def grad(logits, labels):
        ...     p = np.exp(logits - logits.max(axis=1, keepdims=True))
        ...     p /= p.sum(axis=1, keepdims=True)
        ...     p[np.arange(len(labels)), labels] -= 1
        ...     return p / len(labels)
        >>> check_softmax_ce_grad(grad)
        ✅ softmax cross-entropy gradient: correct
        True
    """
    title = "softmax cross-entropy gradient"
    gen = _generator(1)
    n, classes = 6, 4
    labels = torch.randint(0, classes, (n,), generator=gen)
    logits = torch.randn(n, classes, generator=gen, dtype=torch.float64) * 2
    for case, case_logits in (("", logits), (" for large logits (around 1000)", logits + 1000)):
        expected = _softmax_ce_reference(case_logits, labels).numpy()
        got, problem = call_safely(
            softmax_ce_grad, case_logits.numpy().copy(), labels.numpy().copy()
        )
        if problem:
            return report(title, problem + case)
        problem = compare_arrays(got, expected, "the gradient")
        if problem is None:
            continue
        # The hints look at the values, so only for an array of the right shape: anything
        # else (a tuple (loss, grad), a list) is already described by the problem.
        if (
            isinstance(got, np.ndarray)
            and got.shape == expected.shape
            and np.issubdtype(got.dtype, np.number)
        ):
            if not np.isfinite(got).all():
                return report(
                    title, f"got NaN or inf{case}: subtract each row's maximum before np.exp"
                )
            if np.allclose(got, expected * n):
                return report(
                    title,
                    f"{problem}; it is N = {n} times too large: the loss is a mean, divide by N",
                )
        return report(title, problem + case)
    return report(title, None)
