"""The student release (``make student``) and grading (``python -m pdl grade``).

Grading must judge the student's own code: a real notebook as shipped grades 0 of N, its
student release with the worked solutions pasted into the stubs N of N, and the same with
one known mistake N-1 of N, with that check's own message. The tests are written from the
exercise convention (notebooks/README.md), not from one notebook's cell numbers.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
import sys

import nbformat
import pytest

import pdl.checks
from pdl.grading import CHECK_CALL, RUN_SETTINGS, exercise_names, exit_status, grade_notebook, tags
from tools.run_notebooks import REPO, notebook_paths
from tools.student_release import write_release

NOTEBOOK = REPO / "notebooks" / "01_tensors.ipynb"  # quick to run, and rich in exercises
MISTAKE_CELL = 'raise RuntimeError("a cell that fails on purpose")'


def as_student_answer(solution: str, stub: str) -> str:
    """A worked solution pasted into its stub: ``x_solution`` renamed ``x``, the stub's own check call."""
    lines = [
        ln
        for ln in solution.splitlines()
        if "solution=True" not in ln and ln.strip() != "# Solution"
    ]
    renamed = re.sub(r"\b(\w+?)_solution\b", r"\1", "\n".join(lines))
    checks = [ln for ln in stub.splitlines() if ln.startswith("pdl.checks.check_")]
    return renamed.rstrip() + "\n\n" + "\n".join(checks)


def solved(source: nbformat.NotebookNode, release: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The student release with every worked solution of ``source`` pasted into its stub."""
    solutions = {
        CHECK_CALL.findall(c.source)[0]: c.source
        for c in source.cells
        if c.cell_type == "code" and "solution" in tags(c)
    }
    nb = nbformat.from_dict(json.loads(json.dumps(release)))
    for cell in nb.cells:
        if cell.cell_type == "code" and "exercise" in tags(cell):
            cell.source = as_student_answer(
                solutions[CHECK_CALL.findall(cell.source)[0]], cell.source
            )
    return nb


def with_mistake(nb: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, str, str]:
    """``nb`` with the first exercise's answer replaced by None, then a cell that raises.

    Returns the notebook, the exercise and the message its check gives for None.
    """
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    index, cell = next((i, c) for i, c in enumerate(nb.cells) if "exercise" in tags(c))
    name, answer = re.search(r"^pdl\.checks\.check_(\w+)\((\w+)", cell.source, re.M).groups()
    cell.source = cell.source.replace(
        f"pdl.checks.check_{name}(",
        f"{answer} = None  # a deliberate mistake\npdl.checks.check_{name}(",
        1,
    )
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(MISTAKE_CELL))
    pdl.checks.core.forget()
    getattr(pdl.checks, f"check_{name}")(None)  # the same check, here, on the same mistake
    message = pdl.checks.answers()[name].message
    pdl.checks.core.forget()
    return nb, name, message


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """One ``python -m pdl grade FOLDER --json --csv FILE`` run over four submissions of NOTEBOOK."""
    folder = tmp_path_factory.mktemp("submissions")
    source = nbformat.read(NOTEBOOK, as_version=4)
    release_path = write_release(NOTEBOOK, folder / "release")
    release = nbformat.read(release_path, as_version=4)
    answers = solved(source, release)
    mistaken, name, message = with_mistake(answers)
    nbformat.write(source, folder / "shipped.ipynb")  # the notebook as in git, solutions and all
    release_path.rename(folder / "student.ipynb")  # the release as handed out, nothing done
    nbformat.write(answers, folder / "solved.ipynb")
    nbformat.write(mistaken, folder / "mistake.ipynb")
    (folder / "release").rmdir()
    table = folder / "grades.csv"
    done = subprocess.run(
        [sys.executable, "-m", "pdl", "grade", str(folder), "--json", "--csv", str(table)],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=REPO,
    )
    assert done.stdout.strip(), done.stderr[-3000:]
    grades = {
        g["submission"].rsplit("/", 1)[-1].removesuffix(".ipynb"): g
        for g in json.loads(done.stdout)
    }
    return {
        "grades": grades,
        "returncode": done.returncode,
        "csv": table,
        "n": len(exercise_names(source)),
        "mistake": (name, message),
    }


def statuses(grade: dict) -> dict[str, str]:
    return {e["name"]: e["status"] for e in grade["exercises"]}


def test_the_shipped_notebook_grades_zero(graded):
    grade = graded["grades"]["shipped"]
    assert graded["n"] > 0 and grade["total"] == graded["n"]
    assert grade["passed"] == 0, "the hidden solutions must never count as the student's answers"
    assert set(statuses(grade).values()) == {"not attempted"}


def test_the_student_release_runs_top_to_bottom(graded):
    grade = graded["grades"]["student"]
    assert grade["errors"] == [], (
        "the release (solutions removed, stubs unsolved) must run without errors"
    )
    assert grade["total"] == graded["n"] and set(statuses(grade).values()) == {"not attempted"}


def test_the_worked_solutions_pasted_in_grade_n_of_n(graded):
    grade = graded["grades"]["solved"]
    assert grade["passed"] == grade["total"] == graded["n"], statuses(grade)
    assert grade["errors"] == []


def test_a_known_mistake_grades_n_minus_one_with_its_message(graded):
    grade = graded["grades"]["mistake"]
    name, message = graded["mistake"]
    assert grade["passed"] == graded["n"] - 1
    failed = [e for e in grade["exercises"] if e["status"] != "passed"]
    assert failed == [{"name": name, "status": "failed", "message": message}]
    # The failing cell after it did not stop grading: the exercises after it passed.
    assert len(grade["errors"]) == 1 and "a cell that fails on purpose" in grade["errors"][0]


def test_one_csv_row_per_student_and_the_exit_status(graded):
    rows = list(csv.DictReader(graded["csv"].open()))
    assert sorted(r["student"] for r in rows) == ["mistake", "shipped", "solved", "student"]
    by_student = {r["student"]: r for r in rows}
    assert by_student["solved"]["passed"] == by_student["solved"]["total"] == str(graded["n"])
    assert by_student["mistake"][graded["mistake"][0]] == "failed"
    assert by_student["shipped"]["not attempted"] == str(graded["n"])
    assert graded["returncode"] == 1, "some exercises did not pass: exit status 1"


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_student_release_has_no_solutions_and_leaves_the_sources_alone(tmp_path):
    before = {p: _sha(p) for p in notebook_paths()}
    done = subprocess.run(
        [sys.executable, "tools/student_release.py", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert {p: _sha(p) for p in notebook_paths()} == before, "the sources must stay as they are"
    for path in notebook_paths():
        release = nbformat.read(tmp_path / path.name, as_version=4)
        nbformat.validate(release)
        text = json.dumps(release)
        assert not [c for c in release.cells if "solution" in tags(c)], path.name
        assert not re.search(r"\w_solution\b|solution=True|#### Solution", text), (
            f"{path.name} reveals a solution"
        )
        assert set(release.metadata["pdl"]) <= {*RUN_SETTINGS, "exercises"}, (
            "results and checks are the instructor's"
        )
        assert release.metadata["pdl"]["exercises"] == exercise_names(
            nbformat.read(path, as_version=4)
        )
        assert not any(
            c.get("outputs") or c.get("execution_count")
            for c in release.cells
            if c.cell_type == "code"
        )


# A notebook made up for the edge cases, with its own check (registered like the course's).
_SETUP = """\
import pdl.checks
from pdl.checks.core import call_safely, exercise, report

@exercise
def check_double(fn):
    result, problem = call_safely(fn, 2)
    return report("double", problem or (None if result == 4 else f"got {result!r}, expected 4"))

pdl.checks.check_double = check_double"""


def test_timeouts_syntax_errors_and_missing_cells(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["pdl"] = {"exercises": ["double", "deleted"], "timeout": 600}
    cells = [
        (_SETUP, []),
        ("import time\ntime.sleep(600)", []),
        ("def broken(:\npdl.checks.check_broken(broken);", ["exercise"]),
        ("double = lambda x: 2 * x\npdl.checks.check_double(double);", ["exercise"]),
    ]
    for source, cell_tags in cells:
        nb.cells.append(nbformat.v4.new_code_cell(source, metadata={"tags": cell_tags}))
    nbformat.write(nb, tmp_path / "edge.ipynb")
    grade = grade_notebook(tmp_path / "edge.ipynb", timeout=30)  # the set-up cell imports torch
    by_name = {e.name: e for e in grade.exercises}
    assert list(by_name) == ["double", "deleted", "broken"]
    assert by_name["double"].status == "passed", (
        "the interrupted cell before it did not stop grading"
    )
    assert (
        by_name["deleted"].status == "not attempted" and "never ran" in by_name["deleted"].message
    )
    assert by_name["broken"].status == "failed" and "SyntaxError" in by_name["broken"].message
    assert any("time limit" in error and "cell 2" in error for error in grade.errors), grade.errors
    assert exit_status([grade]) == 1


def test_a_file_that_is_not_a_notebook_is_reported_not_raised(tmp_path):
    (tmp_path / "essay.ipynb").write_text("not json")
    grade = grade_notebook(tmp_path / "essay.ipynb")
    assert grade.exercises == [] and "cannot read" in grade.errors[0]
    assert exit_status([grade]) == 2


def test_a_submission_that_silences_stdout_is_reported_not_judged(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["pdl"] = {"exercises": ["double"], "timeout": 600}
    cells = [
        (_SETUP, []),
        ("double = lambda x: 2 * x\npdl.checks.check_double(double);", ["exercise"]),
        ("import os, sys\nsys.stdout = open(os.devnull, 'w')  # a student's tidy-up", []),
    ]
    for source, cell_tags in cells:
        nb.cells.append(nbformat.v4.new_code_cell(source, metadata={"tags": cell_tags}))
    nbformat.write(nb, tmp_path / "quiet.ipynb")
    grade = grade_notebook(tmp_path / "quiet.ipynb", timeout=60)
    (exercise,) = grade.exercises
    assert exercise.status == "failed" and "not judged" in exercise.message
    assert "reading the verdicts" in exercise.message and "printed nothing" in exercise.message
    assert exit_status([grade]) == 2  # the grader says it could not judge, it does not crash
