"""The building blocks every self-check uses: compare, call safely, report.

A check never crashes on a student's mistake. It calls the student's code, compares the
result with a reference on fresh inputs, prints one line (a success line, or what is wrong
and what was expected) and returns True or False, so a notebook cell can also ``assert`` it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

PASS = "\u2705"  # a green tick
FAIL = "\u274c"  # a red cross


def report(title: str, problem: str | None) -> bool:
    """Print the outcome of check ``title`` and return True when there is no ``problem``.

    Example:
        >>> report("matmul", None)
        ✅ matmul: correct
        True
        >>> report("matmul", "shape (2, 3), expected (3, 2)")
        ❌ matmul: shape (2, 3), expected (3, 2)
        False
    """
    if problem is None:
        print(f"{PASS} {title}: correct")
        return True
    print(f"{FAIL} {title}: {problem}")
    return False


def call_safely(fn: Callable, *args: Any, **kwargs: Any) -> tuple[Any, str | None]:
    """Call the student's ``fn``; return ``(result, None)`` or ``(None, "your code raised ...")``.

    Example:
        >>> call_safely(lambda x: 1 / x, 0)
        (None, 'your code raised ZeroDivisionError: division by zero')
    """
    if not callable(fn):
        return None, f"expected a function, got {type(fn).__name__}"
    try:
        return fn(*args, **kwargs), None
    except NotImplementedError:
        return None, "not implemented yet (the stub still raises NotImplementedError)"
    except Exception as error:  # the student's error, reported instead of raised
        return None, f"your code raised {type(error).__name__}: {error}"


def compare_tensors(
    got: Any,
    expected: torch.Tensor,
    *,
    name: str = "result",
    atol: float = 1e-6,
    rtol: float = 1e-5,
) -> str | None:
    """Describe the first way ``got`` differs from ``expected`` (type, shape, dtype, values), or None.

    Example:
        >>> compare_tensors(torch.zeros(2, 3), torch.zeros(3, 2))
        'result has shape (2, 3), expected (3, 2)'
        >>> compare_tensors(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]))
        'result is wrong at index (1,): got 2, expected 2.5 (max abs difference 0.5)'
    """
    if not isinstance(got, torch.Tensor):
        return f"{name} should be a torch.Tensor, got {type(got).__name__}"
    if got.shape != expected.shape:
        return f"{name} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    if got.dtype != expected.dtype:
        return f"{name} has dtype {got.dtype}, expected {expected.dtype}"
    got_cmp = got.detach().cpu()
    expected = expected.detach().cpu()
    if expected.is_floating_point() or expected.is_complex():
        close = torch.isclose(got_cmp, expected, atol=atol, rtol=rtol, equal_nan=True)
    else:
        close = got_cmp == expected
    if bool(close.all()):
        return None
    index = tuple(int(i) for i in (~close).nonzero()[0])
    difference = (got_cmp.double() - expected.double()).abs().nan_to_num(nan=float("inf")).max().item()
    return (
        f"{name} is wrong at index {index}: got {got_cmp[index].item():.6g}, "
        f"expected {expected[index].item():.6g} (max abs difference {difference:.3g})"
    )


def close(got: Any, expected: torch.Tensor, *, atol: float = 1e-6, rtol: float = 1e-5) -> bool:
    """True when ``got`` is a tensor of ``expected``'s shape and (nearly) its values, whatever its dtype.

    A yes/no test for recognising a known mistake; ``compare_tensors`` says what differs.

    Example:
        >>> close(torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 2.0]))
        True
        >>> close(torch.tensor([1.0, 2.0]), torch.tensor([[1.0, 2.0]])), close([1.0, 2.0], torch.tensor([1.0, 2.0]))
        (False, False)
    """
    return (
        isinstance(got, torch.Tensor)
        and got.shape == expected.shape
        and bool(torch.allclose(got.detach().cpu().double(), expected.detach().cpu().double(), atol=atol, rtol=rtol))
    )


def unpack(result: Any, names: tuple[str, ...]) -> tuple[tuple | None, str | None]:
    """Check that the student returned ``len(names)`` values; return ``(values, None)`` or ``(None, problem)``.

    Example:
        >>> unpack([1, 2], ("a", "b"))
        ((1, 2), None)
        >>> unpack((1, 2), ("a", "b", "c"))
        (None, 'return a tuple (a, b, c), got tuple of length 2')
    """
    if not isinstance(result, (tuple, list)) or len(result) != len(names):
        what = type(result).__name__
        if isinstance(result, (tuple, list)):
            what += f" of length {len(result)}"
        return None, f"return a tuple ({', '.join(names)}), got {what}"
    return tuple(result), None


def as_number(value: Any) -> float | None:
    """A Python float from an int, a float or a one-element tensor; None for anything else.

    ``True`` is refused: a boolean where a number belongs is a mistake worth reporting
    (Python would quietly treat it as 1).

    Example:
        >>> as_number(torch.tensor([0.5])), as_number(3)
        (0.5, 3.0)
        >>> as_number(True), as_number(torch.zeros(2)), as_number("0.5")
        (None, None, None)
    """
    if isinstance(value, torch.Tensor):
        return float(value.detach()) if value.numel() == 1 else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None
