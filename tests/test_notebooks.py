"""Every lecture notebook: its anatomy, and a top-to-bottom run with the fast parameters.

The run is done by tools/run_notebooks.py, the same code `make` uses for the full run;
the checks evaluated in the notebook's kernel (its metadata "pdl" key) must all hold.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import nbformat
import pytest

from tools.repository import current
from tools.run_notebooks import BUILD, REPO, execute_notebook, notebook_paths

PATHS = notebook_paths()
SETUP_MARKER = 'importlib.util.find_spec("pdl") is None'
REPOSITORY = (
    current()
)  # pyproject.toml: [project.urls] Repository, [tool.pdl] branch (make repository)


CHECK_CALL = re.compile(r"pdl\.checks\.(check_\w+)\(")


def exercise_problems(nb: nbformat.NotebookNode) -> list[str]:
    """What breaks the exercise convention (notebooks/README.md, "Exercises") in ``nb``.

    An exercise is a code cell tagged ``exercise`` (the stub, ``raise NotImplementedError``, and
    the self-check on the student's answer), then a markdown cell tagged ``solution`` whose
    first line is the heading ``#### Solution``, then the hidden code cell tagged ``solution``
    that defines ``<name>_solution`` and checks it with ``solution=True``. Nothing outside the
    solution cells uses a ``*_solution`` name, so the student release (solutions removed)
    runs; a ``pdl.checks.tally()`` cell ends the exercises.
    """
    problems = []
    cells = nb.cells
    open_exercises: list[str] = []  # checks whose stub came but whose solution has not yet
    for index, cell in enumerate(cells):
        tags = set(cell.get("metadata", {}).get("tags", []))
        calls = CHECK_CALL.findall(cell.source) if cell.cell_type == "code" else []
        where = f"cell {index}"
        if "solution" not in tags and re.search(r"\b\w+_solution\b", cell.source):
            problems.append(f"{where} uses a *_solution name outside the solution cells")
        for line in cell.source.splitlines():
            if line.startswith("pdl.checks.check_") and not line.rstrip().endswith(";"):
                problems.append(
                    f"{where}: end the check call with ';' so no bare True/False is echoed"
                )
        if not calls:
            if cell.cell_type == "code" and tags & {"exercise", "solution"}:
                problems.append(
                    f"{where} is tagged {sorted(tags & {'exercise', 'solution'})} but calls no check"
                )
            continue
        if "exercise" in tags:
            if "raise NotImplementedError" not in cell.source:
                problems.append(f"{where}: an exercise stub must `raise NotImplementedError`")
            if "solution=True" in cell.source:
                problems.append(
                    f"{where}: the stub's check must judge the student's answer, not solution=True"
                )
            open_exercises += calls
        elif "solution" in tags:
            heading = cells[index - 1] if index else None
            if not (
                heading is not None
                and heading.cell_type == "markdown"
                and "solution" in heading.get("metadata", {}).get("tags", [])
                and heading.source.lstrip().startswith("#### Solution")
            ):
                problems.append(
                    f"{where}: a solution needs the markdown cell '#### Solution' (tagged solution) just before it"
                )
            if not cell.metadata.get("jupyter", {}).get("source_hidden"):
                problems.append(f"{where}: a solution cell must be collapsed (source_hidden)")
            if not cell.source.lstrip().startswith("# Solution"):
                problems.append(f"{where}: a solution cell starts with '# Solution'")
            if "solution=True" not in cell.source:
                problems.append(
                    f"{where}: the worked solution is checked with solution=True, apart from the student's answer"
                )
            for call in calls:
                if call in open_exercises:
                    open_exercises.remove(call)
                else:
                    problems.append(
                        f"{where}: solution for {call} comes without its exercise stub before it"
                    )
        else:
            problems.append(
                f"{where} calls {calls} but is tagged neither 'exercise' nor 'solution'"
            )
    problems += [f"{call}: the exercise has no worked solution" for call in open_exercises]
    tally = [
        i for i, c in enumerate(cells) if c.cell_type == "code" and "pdl.checks.tally()" in c.source
    ]
    last_check = max(
        (i for i, c in enumerate(cells) if c.cell_type == "code" and CHECK_CALL.search(c.source)),
        default=-1,
    )
    if not tally or tally[-1] < last_check:
        problems.append("a cell calling pdl.checks.tally() must come after the last exercise")
    return problems


def test_there_are_notebooks():
    assert PATHS, "no notebooks/NN_*.ipynb found"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_anatomy(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    cells = nb.cells
    # Outputs are build products, never committed.
    dirty = [
        i for i, c in enumerate(cells) if c.cell_type == "code" and (c.outputs or c.execution_count)
    ]
    assert not dirty, f"cells {dirty} keep outputs: strip them before committing"
    # 1. Title with the Colab badge pointing at this very notebook.
    assert cells[0].cell_type == "markdown" and cells[0].source.lstrip().startswith("#")
    assert REPOSITORY.colab(path.name) in cells[0].source, (
        "the Colab badge must link this notebook (pyproject's repository)"
    )
    # 2. The set-up cell, installing from pyproject's repository, 3. a parameters cell.
    code = [c for c in cells if c.cell_type == "code"]
    assert any(SETUP_MARKER in c.source for c in code[:2]), "the Colab set-up cell must come first"
    setup = next(c.source for c in code[:2] if SETUP_MARKER in c.source)
    assert f'PDL_SOURCE = "{REPOSITORY.install_source}"' in setup, (
        "the set-up cell must install from pyproject's repository"
    )
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one code cell must be tagged 'parameters'"
    # Run settings for CI: fast parameters must exist in the parameters cell.
    settings = nb.metadata.get("pdl", {})
    for name in settings.get("fast_parameters", {}):
        assert re.search(rf"^{name}\s*=", tagged[0].source, re.M), (
            f"fast parameter {name!r} not in the parameters cell"
        )
    assert settings.get("checks") or settings.get("fast_checks"), (
        "a notebook must check its key results"
    )
    # 5./6. Exercises with self-checks and a closing summary.
    assert any("pdl.checks." in c.source for c in code), "exercises need a pdl.checks self-check"
    problems = exercise_problems(nb)
    assert not problems, "exercise convention (notebooks/README.md):\n" + "\n".join(problems)
    assert re.search(
        r"(?im)^#+.*(summary|where to go next)",
        "\n".join(c.source for c in cells if c.cell_type == "markdown"),
    )


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_runs_fast_and_checks_hold(path):
    run = execute_notebook(path, mode="fast")
    assert run.error is None, f"{path.name} failed:\n{run.error}"
    assert not run.failed_checks, (
        f"{path.name}: checks failed: {run.failed_checks}; results {json.dumps(run.results)}"
    )
    executed = nbformat.read(BUILD / "fast" / path.name, as_version=4)
    frozen = [
        cell.id
        for cell in executed.cells
        for output in cell.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in output.get("data", {})
    ]
    assert not frozen, f"widget outputs (frozen progress bars) left in the executed copy: {frozen}"


# The set-up cell runs under IPython (it uses %pip); this script runs it with pdl hidden
# (no checkout beside the working folder, the editable install's finder removed), as in Colab.
_HIDDEN_PDL_RUNNER = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path[:] = [p for p in sys.path if p not in ("", ".") and not p.rstrip("/").endswith("{repo}")]
from IPython.core.interactiveshell import InteractiveShell
result = InteractiveShell.instance().run_cell(open(sys.argv[1]).read())
error = result.error_in_exec
print("RAISED", type(error).__name__ if error else None, error)
"""


def test_setup_cell_is_the_same_everywhere_and_fails_loudly(tmp_path):
    setups = {
        p.name: next(
            c.source for c in nbformat.read(p, as_version=4).cells if SETUP_MARKER in c.source
        )
        for p in PATHS
    }
    assert len(set(setups.values())) == 1, (
        "every notebook must carry the same set-up cell (notebooks/README.md)"
    )
    source = next(iter(setups.values()))
    url = re.search(r'PDL_SOURCE = "(git\+https://[^"]+)"', source)
    assert url, "the set-up cell names the install source in PDL_SOURCE"
    # An install that fails (here: a source that does not exist) must stop with one clear
    # error naming the source, not print pip's log and leave a ModuleNotFoundError for later.
    cell = tmp_path / "setup.py"
    cell.write_text(source.replace(url.group(1), "file:///nonexistent/pdl"))
    runner = tmp_path / "runner.py"
    runner.write_text(_HIDDEN_PDL_RUNNER.replace("{repo}", str(REPO)))
    done = subprocess.run(
        [sys.executable, str(runner), str(cell)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("RAISED ModuleNotFoundError"), done.stdout[-2000:] + done.stderr[-2000:]
    assert "file:///nonexistent/pdl" in last and "internet connection" in last
