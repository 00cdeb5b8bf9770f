"""The building blocks every self-check uses: compare, call safely, report, and the tally.

A check never crashes on a student's mistake. It calls the student's code, compares the
result with a reference on fresh inputs, prints one line (a success line, or what is wrong
and what was expected) and returns True or False, so a notebook cell can also ``assert`` it.

Every check is decorated with ``@exercise``, which remembers its verdict on *your* answer
(passed, failed, not attempted) for ``tally()`` at the end of a notebook and for grading.
A worked solution is checked with ``solution=True``: it is judged and printed the same way,
but kept apart, so the tally never counts the hidden solutions as your work.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

PASS = "\u2705"  # a green tick
FAIL = "\u274c"  # a red cross
TODO = "\u2b1c"  # a white square: not attempted yet

# The message of a stub that still raises its bare NotImplementedError.
NOT_ATTEMPTED = "not attempted yet (the stub still raises NotImplementedError)"


@dataclass(frozen=True)
class Verdict:
    """One check's judgement of one answer: ``status`` is "passed", "failed" or "not attempted"."""

    status: str
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# Verdicts by exercise (the check's name without "check_"), in the order first checked.
_answers: dict[str, Verdict] = {}  # your own answers
_solutions: dict[str, Verdict] = {}  # the worked solutions, checked with solution=True
_last_report: Verdict | None = None  # what the running check reported last


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
    global _last_report
    if problem is None:
        _last_report = Verdict("passed")
        print(f"{PASS} {title}: correct")
        return True
    _last_report = Verdict("not attempted" if NOT_ATTEMPTED in problem else "failed", problem)
    print(f"{TODO if _last_report.status == 'not attempted' else FAIL} {title}: {problem}")
    return False


def exercise(check: Callable[..., bool]) -> Callable[..., bool]:
    """Decorator for a self-check: record its verdict, and never let it raise.

    The decorated check takes one more keyword, ``solution``: ``check(answer)`` records the
    verdict on your answer (what ``tally()`` reports); ``check(answer, solution=True)`` is
    how a notebook's worked solution is checked, recorded apart from yours.

    Example:
        >>> @exercise
        ... def check_double(fn):
        ...     result, problem = call_safely(fn, 2)
        ...     return report("double", problem or (None if result == 4 else f"got {result!r}, expected 4"))
        >>> check_double(lambda x: x + x)
        ✅ double: correct
        True
        >>> answers()["double"]
        Verdict(status='passed', message='')
        >>> _ = check_double(lambda x: x * x, solution=True)  # a solution: not your answer
        ✅ double: correct
        >>> forget()
    """
    name = check.__name__.removeprefix("check_")

    @functools.wraps(check)
    def run(answer: Any, *args: Any, solution: bool = False, **kwargs: Any) -> bool:
        global _last_report
        _last_report = None
        try:
            passed = bool(check(answer, *args, **kwargs))
        except Exception as error:  # a bug in the check itself: still no traceback for the student
            passed = report(
                name.replace("_", " "),
                f"the check could not judge this answer ({type(error).__name__}: {error}); "
                "compare your code with the task, and tell the course staff",
            )
        verdict = _last_report or Verdict("passed" if passed else "failed")
        (_solutions if solution else _answers)[name] = verdict
        return passed

    return run


def answers() -> dict[str, Verdict]:
    """The verdicts on your own answers checked in this session, by exercise name.

    Example:
        >>> forget(); answers()
        {}
    """
    return dict(_answers)


def solutions() -> dict[str, Verdict]:
    """The verdicts on the worked solutions (checked with ``solution=True``), by exercise name.

    Example:
        >>> forget(); solutions()
        {}
    """
    return dict(_solutions)


def forget() -> None:
    """Forget every recorded verdict (a fresh start; the tests use it).

    Example:
        >>> forget(); answers(), solutions()
        ({}, {})
    """
    _answers.clear()
    _solutions.clear()


def tally() -> dict[str, Verdict]:
    """Print the verdict on each of your answers checked so far, and how many passed.

    Only your own answers count: the worked solutions (checked with ``solution=True``) are
    not in it. End the call with ``;`` in a notebook so the returned dict is not echoed.

    Example:
        >>> forget()
        >>> tally()
        No exercise has been checked yet in this session.
        {}
    """
    if not _answers:
        print("No exercise has been checked yet in this session.")
        return {}
    symbols = {"passed": PASS, "failed": FAIL, "not attempted": TODO}
    for name, verdict in _answers.items():
        detail = f": {verdict.message}" if verdict.status == "failed" else ""
        print(f"{symbols[verdict.status]} {name}: {verdict.status}{detail}")
    passed = sum(v.passed for v in _answers.values())
    attempted = sum(v.status != "not attempted" for v in _answers.values())
    print(
        f"Your answers: {passed} of {len(_answers)} exercises passed ({attempted} attempted). "
        "The worked solutions are not counted."
    )
    return answers()


def call_safely(fn: Callable, *args: Any, **kwargs: Any) -> tuple[Any, str | None]:
    """Call the student's ``fn``; return ``(result, None)`` or ``(None, "your code raised ...")``.

    Example:
        >>> call_safely(lambda x: 1 / x, 0)
        (None, 'your code raised ZeroDivisionError: division by zero')
        >>> def stub(x):
        ...     raise NotImplementedError
        >>> call_safely(stub, 0)
        (None, 'not attempted yet (the stub still raises NotImplementedError)')
    """
    if not callable(fn):
        return None, f"expected a function, got {type(fn).__name__}"
    try:
        return fn(*args, **kwargs), None
    except NotImplementedError as error:
        if not error.args:  # the stub's own bare `raise NotImplementedError`
            return None, NOT_ATTEMPTED
        # PyTorch raises NotImplementedError with a message ("... not implemented for 'Long'")
        # when an operation gets a dtype it cannot handle: that is an attempt, and a mistake.
        return None, f"your code raised NotImplementedError: {error}"
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
    difference = (
        (got_cmp.double() - expected.double()).abs().nan_to_num(nan=float("inf")).max().item()
    )
    return (
        f"{name} is wrong at index {index}: got {got_cmp[index].item():.6g}, "
        f"expected {expected[index].item():.6g} (max abs difference {difference:.3g})"
    )


def compare_arrays(got: Any, expected: np.ndarray, name: str, atol: float = 1e-8) -> str | None:
    """Like ``compare_tensors``, for NumPy answers: type first, then shape, then values.

    Example:
        >>> compare_arrays(np.float64(3.0), np.zeros(2), "grad_bias")
        'grad_bias is a single number, expected an array of shape (2,)'
        >>> compare_arrays(np.ones(2), np.ones(2), "grad_bias") is None
        True
    """
    if isinstance(got, (np.generic, int, float)) and not isinstance(got, (bool, np.bool_)):
        # A NumPy scalar (what a.sum() returns) or a Python number where an array belongs.
        return f"{name} is a single number, expected an array of shape {expected.shape}"
    if not isinstance(got, np.ndarray):
        return f"{name} should be a NumPy array, got {type(got).__name__}"
    if not (np.issubdtype(got.dtype, np.number) or got.dtype == np.bool_):
        return f"{name} should be an array of numbers, got dtype {got.dtype}"
    return compare_tensors(
        # np.array copies: torch.from_numpy refuses arrays with negative strides (a[::-1]).
        torch.from_numpy(np.array(got, dtype=expected.dtype)),
        torch.from_numpy(expected),
        name=name,
        atol=atol,
        rtol=1e-6,  # float32 rounding (~6e-8 relative) passes: the formula is what is judged
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
        and bool(
            torch.allclose(
                got.detach().cpu().double(), expected.detach().cpu().double(), atol=atol, rtol=rtol
            )
        )
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
