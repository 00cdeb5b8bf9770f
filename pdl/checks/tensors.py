"""Self-checks for lecture 01 (tensors); lecture 00's NumPy checks are in ``pdl.checks.numpy_by_hand``.

Each check calls your function on fresh inputs that it makes itself (with its own random
generator, so your notebook's random state is left alone), compares the answer with a
reference and prints one line: a success line, or the first thing that is wrong, with a
hint for the usual mistakes. It returns True or False and never raises because of your code.

- ``check_arange_matrix`` (creation, dtype), ``check_channels_last`` (shapes and views),
  ``check_replace_below`` (indexing and masking), ``check_standardize_columns``
  (broadcasting), ``check_accuracy_from_logits`` (reductions), ``check_linear_matmul``
  (matmul), ``check_scale_inplace`` (in-place operations), ``check_shares_memory`` (NumPy
  interop), ``check_zeros_like_device`` (devices), ``check_xyz_gradients`` (the
  ``c = sum(x * y + z)`` example).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from pdl.checks.core import (
    as_number,
    call_safely,
    close,
    compare_arrays,
    compare_tensors,
    exercise,
    report,
    unpack,
)

__all__ = [
    "check_accuracy_from_logits",
    "check_arange_matrix",
    "check_channels_last",
    "check_linear_matmul",
    "check_replace_below",
    "check_scale_inplace",
    "check_shares_memory",
    "check_standardize_columns",
    "check_xyz_gradients",
    "check_zeros_like_device",
]


def _generator(seed: int) -> torch.Generator:
    # A private generator: the check's inputs are fresh but repeatable, and the notebook's
    # global random state (torch.manual_seed) is not disturbed by running a check.
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------
# Lecture 01: tensors
# --------------------------------------------------------------------------------------


@exercise
def check_arange_matrix(arange_matrix: Callable) -> bool:
    """Check ``arange_matrix(rows, cols)``: a float32 (rows, cols) tensor holding 0, 1, 2, ... row by row.

    Example:
        >>> check_arange_matrix(lambda r, c: torch.arange(r * c, dtype=torch.float32).reshape(r, c))
        ✅ arange matrix: correct
        True
        >>> check_arange_matrix(lambda r, c: torch.arange(r * c).reshape(r, c))
        ❌ arange matrix: result has dtype torch.int64, expected torch.float32 (torch.arange of integers gives int64: pass dtype=torch.float32)
        False
    """
    title = "arange matrix"
    for rows, cols in ((3, 4), (2, 5)):
        expected = torch.arange(rows * cols, dtype=torch.float32).reshape(rows, cols)
        got, problem = call_safely(arange_matrix, rows, cols)
        if problem:
            return report(title, problem)
        problem = compare_tensors(got, expected)
        if problem and "dtype torch.int64" in problem:
            return report(
                title, problem + " (torch.arange of integers gives int64: pass dtype=torch.float32)"
            )
        if problem:
            return report(title, f"{problem} (for rows={rows}, cols={cols})")
    return report(title, None)


@exercise
def check_channels_last(channels_last: Callable) -> bool:
    """Check ``channels_last(images)``: (N, C, H, W) images rearranged to (N, H, W, C).

    Pixel ``images[n, c, h, w]`` must end up at ``result[n, h, w, c]``.

    Example:
        >>> check_channels_last(lambda x: x.permute(0, 2, 3, 1))
        ✅ channels last: correct
        True
        >>> check_channels_last(lambda x: x.reshape(x.shape[0], x.shape[2], x.shape[3], x.shape[1]))  # doctest: +ELLIPSIS
        ❌ channels last: result is wrong at index ... reshape keeps the order of the numbers in memory; to move an axis use permute
        False
    """
    title = "channels last"
    images = torch.randn(2, 3, 4, 5, generator=_generator(2))
    got, problem = call_safely(channels_last, images.clone())
    problem = problem or compare_tensors(got, images.permute(0, 2, 3, 1))
    if problem and "is wrong at" in problem:
        problem += ": reshape keeps the order of the numbers in memory; to move an axis use permute"
    return report(title, problem)


def _dtype_hint(got: torch.Tensor, expected: torch.Tensor, *, name: str = "the result") -> str:
    """For an answer of the wrong dtype: say whether its values are right, and how to keep the input's dtype."""
    values = "the values are right, but " if close(got, expected, atol=1e-5, rtol=1e-4) else ""
    return (
        f" ({values}{name} should keep x's dtype, {expected.dtype}: a .double(), a NumPy round trip "
        f"or a float64 constant such as torch.tensor(value, dtype=torch.float64) changed it)"
    )


@exercise
def check_replace_below(replace_below: Callable) -> bool:
    """Check ``replace_below(x, threshold, value)``: a new tensor with entries < threshold set to value.

    Entries equal to the threshold are not below it: they stay. The input ``x`` must stay
    unchanged (the function returns a new tensor), and the result keeps ``x``'s dtype.

    Example:
        >>> check_replace_below(lambda x, t, v: torch.where(x < t, torch.full_like(x, v), x))
        ✅ replace below: correct
        True
        >>> def in_place(x, t, v):
        ...     x[x < t] = v
        ...     return x
        >>> check_replace_below(in_place)  # doctest: +ELLIPSIS
        ❌ replace below: your function changed its input x...
        False
        >>> check_replace_below(lambda x, t, v: torch.where(x <= t, torch.full_like(x, v), x))  # doctest: +ELLIPSIS
        ❌ replace below: result is wrong at index (0, 0): got -1, expected 0.25 ... strictly below)
        False
    """
    title = "replace below"
    x = torch.randn(4, 5, generator=_generator(3))
    threshold, value = 0.25, -1.0
    x[0, :2] = threshold  # entries exactly at the threshold: `<=` instead of `<` must show
    expected = torch.where(x < threshold, torch.full_like(x, value), x)
    given = x.clone()
    got, problem = call_safely(replace_below, given, threshold, value)
    if problem:
        return report(title, problem)
    if not torch.equal(given, x):
        return report(
            title,
            "your function changed its input x; clone it first (x.clone()) or use torch.where",
        )
    problem = compare_tensors(got, expected)
    if problem and isinstance(got, torch.Tensor) and got.shape == expected.shape:
        if got.dtype != expected.dtype:
            problem += _dtype_hint(got, expected)
        elif torch.equal(got, torch.where(x <= threshold, torch.full_like(x, value), x)):
            problem += " (entries equal to the threshold are not below it: use x < threshold, strictly below)"
    return report(title, problem)


@exercise
def check_standardize_columns(standardize_columns: Callable) -> bool:
    """Check ``standardize_columns(x)``: each column (feature) of (N, D) ``x`` shifted to mean 0 and scaled to std 1.

    The statistics are per column, over the N rows: ``(x - x.mean(dim=0)) / x.std(dim=0)``.
    ``x.std`` with PyTorch's default, ``correction=1``: the sample standard deviation, which
    divides by N - 1. (NumPy's ``np.std`` defaults to ``ddof=0``, dividing by N: a different
    number.) The result keeps ``x``'s dtype, float32.

    Example:
        >>> check_standardize_columns(lambda x: (x - x.mean(dim=0)) / x.std(dim=0))
        ✅ standardize columns: correct
        True
        >>> check_standardize_columns(lambda x: (x - x.mean()) / x.std())  # doctest: +ELLIPSIS
        ❌ standardize columns: ... (each column needs its own mean and std: reduce over dim=0, the rows)
        False
    """
    title = "standardize columns"
    gen = _generator(4)
    # Columns on very different scales, like real features (age in years, income in euros).
    x = torch.randn(6, 3, generator=gen) * torch.tensor([1.0, 10.0, 100.0]) + torch.tensor(
        [0.0, 5.0, -50.0]
    )
    expected = (x - x.mean(dim=0)) / x.std(dim=0)
    got, problem = call_safely(standardize_columns, x.clone())
    problem = problem or compare_tensors(got, expected, atol=1e-5, rtol=1e-4)
    if problem and isinstance(got, torch.Tensor) and got.shape == expected.shape:
        # close() compares in float64, so these hints work for an answer of any dtype.
        population = (x - x.mean(dim=0)) / x.std(dim=0, correction=0)
        column_means = got.detach().double().mean(dim=0)
        if got.dtype != expected.dtype:
            problem += _dtype_hint(got, expected)
        elif close(got, population, atol=1e-5):
            problem += (
                " (that is the population std, correction=0, NumPy's default ddof=0: "
                "use PyTorch's default x.std(dim=0), correction=1)"
            )
        elif not close(column_means, torch.zeros(3), atol=1e-4):
            problem += " (each column needs its own mean and std: reduce over dim=0, the rows)"
        else:
            problem += (
                " (the column means are right: divide by each column's own std, x.std(dim=0))"
            )
    elif problem and ("shape" in problem or "size of tensor" in problem):
        problem += " (reduce over dim=0: one mean and one std per column, shape (D,), broadcast over the N rows)"
    return report(title, problem)


@exercise
def check_accuracy_from_logits(accuracy: Callable) -> bool:
    """Check ``accuracy(logits, labels)``: the fraction of rows whose largest logit is at the label.

    ``logits`` has shape (N, C), ``labels`` shape (N,); the answer is a number in [0, 1]
    (a Python float or a 0-d tensor).

    Example:
        >>> check_accuracy_from_logits(lambda z, y: (z.argmax(dim=1) == y).float().mean())
        ✅ accuracy from logits: correct
        True
        >>> check_accuracy_from_logits(lambda z, y: (z.argmax(dim=1) == y).sum())
        ❌ accuracy from logits: got 5, expected 0.5 (that is the number of correct predictions: divide by N for the fraction)
        False
    """
    title = "accuracy from logits"
    gen = _generator(5)
    n, classes = 10, 4
    logits = torch.randn(n, classes, generator=gen)
    labels = logits.argmax(dim=1)
    labels[: n // 2] = (labels[: n // 2] + 1) % classes  # exactly half of the predictions are right
    expected = 0.5
    got, problem = call_safely(accuracy, logits.clone(), labels.clone())
    if problem and "Bool" in problem:
        problem += " (a boolean tensor has no mean: convert it with .float() first)"
    if problem:
        return report(title, problem)
    if isinstance(got, torch.Tensor) and got.numel() != 1:
        return report(
            title,
            f"expected a single number, got a tensor of shape {tuple(got.shape)} (reduce with .mean())",
        )
    value = as_number(got)
    if value is None:
        return report(title, f"expected a number, got {type(got).__name__}")
    if abs(value - expected) < 1e-6:
        return report(title, None)
    problem = f"got {value:.4g}, expected {expected}"
    if abs(value - expected * n) < 1e-6:
        problem += " (that is the number of correct predictions: divide by N for the fraction)"
    return report(title, problem)


@exercise
def check_linear_matmul(linear: Callable) -> bool:
    """Check ``linear(x, weight, bias)``: ``x @ weight.T + bias``, what ``nn.Linear`` computes.

    Shapes: ``x`` (N, in), ``weight`` (out, in), ``bias`` (out,); the result is (N, out).

    Example:
        >>> check_linear_matmul(lambda x, w, b: x @ w.T + b)
        ✅ linear with matmul: correct
        True
        >>> check_linear_matmul(lambda x, w, b: x @ w + b)  # doctest: +ELLIPSIS
        ❌ linear with matmul: your code raised RuntimeError: mat1 and mat2 shapes cannot be multiplied ...
        False
    """
    title = "linear with matmul"
    gen = _generator(6)
    x, weight, bias = (
        torch.randn(4, 5, generator=gen),
        torch.randn(3, 5, generator=gen),
        torch.randn(3, generator=gen),
    )
    got, problem = call_safely(linear, x.clone(), weight.clone(), bias.clone())
    if problem and "shapes cannot be multiplied" in problem:
        problem += " (weight is (out, in): multiply by its transpose, weight.T)"
    problem = problem or compare_tensors(got, x @ weight.T + bias, atol=1e-5)
    return report(title, problem)


@exercise
def check_scale_inplace(scale_: Callable) -> bool:
    """Check ``scale_(x, factor)``: multiplies ``x`` by ``factor`` in place and returns ``x`` itself.

    Example:
        >>> check_scale_inplace(lambda x, f: x.mul_(f))
        ✅ scale in place: correct
        True
        >>> check_scale_inplace(lambda x, f: x * f)  # doctest: +ELLIPSIS
        ❌ scale in place: x was not changed...
        False
    """
    title = "scale in place"
    original = torch.randn(3, 4, generator=_generator(7))
    factor = 2.5
    x = original.clone()
    got, problem = call_safely(scale_, x, factor)
    if problem:
        return report(title, problem)
    if torch.equal(x, original):
        return report(
            title,
            "x was not changed: x * factor and x = x * factor make a new tensor; use x.mul_(factor) or x *= factor",
        )
    problem = compare_tensors(x, original * factor, name="x after the call")
    if problem:
        return report(title, problem)
    if not isinstance(got, torch.Tensor) or got.data_ptr() != x.data_ptr():
        return report(
            title,
            "x is right, but return x itself (in-place methods like mul_ return their tensor)",
        )
    return report(title, None)


@exercise
def check_shares_memory(to_numpy: Callable) -> bool:
    """Check ``to_numpy(t)``: a NumPy array that shares memory with the CPU tensor ``t`` (no copy).

    Example:
        >>> check_shares_memory(lambda t: t.numpy())
        ✅ shares memory: correct
        True
        >>> check_shares_memory(lambda t: t.numpy().copy())
        ❌ shares memory: the values are right but the array is a copy: a change to the tensor does not show in it (np.array(t) and .copy() copy; t.numpy() shares)
        False
    """
    title = "shares memory"
    tensor = torch.randn(2, 3, generator=_generator(8))
    expected = tensor.numpy().copy()
    got, problem = call_safely(to_numpy, tensor)
    if problem:
        return report(title, problem)
    problem = compare_arrays(got, expected, "the array", atol=0.0)
    if problem:
        return report(title, problem)
    tensor.add_(1.0)  # change the tensor in place: an array sharing its memory sees the change
    if not np.allclose(got, expected + 1.0):
        return report(
            title,
            "the values are right but the array is a copy: a change to the tensor does not show in it "
            "(np.array(t) and .copy() copy; t.numpy() shares)",
        )
    return report(title, None)


@exercise
def check_zeros_like_device(zeros_on_same_device: Callable) -> bool:
    """Check ``zeros_on_same_device(x, shape)``: zeros of ``shape`` with ``x``'s dtype and device.

    To test the device without a GPU, the check also passes a tensor on PyTorch's "meta"
    device (a device that stores shapes only), standing in for a GPU.

    Example:
        >>> check_zeros_like_device(lambda x, shape: torch.zeros(shape, dtype=x.dtype, device=x.device))
        ✅ zeros on the same device: correct
        True
        >>> check_zeros_like_device(lambda x, shape: torch.zeros(shape, dtype=x.dtype))  # doctest: +ELLIPSIS
        ❌ zeros on the same device: the result is on cpu, but x is on meta...
        False
    """
    title = "zeros on the same device"
    shape = (2, 3)
    for x in (
        torch.ones(4, dtype=torch.float64),
        torch.ones(4, dtype=torch.int16),
        torch.empty(4, device="meta"),
    ):
        got, problem = call_safely(zeros_on_same_device, x, shape)
        if problem:
            return report(title, problem)
        if not isinstance(got, torch.Tensor):
            return report(title, f"expected a torch.Tensor, got {type(got).__name__}")
        if got.device != x.device:
            return report(
                title,
                f"the result is on {got.device}, but x is on {x.device} (the check's stand-in for a GPU): "
                "pass device=x.device",
            )
        if got.dtype != x.dtype:
            return report(
                title, f"the result has dtype {got.dtype}, but x has {x.dtype}: pass dtype=x.dtype"
            )
        if x.device.type == "meta":  # a meta tensor has no values to compare
            problem = (
                None
                if tuple(got.shape) == shape
                else f"result has shape {tuple(got.shape)}, expected {shape}"
            )
        else:
            problem = compare_tensors(got, torch.zeros(shape, dtype=x.dtype))
        if problem:
            return report(title, problem)
    return report(title, None)


@exercise
def check_xyz_gradients(xyz_gradients: Callable) -> bool:
    """Check ``xyz_gradients(x, y, z) -> (grad_x, grad_y, grad_z)`` for ``c = sum(x * y + z)``, by hand in NumPy.

    ``x``, ``y``, ``z`` are float64 NumPy arrays of the same shape; return dc/dx, dc/dy,
    dc/dz as NumPy arrays of that shape. The reference is PyTorch's autograd.

    Example:
        >>> check_xyz_gradients(lambda x, y, z: (y.copy(), x.copy(), np.ones_like(z)))
        ✅ gradients of c = sum(x * y + z): correct
        True
        >>> check_xyz_gradients(lambda x, y, z: (x, y, np.ones_like(z)))  # doctest: +ELLIPSIS
        ❌ gradients of c = sum(x * y + z): grad_x is wrong at index ...
        False
    """
    title = "gradients of c = sum(x * y + z)"
    gen = _generator(9)
    x, y, z = (
        torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3)
    )
    (x * y + z).sum().backward()
    got, problem = call_safely(xyz_gradients, *(t.detach().numpy().copy() for t in (x, y, z)))
    if problem:
        return report(title, problem)
    grads, problem = unpack(got, ("grad_x", "grad_y", "grad_z"))
    if problem:
        return report(title, problem)
    hints = {
        "grad_x": " (dc/dx = y)",
        "grad_y": " (dc/dy = x)",
        "grad_z": " (one per element of z: np.ones_like(z))",
    }
    for got_grad, expected, name in zip(grads, (x.grad, y.grad, z.grad), hints, strict=True):
        if name == "grad_z" and np.ndim(got_grad) == 0 and not isinstance(got_grad, np.ndarray):
            return report(
                title,
                "grad_z is a single number; it needs one value per element of z: np.ones_like(z)",
            )
        problem = compare_arrays(got_grad, expected.numpy(), name)
        if problem:
            return report(
                title,
                problem + (hints[name] if "wrong at" in problem or "shape" in problem else ""),
            )
    return report(title, None)
