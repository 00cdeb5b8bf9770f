"""Grade exercise notebooks: run a student's notebook, report each exercise's verdict.

The exercises follow the course convention (notebooks/README.md): a code cell tagged
``exercise`` holds the stub and the self-check on the student's answer,
``pdl.checks.check_x(x);``; cells tagged ``solution`` hold the worked solution. Grading runs
the student's notebook top to bottom in a fresh kernel (the notebook's fast parameters, a
time limit per cell, no downloads), keeps going after a cell that fails, and then asks the
kernel for ``pdl.checks.answers()``: the verdicts on the student's *own* answers. Solution
cells are removed before the run, so a submission that still carries them cannot lean on them.

    python -m pdl grade alice/01_tensors.ipynb           # a table
    python -m pdl grade submissions/ --json               # every notebook in a folder, as JSON
    python -m pdl grade submissions/ --csv grades.csv     # and one CSV row per student

The student release (``make student``) is ``student_notebook`` applied to each notebook.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# A notebook's self-check calls, e.g. ``pdl.checks.check_linear_backward(linear_backward);``.
CHECK_CALL = re.compile(r"pdl\.checks\.check_(\w+)\(")
# What the student release keeps of the notebook's "pdl" metadata: how to run it. The
# results and checks are dropped: they are the instructor's and may name solution results.
RUN_SETTINGS = ("fast_parameters", "offline_parameters", "timeout")
STATUSES = ("passed", "failed", "not attempted")


def tags(cell: Any) -> set[str]:
    """The tags of a notebook cell (a dict or nbformat node).

    Example:
        >>> sorted(tags({"metadata": {"tags": ["exercise", "x"]}})), tags({"metadata": {}})
        (['exercise', 'x'], set())
    """
    return set(cell.get("metadata", {}).get("tags", []))


def exercise_names(nb: Any) -> list[str]:
    """The exercises of a notebook, in order: the checks called in its ``exercise`` cells.

    A name is the check's without ``check_``, as ``pdl.checks.answers()`` reports it. The
    student release also lists them in its metadata, so an exercise cell a student deleted
    still counts (as not attempted).

    Example:
        >>> cell = {"cell_type": "code", "metadata": {"tags": ["exercise"]},
        ...         "source": "def f(x):\\n    raise NotImplementedError\\npdl.checks.check_f(f);"}
        >>> exercise_names({"cells": [cell], "metadata": {}})
        ['f']
    """
    names = list(nb["metadata"].get("pdl", {}).get("exercises", []))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "exercise" in tags(cell):
            names += [name for name in CHECK_CALL.findall(cell["source"]) if name not in names]
    return names


def student_notebook(nb: Any) -> Any:
    """The student release of ``nb``: a copy without its solution cells, outputs or results.

    Removed: every cell tagged ``solution`` (the ``#### Solution`` heading and the hidden
    worked solution), outputs and execution counts, and the instructor's ``results`` and
    ``checks`` in the ``"pdl"`` metadata (the run settings stay, so it can be graded). The
    exercise names are recorded in the metadata. ``nb`` itself is left as it was.

    Example:
        >>> stub = {"cell_type": "code", "metadata": {"tags": ["exercise"]}, "outputs": [],
        ...         "execution_count": None, "source": "pdl.checks.check_f(f);"}
        >>> hidden = {"cell_type": "code", "metadata": {"tags": ["solution"]}, "outputs": [],
        ...           "execution_count": None, "source": "pdl.checks.check_f(f_solution, solution=True);"}
        >>> nb = {"cells": [stub, hidden], "metadata": {"pdl": {"checks": ["ok"], "timeout": 60}}}
        >>> release = student_notebook(nb)
        >>> [c["source"] for c in release["cells"]], release["metadata"]["pdl"]
        (['pdl.checks.check_f(f);'], {'timeout': 60, 'exercises': ['f']})
        >>> len(nb["cells"])
        2
    """
    release = copy.deepcopy(nb)
    release["cells"] = [cell for cell in release["cells"] if "solution" not in tags(cell)]
    for cell in release["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    settings = release["metadata"].get("pdl", {})
    release["metadata"]["pdl"] = {key: settings[key] for key in RUN_SETTINGS if key in settings}
    release["metadata"]["pdl"]["exercises"] = exercise_names(nb)
    release["metadata"].pop("widgets", None)  # widget state saved by an executed copy
    return release


def inject_parameters(nb: Any, parameters: dict[str, Any]) -> bool:
    """Insert a cell setting ``parameters`` after the cell tagged ``parameters``; False if none.

    Papermill's convention: the notebook's own values stay visible, the injected cell wins.

    Example:
        >>> nb = {"cells": [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "epochs = 10"}]}
        >>> inject_parameters(nb, {"epochs": 1}), nb["cells"][1]["source"]
        (True, '# Parameters injected for grading\\nepochs = 1')
    """
    index = next((i for i, cell in enumerate(nb["cells"]) if "parameters" in tags(cell)), None)
    if index is None:
        return False
    lines = ["# Parameters injected for grading"] + [f"{k} = {v!r}" for k, v in parameters.items()]
    injected = {
        "cell_type": "code",
        "execution_count": None,
        "outputs": [],
        "source": "\n".join(lines),
        "metadata": {"tags": ["injected-parameters"]},
    }
    nb["cells"].insert(index + 1, injected)
    return True


@dataclass
class ExerciseGrade:
    """The verdict on one exercise: ``status`` is "passed", "failed" or "not attempted"."""

    name: str
    status: str
    message: str = ""


@dataclass
class Grade:
    """What grading one submission found."""

    submission: str
    exercises: list[ExerciseGrade] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # cells that raised, a dead kernel, ...
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(e.status == status for e in self.exercises)

    @property
    def passed(self) -> int:
        return self.count("passed")

    @property
    def total(self) -> int:
        return len(self.exercises)


# Run in the student's kernel after their last cell: the verdicts on their own answers.
# Underscored names and a fresh import, so a student's variables cannot get in the way.
_PROBE = """\
import json as _json, pdl.checks.core as _core
print("PDL-GRADES " + _json.dumps({_n: [_v.status, _v.message] for _n, _v in _core.answers().items()}))
"""


def grade_notebook(
    path: Path, *, fast: bool = True, timeout: int | None = None, offline: bool = True
) -> Grade:
    """Run the notebook at ``path`` in a fresh kernel and grade each of its exercises.

    ``fast`` injects the notebook's fast parameters (as CI runs it); ``timeout`` is the limit
    per cell in seconds (default: the notebook's own, else 600), after which the cell is
    interrupted and grading goes on; ``offline`` forbids downloads (``PDL_OFFLINE=1``), and
    applies the notebook's offline parameters. Files the notebook writes go to a
    temporary folder.

    Example:
        >>> grade = grade_notebook(Path("submissions/alice.ipynb"))  # doctest: +SKIP
        >>> grade.passed, grade.total  # doctest: +SKIP
        (9, 10)
    """
    import nbformat  # imported here: ``python -m pdl doctor`` works without Jupyter installed
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    grade = Grade(submission=str(path))
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as error:  # not a notebook, or a damaged one: say so, grade nothing
        grade.errors.append(f"cannot read {path}: {type(error).__name__}: {error}")
        return grade
    names = exercise_names(nb)
    for number, cell in enumerate(
        nb.cells, start=1
    ):  # to name a failing cell as the student counts
        cell.metadata["pdl_cell_number"] = number
    nb.cells = [cell for cell in nb.cells if "solution" not in tags(cell)]
    settings = nb.metadata.get("pdl", {})
    parameters = dict(settings.get("fast_parameters", {})) if fast else {}
    if offline:
        parameters.update(settings.get("offline_parameters", {}))
    if parameters and not inject_parameters(nb, parameters):
        grade.errors.append("no cell is tagged 'parameters': the notebook ran with its own values")
    nb = nbformat.from_dict(nb)

    env = dict(os.environ, PDL_OFFLINE="1") if offline else dict(os.environ)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pdl-grade-") as workdir:
        cell_timeout = timeout or int(settings.get("timeout", 600))
        client = NotebookClient(
            nb,
            timeout=cell_timeout,
            kernel_name="python3",
            allow_errors=True,
            interrupt_on_timeout=True,
            resources={"metadata": {"path": workdir}},
        )
        verdicts: dict[str, list[str]] | None = None
        try:
            with client.setup_kernel(env=env):
                for index, cell in enumerate(nb.cells):
                    client.execute_cell(cell, index)
                probe = nbformat.v4.new_code_cell(_PROBE)
                nb.cells.append(probe)  # nbclient stores a cell's outputs into the notebook
                client.timeout = max(
                    client.timeout, 600
                )  # the probe may import pdl: not the student's time
                try:
                    client.execute_cell(probe, len(nb.cells) - 1, store_history=False)
                finally:
                    nb.cells.pop()
                verdicts = _read_probe(probe)
                if verdicts is None:  # e.g. the student's code replaced sys.stdout or pdl.checks
                    errors = [o for o in probe.outputs if o.get("output_type") == "error"]
                    why = (f"{errors[0].get('ename')}: {errors[0].get('evalue')}" if errors
                           else "it printed nothing")  # fmt: skip
                    grade.errors.append(f"reading the verdicts after the last cell failed ({why})")
        except DeadKernelError as error:
            grade.errors.append(f"the kernel died, so the exercises could not be judged: {error}")
    grade.seconds = time.perf_counter() - started

    cell_errors = {}  # exercise -> the error its cell raised
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                error = f"{output.get('ename')}: {output.get('evalue')}".rstrip(": ")
                if output.get("ename") == "KeyboardInterrupt":
                    error += f" (stopped at the time limit of {cell_timeout} s per cell)"
                first_line = cell.source.strip().splitlines()[0][:60] if cell.source.strip() else ""
                where = f"cell {cell.metadata.get('pdl_cell_number', '(injected parameters)')} ({first_line!r})"
                grade.errors.append(f"{where} raised {error}")
                for name in CHECK_CALL.findall(cell.source):
                    cell_errors.setdefault(name, error)
    for name in names:
        if verdicts is None:
            why = grade.errors[-1] if grade.errors else "no verdicts were recorded"
            grade.exercises.append(ExerciseGrade(name, "failed", "not judged: " + why))
        elif name in verdicts:
            grade.exercises.append(ExerciseGrade(name, *verdicts[name]))
        elif name in cell_errors:
            grade.exercises.append(
                ExerciseGrade(
                    name, "failed", f"its cell raised {cell_errors[name]} before the check ran"
                )
            )
        else:
            grade.exercises.append(
                ExerciseGrade(
                    name,
                    "not attempted",
                    "its check never ran (the cell is missing or was not run)",
                )
            )
    return grade


def _read_probe(probe: Any) -> dict[str, list[str]] | None:
    text = "".join(o.get("text", "") for o in probe.outputs if o.get("output_type") == "stream")
    line = next((ln for ln in text.splitlines() if ln.startswith("PDL-GRADES ")), None)
    return None if line is None else json.loads(line.removeprefix("PDL-GRADES "))


def submissions(paths: list[Path]) -> list[tuple[str, Path]]:
    """``(student, notebook)`` pairs: each file as given, every ``*.ipynb`` inside each folder.

    A student is named by the file's stem, or for a folder by the notebook's path inside it
    (``alice`` for ``submissions/alice.ipynb``, ``alice/01_tensors`` for a folder per student).

    Example:
        >>> submissions([Path("alice.ipynb")])
        [('alice', PosixPath('alice.ipynb'))]
    """
    found = []
    for path in paths:
        if path.is_dir():
            notebooks = sorted(
                p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
            )
            found += [(str(p.relative_to(path).with_suffix("")), p) for p in notebooks]
        else:
            found.append((path.stem, path))
    return found


def table(grade: Grade) -> str:
    """One submission's grade as lines of text: the score, each exercise, the failing cells.

    Example:
        >>> print(table(Grade("bob.ipynb", [ExerciseGrade("f", "passed"), ExerciseGrade("g", "failed", "wrong shape")])))
        bob.ipynb: 1 of 2 exercises passed, 1 failed, 0 not attempted (0.0 s)
          ✅ f  passed
          ❌ g  failed: wrong shape
    """
    from pdl.checks.core import FAIL, PASS, TODO

    symbols = {"passed": PASS, "failed": FAIL, "not attempted": TODO}
    lines = [
        f"{grade.submission}: {grade.passed} of {grade.total} exercises passed, {grade.count('failed')} failed, "
        f"{grade.count('not attempted')} not attempted ({grade.seconds:.1f} s)"
    ]
    width = max((len(e.name) for e in grade.exercises), default=0)
    for e in grade.exercises:
        detail = f": {e.message}" if e.status == "failed" else ""
        lines.append(f"  {symbols[e.status]} {e.name:<{width}}  {e.status}{detail}")
    lines += [f"  ! {error}" for error in grade.errors]
    return "\n".join(lines)


def as_json(grades: list[Grade]) -> str:
    """Every grade as a JSON list, with its counts.

    Example:
        >>> print(as_json([Grade("bob.ipynb", [ExerciseGrade("f", "passed")])]))  # doctest: +ELLIPSIS
        [{"submission": "bob.ipynb", "exercises": [{"name": "f", "status": "passed", "message": ""}], ..., "passed": 1, "total": 1}]
    """
    return json.dumps(
        [asdict(g) | {"passed": g.passed, "total": g.total} for g in grades], ensure_ascii=False
    )


def as_csv(students: list[str], grades: list[Grade]) -> str:
    """One CSV row per student: the counts, then each exercise's status (one column each).

    Example:
        >>> print(as_csv(["bob"], [Grade("bob.ipynb", [ExerciseGrade("f", "passed")])]), end="")
        student,submission,passed,failed,not attempted,total,errors,f
        bob,bob.ipynb,1,0,0,1,0,passed
    """
    names = list(
        dict.fromkeys(e.name for g in grades for e in g.exercises)
    )  # every exercise, in order
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["student", "submission", "passed", "failed", "not attempted", "total", "errors", *names]
    )
    for student, g in zip(students, grades, strict=True):
        status = {e.name: e.status for e in g.exercises}
        writer.writerow(
            [
                student,
                g.submission,
                g.passed,
                g.count("failed"),
                g.count("not attempted"),
                g.total,
                len(g.errors),
                *(status.get(name, "") for name in names),
            ]
        )
    return out.getvalue()


def exit_status(grades: list[Grade]) -> int:
    """0 when every exercise of every submission passed, 1 when some did not, 2 when one was not judged.

    Example:
        >>> exit_status([Grade("a", [ExerciseGrade("f", "passed")])]), exit_status([Grade("b", [ExerciseGrade("f", "failed")])])
        (0, 1)
    """
    if any(
        not g.exercises or any(e.message.startswith("not judged") for e in g.exercises)
        for g in grades
    ):
        return 2
    return 0 if all(g.passed == g.total for g in grades) else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m pdl grade`` (``pdl.__main__`` dispatches to ``run``).

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_arguments(parser)
        >>> parser.parse_args(["alice.ipynb", "--json"]).json
        True
    """
    parser.description = (
        "Run each student's notebook (fast parameters, no downloads, a time limit per cell) "
        "and report every exercise as passed, failed (with the check's message) or not "
        "attempted. Exit status: 0 all passed, 1 some did not, 2 a submission could not be judged."
    )
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="SUBMISSION",
        help="notebooks, or folders of notebooks",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--csv", metavar="FILE", help="also write one CSV row per student to FILE ('-': stdout)"
    )
    parser.add_argument(
        "--timeout", type=int, help="seconds per cell (default: the notebook's own timeout)"
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="run with the notebook's own parameters, not its fast ones",
    )
    parser.add_argument(
        "--online", action="store_true", help="allow downloads (default: PDL_OFFLINE=1)"
    )


def run(args: argparse.Namespace) -> int:
    """``python -m pdl grade``: grade every submission, print the report, return the exit status.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_arguments(parser)
        >>> run(parser.parse_args(["submissions/", "--csv", "grades.csv"]))  # doctest: +SKIP
        1
    """
    found = submissions(args.paths)
    if not found:
        print(f"no notebooks found in {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 2
    grades = []
    for _, path in found:
        print(f"grading {path} ...", file=sys.stderr, flush=True)
        grades.append(
            grade_notebook(path, fast=not args.full, timeout=args.timeout, offline=not args.online)
        )
    print(as_json(grades) if args.json else "\n\n".join(map(table, grades)))
    if args.csv:
        rows = as_csv([student for student, _ in found], grades)
        if args.csv == "-":
            print(rows, end="")
        else:
            Path(args.csv).write_text(rows, encoding="utf-8")
    return exit_status(grades)
