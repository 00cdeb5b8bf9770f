"""The machinery every self-check shares: verdicts, the tally, solution checks kept apart."""

from __future__ import annotations

import torch

from pdl import checks
from pdl.checks.core import NOT_ATTEMPTED, answers, call_safely, exercise, report, solutions, tally


@exercise
def check_double(fn) -> bool:
    result, problem = call_safely(fn, torch.tensor([1.0, 2.0]))
    if problem:
        return report("double", problem)
    if not torch.equal(result, torch.tensor([2.0, 4.0])):
        return report("double", f"got {result.tolist()}, expected [2.0, 4.0]")
    return report("double", None)


@exercise
def check_broken(fn) -> bool:
    raise RuntimeError("a bug inside the check")


def stub(x):
    raise NotImplementedError


def test_a_stub_is_not_attempted_and_a_wrong_answer_failed(capsys):
    assert check_double(stub) is False
    assert capsys.readouterr().out.startswith("\u2b1c")
    assert answers()["double"].status == "not attempted"
    assert check_double(lambda x: x + 1) is False
    assert answers()["double"].status == "failed"
    assert "expected [2.0, 4.0]" in answers()["double"].message


def test_the_latest_answer_counts(capsys):
    check_double(lambda x: x + 1)
    check_double(lambda x: 2 * x)
    assert answers() == {"double": checks.Verdict("passed")}


def test_a_worked_solution_is_recorded_apart_from_the_answer(capsys):
    check_double(stub)
    assert check_double(lambda x: 2 * x, solution=True) is True
    assert answers()["double"].status == "not attempted"
    assert solutions()["double"].passed


def test_the_tally_reports_only_the_students_answers(capsys):
    check_double(lambda x: x + 1)
    check_double(lambda x: 2 * x, solution=True)
    capsys.readouterr()
    tally()
    out = capsys.readouterr().out
    assert "double: failed" in out
    assert "0 of 1 exercises passed" in out


def test_pytorchs_own_not_implemented_error_is_a_mistake_not_a_stub():
    def wrong(x):  # what torch raises for loss_fn(targets, outputs) with integer targets
        raise NotImplementedError("\"log_softmax_lastdim_kernel_impl\" not implemented for 'Long'")

    _, problem = call_safely(wrong, 0)
    assert problem != NOT_ATTEMPTED
    assert problem.startswith("your code raised NotImplementedError") and "'Long'" in problem


def test_a_check_that_crashes_reports_instead_of_raising(capsys):
    assert check_broken(lambda x: x) is False
    out = capsys.readouterr().out
    assert out.startswith("\u274c") and "could not judge" in out and "a bug inside the check" in out
    assert answers()["broken"].status == "failed"


def test_every_shipped_check_is_an_exercise():
    # Each check records its verdict, so the tally and the grader see every exercise.
    for name in checks.__all__:
        if name.startswith("check_"):
            assert hasattr(getattr(checks, name), "__wrapped__"), f"{name} lacks @exercise"
