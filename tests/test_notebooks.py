"""Every lecture notebook: its anatomy, and a top-to-bottom run with the fast parameters.

The run is done by tools/run_notebooks.py, the same code `make` uses for the full run;
the checks evaluated in the notebook's kernel (its metadata "pdl" key) must all hold.
"""

from __future__ import annotations

import json
import re

import nbformat
import pytest

from tools.run_notebooks import BUILD, execute_notebook, notebook_paths

PATHS = notebook_paths()
SETUP_MARKER = 'importlib.util.find_spec("pdl") is None'
COLAB = "https://colab.research.google.com/github/pdl-course/pdl/blob/main/notebooks/{name}"


def test_there_are_notebooks():
    assert PATHS, "no notebooks/NN_*.ipynb found"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_anatomy(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    cells = nb.cells
    # Outputs are build products, never committed.
    dirty = [i for i, c in enumerate(cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"cells {dirty} keep outputs: strip them before committing"
    # 1. Title with the Colab badge pointing at this very notebook.
    assert cells[0].cell_type == "markdown" and cells[0].source.lstrip().startswith("#")
    assert COLAB.format(name=path.name) in cells[0].source, "the Colab badge must link this notebook"
    # 2. The set-up cell, 3. a parameters cell.
    code = [c for c in cells if c.cell_type == "code"]
    assert any(SETUP_MARKER in c.source for c in code[:2]), "the Colab set-up cell must come first"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one code cell must be tagged 'parameters'"
    # Run settings for CI: fast parameters must exist in the parameters cell.
    settings = nb.metadata.get("pdl", {})
    for name in settings.get("fast_parameters", {}):
        assert re.search(rf"^{name}\s*=", tagged[0].source, re.M), f"fast parameter {name!r} not in the parameters cell"
    assert settings.get("checks") or settings.get("fast_checks"), "a notebook must check its key results"
    # 5./6. Exercises with self-checks and a closing summary.
    assert any("pdl.checks." in c.source for c in code), "exercises need a pdl.checks self-check"
    assert any(c.metadata.get("jupyter", {}).get("source_hidden") for c in code), "solutions go in a collapsed cell"
    assert re.search(r"(?im)^#+.*(summary|where to go next)", "\n".join(c.source for c in cells if c.cell_type == "markdown"))


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_runs_fast_and_checks_hold(path):
    run = execute_notebook(path, mode="fast")
    assert run.error is None, f"{path.name} failed:\n{run.error}"
    assert not run.failed_checks, f"{path.name}: checks failed: {run.failed_checks}; results {json.dumps(run.results)}"
    assert (BUILD / "fast" / path.name).is_file()
