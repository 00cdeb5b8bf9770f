"""The self-checks of lectures 00 and 01 (pdl.checks.numpy_by_hand and pdl.checks.tensors): right answers pass, usual mistakes are named.

Each check is run on a correct solution, on the untouched stub (NotImplementedError) and on
the typical wrong solutions a student writes; the test asserts the return value and the line
the student reads.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pdl import checks
from pdl.checks import numpy_by_hand, tensors

LECTURE_00_01 = numpy_by_hand.__all__ + tensors.__all__


def run(capsys, check, fn) -> tuple[bool, str]:
    """Run ``check(fn)``; return its result and the one line it printed."""
    result = check(fn)
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1, f"a check prints exactly one line, got: {out!r}"
    return result, out


def stub(*args, **kwargs):
    raise NotImplementedError


def test_every_check_is_exported_by_pdl_checks():
    for name in LECTURE_00_01:
        assert getattr(checks, name) is getattr(
            tensors if name in tensors.__all__ else numpy_by_hand, name
        )


@pytest.mark.parametrize("name", LECTURE_00_01)
def test_the_stub_is_reported_not_raised(capsys, name):
    result, out = run(capsys, getattr(checks, name), stub)
    assert result is False
    assert out.startswith("⬜") and "not attempted yet" in out


@pytest.mark.parametrize("name", LECTURE_00_01)
def test_a_check_leaves_the_global_random_state_alone(capsys, name):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    getattr(checks, name)(stub)
    capsys.readouterr()
    assert torch.equal(torch.rand(3), expected)


# Answers no check can expect: each must be judged (one line, a failure), never crash the check.
NONSENSE = {
    "returns None": lambda *args, **kwargs: None,
    "returns a string": lambda *args, **kwargs: "an answer",
    "returns NaN": lambda *args, **kwargs: float("nan"),
    "returns a float64 tensor": lambda *args, **kwargs: torch.zeros(2, 3, dtype=torch.float64),
    "returns a NumPy scalar": lambda *args, **kwargs: np.float64(1.0),
    "returns a tuple of Nones": lambda *args, **kwargs: (None, None, None),
    "raises ValueError": lambda *args, **kwargs: (_ for _ in ()).throw(ValueError("a bug")),
    "is not callable": 42,
}


@pytest.mark.parametrize("answer", NONSENSE, ids=list(NONSENSE))
@pytest.mark.parametrize("name", LECTURE_00_01)
def test_a_nonsense_answer_is_judged_not_raised(capsys, name, answer):
    result, out = run(capsys, getattr(checks, name), NONSENSE[answer])
    assert result is False and out.startswith("❌"), out
    assert "could not judge" not in out, f"{name} crashed on an answer that {answer}: {out}"


# --- lecture 00 -----------------------------------------------------------------------


def linear_backward(x, weight, grad_out):
    return grad_out @ weight, grad_out.T @ x, grad_out.sum(axis=0)


def linear_backward_with_autograd(x, weight, grad_out):
    """PyTorch's own answer: let autograd differentiate F.linear."""
    x_t, w_t = torch.from_numpy(x).requires_grad_(), torch.from_numpy(weight).requires_grad_()
    b_t = torch.zeros(weight.shape[0], dtype=torch.float64, requires_grad=True)
    torch.nn.functional.linear(x_t, w_t, b_t).backward(torch.from_numpy(grad_out))
    return x_t.grad.numpy(), w_t.grad.numpy(), b_t.grad.numpy()


def test_linear_backward(capsys):
    assert run(capsys, checks.check_linear_backward, linear_backward) == (
        True,
        "✅ linear backward: correct",
    )
    assert run(capsys, checks.check_linear_backward, linear_backward_with_autograd)[0] is True

    # The bias gradient not summed over the batch: one row per example.
    result, out = run(capsys, checks.check_linear_backward, lambda x, w, g: (g @ w, g.T @ x, g))
    assert result is False
    assert (
        "grad_bias has shape (5, 3), expected (3,)" in out and "sum grad_out over the batch" in out
    )

    # The weight gradient transposed.
    result, out = run(
        capsys, checks.check_linear_backward, lambda x, w, g: (g @ w, x.T @ g, g.sum(axis=0))
    )
    assert result is False and "grad_weight has shape (4, 3), expected (3, 4)" in out

    # Wrong values: a sign error in grad_x.
    result, out = run(
        capsys, checks.check_linear_backward, lambda x, w, g: (-(g @ w), g.T @ x, g.sum(axis=0))
    )
    assert result is False and "grad_x is wrong at index" in out

    # Only two of the three gradients returned; and torch tensors instead of arrays.
    result, out = run(capsys, checks.check_linear_backward, lambda x, w, g: (g @ w, g.T @ x))
    assert (
        result is False
        and "return a tuple (grad_x, grad_weight, grad_bias), got tuple of length 2" in out
    )
    result, out = run(
        capsys,
        checks.check_linear_backward,
        lambda x, w, g: tuple(torch.from_numpy(a) for a in linear_backward(x, w, g)),
    )
    assert result is False and "grad_x should be a NumPy array, got Tensor" in out


def test_linear_backward_bias_summed_over_everything(capsys):
    # grad_out.sum() is a NumPy scalar (np.float64), not "not a NumPy array": say what it is.
    result, out = run(
        capsys, checks.check_linear_backward, lambda x, w, g: (g @ w, g.T @ x, g.sum())
    )
    assert result is False
    assert "grad_bias is a single number, expected an array of shape (3,)" in out
    assert "grad_out.sum(axis=0)" in out and "not a NumPy array" not in out


def test_linear_backward_in_float32_passes(capsys):
    # Right formulas, rounded to float32: within the tolerance, because the formula is what is judged.
    def in_float32(x, w, g):
        return tuple(a.astype(np.float32) for a in linear_backward(x, w, g))

    assert run(capsys, checks.check_linear_backward, in_float32)[0] is True


def softmax_ce_grad(logits, labels):
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1
    return p / len(labels)


def softmax_ce_grad_with_autograd(logits, labels):
    """PyTorch's own answer: the gradient of F.cross_entropy, by autograd."""
    logits_t = torch.from_numpy(logits).requires_grad_()
    torch.nn.functional.cross_entropy(logits_t, torch.from_numpy(labels)).backward()
    return logits_t.grad.numpy()


def test_softmax_ce_grad(capsys):
    assert run(capsys, checks.check_softmax_ce_grad, softmax_ce_grad) == (
        True,
        "✅ softmax cross-entropy gradient: correct",
    )
    assert run(capsys, checks.check_softmax_ce_grad, softmax_ce_grad_with_autograd)[0] is True

    def not_averaged(logits, labels):
        return softmax_ce_grad(logits, labels) * len(labels)

    result, out = run(capsys, checks.check_softmax_ce_grad, not_averaged)
    assert result is False and "N = 6 times too large" in out and "divide by N" in out

    def unstable(logits, labels):  # right formula, but exp(1000) overflows
        with np.errstate(over="ignore", invalid="ignore"):
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(labels)), labels] -= 1
        return p / len(labels)

    result, out = run(capsys, checks.check_softmax_ce_grad, unstable)
    assert result is False and "large logits" in out and "subtract each row's maximum" in out

    def no_one_hot(logits, labels):  # forgot the "- one_hot(labels)"
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True) / len(labels)

    result, out = run(capsys, checks.check_softmax_ce_grad, no_one_hot)
    assert result is False and "the gradient is wrong at index" in out


def test_softmax_ce_grad_reports_answers_that_are_not_arrays_of_numbers(capsys):
    # Returning (loss, grad) used to crash the check while it looked for a hint.
    def loss_and_grad(logits, labels):
        return 0.5, softmax_ce_grad(logits, labels)

    result, out = run(capsys, checks.check_softmax_ce_grad, loss_and_grad)
    assert result is False and "the gradient should be a NumPy array, got tuple" in out

    result, out = run(
        capsys, checks.check_softmax_ce_grad, lambda logits, labels: np.full(logits.shape, None)
    )
    assert result is False and "the gradient should be an array of numbers, got dtype object" in out


# --- lecture 01 -----------------------------------------------------------------------


def test_arange_matrix(capsys):
    good = lambda r, c: torch.arange(r * c, dtype=torch.float32).reshape(r, c)  # noqa: E731
    assert run(capsys, checks.check_arange_matrix, good) == (True, "✅ arange matrix: correct")

    result, out = run(
        capsys, checks.check_arange_matrix, lambda r, c: torch.arange(r * c).reshape(r, c)
    )
    assert (
        result is False
        and "dtype torch.int64, expected torch.float32" in out
        and "dtype=torch.float32" in out
    )

    # Column by column instead of row by row.
    result, out = run(capsys, checks.check_arange_matrix, lambda r, c: good(c, r).T)
    assert (
        result is False
        and "wrong at index (0, 1): got 3, expected 1" in out
        and "rows=3, cols=4" in out
    )

    result, out = run(capsys, checks.check_arange_matrix, lambda r, c: good(c, r))
    assert result is False and "shape (4, 3), expected (3, 4)" in out


def test_channels_last(capsys):
    assert run(capsys, checks.check_channels_last, lambda x: x.permute(0, 2, 3, 1)) == (
        True,
        "✅ channels last: correct",
    )
    assert (
        run(capsys, checks.check_channels_last, lambda x: x.movedim(1, -1))[0] is True
    )  # PyTorch's own
    # Swapping C and W moves two axes at once.
    result, out = run(capsys, checks.check_channels_last, lambda x: x.transpose(1, 3))
    assert result is False and "shape (2, 5, 4, 3), expected (2, 4, 5, 3)" in out
    # A non-contiguous answer is fine; so is a contiguous copy.
    assert (
        run(capsys, checks.check_channels_last, lambda x: x.permute(0, 2, 3, 1).contiguous())[0]
        is True
    )

    n_h_w_c = lambda x: x.reshape(x.shape[0], x.shape[2], x.shape[3], x.shape[1])  # noqa: E731
    result, out = run(capsys, checks.check_channels_last, n_h_w_c)
    assert result is False and "is wrong at index" in out and "use permute" in out

    result, out = run(capsys, checks.check_channels_last, lambda x: x.permute(0, 3, 2, 1))
    assert result is False and "shape (2, 5, 4, 3), expected (2, 4, 5, 3)" in out


def test_replace_below(capsys):
    good = lambda x, t, v: torch.where(x < t, torch.full_like(x, v), x)  # noqa: E731
    assert run(capsys, checks.check_replace_below, good) == (True, "✅ replace below: correct")

    def clone_then_mask(x, t, v):
        y = x.clone()
        y[y < t] = v
        return y

    assert run(capsys, checks.check_replace_below, clone_then_mask)[0] is True

    def in_place(x, t, v):
        x[x < t] = v
        return x

    result, out = run(capsys, checks.check_replace_below, in_place)
    assert result is False and "changed its input x" in out

    result, out = run(
        capsys,
        checks.check_replace_below,
        lambda x, t, v: torch.where(x > t, torch.full_like(x, v), x),
    )
    assert result is False and "is wrong at index" in out

    # Only the entries that are kept: boolean indexing flattens.
    result, out = run(capsys, checks.check_replace_below, lambda x, t, v: x[x >= t])
    assert result is False and "expected (4, 5)" in out

    # A Python scalar in torch.where is fine: the result stays float32.
    assert (
        run(capsys, checks.check_replace_below, lambda x, t, v: torch.where(x < t, v, x))[0] is True
    )


def test_replace_below_is_strict(capsys):
    # The check's input holds entries equal to the threshold: `<=` replaces them, `<` keeps them.
    less_or_equal = lambda x, t, v: torch.where(x <= t, torch.full_like(x, v), x)  # noqa: E731
    result, out = run(capsys, checks.check_replace_below, less_or_equal)
    assert result is False and "got -1, expected 0.25" in out and "strictly below" in out


def test_replace_below_float64_gets_a_dtype_hint(capsys):
    # A float64 result with the right values: the hint is about the dtype, not about `<`.
    as_double = lambda x, t, v: torch.where(x < t, torch.full_like(x, v), x).double()  # noqa: E731
    result, out = run(capsys, checks.check_replace_below, as_double)
    assert result is False and "dtype torch.float64, expected torch.float32" in out
    assert "the values are right" in out and "strictly" not in out

    def float64_constant(x, t, v):
        return torch.where(x < t, torch.tensor(v, dtype=torch.float64), x.double())

    result, out = run(capsys, checks.check_replace_below, float64_constant)
    assert result is False and "keep x's dtype" in out


def test_standardize_columns(capsys):
    good = lambda x: (x - x.mean(dim=0)) / x.std(dim=0)  # noqa: E731
    assert run(capsys, checks.check_standardize_columns, good) == (
        True,
        "✅ standardize columns: correct",
    )
    keepdim = lambda x: (x - x.mean(dim=0, keepdim=True)) / x.std(dim=0, keepdim=True)  # noqa: E731
    assert run(capsys, checks.check_standardize_columns, keepdim)[0] is True

    result, out = run(capsys, checks.check_standardize_columns, lambda x: (x - x.mean()) / x.std())
    assert result is False and "reduce over dim=0" in out

    population = lambda x: (x - x.mean(dim=0)) / x.std(dim=0, correction=0)  # noqa: E731
    result, out = run(capsys, checks.check_standardize_columns, population)
    assert result is False and "population std" in out

    # Rows instead of columns: (6, 3) minus (6,) does not broadcast.
    result, out = run(
        capsys, checks.check_standardize_columns, lambda x: (x - x.mean(dim=1)) / x.std(dim=1)
    )
    assert result is False and "your code raised RuntimeError" in out and "reduce over dim=0" in out

    # Each column's mean, but one std for the whole matrix.
    result, out = run(
        capsys, checks.check_standardize_columns, lambda x: (x - x.mean(dim=0)) / x.std()
    )
    assert result is False and "the column means are right" in out and "x.std(dim=0)" in out

    # NumPy's default std is the population one (ddof=0): the hint names both conventions.
    def with_numpy(x):
        a = x.numpy()
        return torch.from_numpy(((a - a.mean(axis=0)) / a.std(axis=0)).astype(np.float32))

    result, out = run(capsys, checks.check_standardize_columns, with_numpy)
    assert result is False and "population std" in out and "ddof=0" in out


def test_standardize_columns_in_float64_is_judged_not_crashed(capsys):
    # The issue: a float64 answer made the check itself raise "Double did not match Float".
    double = lambda x: (x.double() - x.double().mean(dim=0)) / x.double().std(dim=0)  # noqa: E731
    result, out = run(capsys, checks.check_standardize_columns, double)
    assert result is False and "could not judge" not in out
    assert "dtype torch.float64, expected torch.float32" in out and "the values are right" in out

    def population_double(x):
        return (x.double() - x.double().mean(dim=0)) / x.double().std(dim=0, correction=0)  # noqa: E731

    result, out = run(capsys, checks.check_standardize_columns, population_double)
    assert result is False and "could not judge" not in out and "dtype torch.float64" in out


def test_accuracy_from_logits(capsys):
    good = lambda z, y: (z.argmax(dim=1) == y).float().mean()  # noqa: E731
    assert run(capsys, checks.check_accuracy_from_logits, good) == (
        True,
        "✅ accuracy from logits: correct",
    )
    from torchmetrics.functional import accuracy as torchmetrics_accuracy

    library = lambda z, y: torchmetrics_accuracy(z, y, task="multiclass", num_classes=z.shape[1])  # noqa: E731
    assert run(capsys, checks.check_accuracy_from_logits, library)[0] is True
    as_float = lambda z, y: (z.argmax(dim=1) == y).float().mean().item()  # noqa: E731
    assert run(capsys, checks.check_accuracy_from_logits, as_float)[0] is True

    result, out = run(
        capsys, checks.check_accuracy_from_logits, lambda z, y: (z.argmax(dim=1) == y).sum()
    )
    assert result is False and "got 5, expected 0.5" in out and "divide by N" in out

    # Forgot to reduce: one value per example.
    result, out = run(
        capsys, checks.check_accuracy_from_logits, lambda z, y: (z.argmax(dim=1) == y).float()
    )
    assert result is False and "a tensor of shape (10,)" in out

    # The argmax over the wrong axis (over the batch, for each class) compares the wrong things.
    result, out = run(
        capsys,
        checks.check_accuracy_from_logits,
        lambda z, y: (z.argmax(dim=0) == y).float().mean(),
    )
    assert result is False and "your code raised RuntimeError" in out

    # A boolean tensor has no mean: the error is reported, not raised.
    result, out = run(
        capsys, checks.check_accuracy_from_logits, lambda z, y: (z.argmax(dim=1) == y).mean()
    )
    assert result is False and "your code raised RuntimeError" in out and ".float() first" in out


def test_accuracy_from_logits_refuses_a_bool(capsys):
    # True is not the number 1 here: a comparison returned where a fraction belongs.
    result, out = run(capsys, checks.check_accuracy_from_logits, lambda z, y: True)
    assert result is False and "expected a number, got bool" in out


def test_linear_matmul(capsys):
    assert run(capsys, checks.check_linear_matmul, lambda x, w, b: x @ w.T + b) == (
        True,
        "✅ linear with matmul: correct",
    )
    assert (
        run(
            capsys, checks.check_linear_matmul, lambda x, w, b: torch.nn.functional.linear(x, w, b)
        )[0]
        is True
    )

    result, out = run(capsys, checks.check_linear_matmul, lambda x, w, b: x @ w + b)
    assert result is False and "shapes cannot be multiplied" in out and "weight.T" in out

    result, out = run(capsys, checks.check_linear_matmul, lambda x, w, b: x @ w.T)
    assert result is False and "is wrong at index" in out

    # Element-wise * instead of @: a broadcasting error.
    result, out = run(capsys, checks.check_linear_matmul, lambda x, w, b: x * w + b)
    assert result is False and "your code raised RuntimeError" in out


def test_scale_inplace(capsys):
    assert run(capsys, checks.check_scale_inplace, lambda x, f: x.mul_(f)) == (
        True,
        "✅ scale in place: correct",
    )

    def times_equals(x, f):
        x *= f
        return x

    assert run(capsys, checks.check_scale_inplace, times_equals)[0] is True

    def rebinds(x, f):
        x = x * f  # a new tensor, bound to the local name x; the caller's x is unchanged
        return x

    result, out = run(capsys, checks.check_scale_inplace, rebinds)
    assert result is False and "x was not changed" in out and "mul_" in out

    def returns_nothing(x, f):
        x.mul_(f)

    result, out = run(capsys, checks.check_scale_inplace, returns_nothing)
    assert result is False and "return x itself" in out

    result, out = run(capsys, checks.check_scale_inplace, lambda x, f: x.add_(f))
    assert result is False and "x after the call is wrong at index" in out


def test_shares_memory(capsys):
    assert run(capsys, checks.check_shares_memory, lambda t: t.numpy()) == (
        True,
        "✅ shares memory: correct",
    )
    assert run(capsys, checks.check_shares_memory, lambda t: np.asarray(t.numpy()))[0] is True

    result, out = run(capsys, checks.check_shares_memory, lambda t: t.numpy().copy())
    assert result is False and "the array is a copy" in out

    result, out = run(capsys, checks.check_shares_memory, lambda t: t.tolist())
    assert result is False and "should be a NumPy array, got list" in out

    result, out = run(capsys, checks.check_shares_memory, lambda t: t)
    assert result is False and "should be a NumPy array, got Tensor" in out


def test_shares_memory_reports_a_reversed_view(capsys):
    # A view with negative strides: torch.from_numpy refuses it, the check must not crash.
    result, out = run(capsys, checks.check_shares_memory, lambda t: t.numpy()[::-1])
    assert result is False and "the array is wrong at index (0, 0)" in out


def test_zeros_like_device(capsys):
    good = lambda x, shape: torch.zeros(shape, dtype=x.dtype, device=x.device)  # noqa: E731
    assert run(capsys, checks.check_zeros_like_device, good) == (
        True,
        "✅ zeros on the same device: correct",
    )
    assert (
        run(capsys, checks.check_zeros_like_device, lambda x, shape: x.new_zeros(shape))[0] is True
    )

    result, out = run(
        capsys, checks.check_zeros_like_device, lambda x, shape: torch.zeros(shape, dtype=x.dtype)
    )
    assert result is False and "on cpu, but x is on meta" in out and "device=x.device" in out

    result, out = run(
        capsys, checks.check_zeros_like_device, lambda x, shape: torch.zeros(shape, device=x.device)
    )
    assert result is False and "dtype torch.float32, but x has torch.float64" in out

    # zeros_like copies x's shape, not the requested one.
    result, out = run(capsys, checks.check_zeros_like_device, lambda x, shape: torch.zeros_like(x))
    assert result is False and "shape (4,), expected (2, 3)" in out


def xyz_gradients_with_autograd(x, y, z):
    """PyTorch's own answer: autograd on c = sum(x * y + z)."""
    x_t, y_t, z_t = (torch.from_numpy(a).requires_grad_() for a in (x, y, z))
    (x_t * y_t + z_t).sum().backward()
    return x_t.grad.numpy(), y_t.grad.numpy(), z_t.grad.numpy()


def test_xyz_gradients(capsys):
    good = lambda x, y, z: (y, x, np.ones_like(z))  # noqa: E731
    assert run(capsys, checks.check_xyz_gradients, good) == (
        True,
        "✅ gradients of c = sum(x * y + z): correct",
    )
    assert run(capsys, checks.check_xyz_gradients, xyz_gradients_with_autograd)[0] is True

    result, out = run(capsys, checks.check_xyz_gradients, lambda x, y, z: (x, y, np.ones_like(z)))
    assert result is False and "grad_x is wrong at index" in out and "dc/dx = y" in out

    result, out = run(capsys, checks.check_xyz_gradients, lambda x, y, z: (y, x, 1.0))
    assert result is False and "grad_z is a single number" in out and "np.ones_like(z)" in out

    result, out = run(capsys, checks.check_xyz_gradients, lambda x, y, z: (y, x, z))
    assert result is False and "grad_z is wrong at index" in out

    result, out = run(capsys, checks.check_xyz_gradients, lambda x, y, z: y)
    assert result is False and "return a tuple (grad_x, grad_y, grad_z), got ndarray" in out
