"""Execute the course notebooks top to bottom and check their key results.

Each notebook carries its own run settings in its metadata, under ``"pdl"``:

    {
      "fast_parameters": {"epochs": 1, "train_subset": 5000},   # what CI overrides
      "offline_parameters": {"weights": "data:..."},            # rare: when PDL_OFFLINE=1
      "results": ["test_accuracy", "grad_max_abs_diff"],          # values to report
      "checks": ["grad_max_abs_diff < 1e-6"],                     # must hold in every mode
      "fast_checks": ["test_accuracy >= 0.75"],                   # ... with fast parameters
      "full_checks": ["test_accuracy >= 0.85"],                   # ... with the defaults
      "timeout": 600                                              # seconds per cell
    }

``--mode fast`` injects ``fast_parameters`` after the cell tagged ``parameters`` (papermill's
convention); ``--mode full`` runs the notebook's own defaults. With ``PDL_OFFLINE=1`` (no
internet, as in CI), ``offline_parameters`` are injected too, in either mode: they replace a
default that needs a download (lecture 07's ImageNet weights) with a copy from the data mirror. After the last cell, the
``results`` and ``checks`` are evaluated *in the notebook's kernel*, so the numbers checked
are the ones the notebook printed. Built into every run: each exercise's stub was checked
and has a worked solution, every worked solution (``solution=True``) passes, and the stubs as
shipped are "not attempted" (``pdl.checks.answers()``). Executed copies go to ``build/notebooks/<mode>/`` with a
``report.json`` of times, results and check outcomes.

    python tools/run_notebooks.py --mode fast                 # every notebook
    python tools/run_notebooks.py --mode full 03_nn_module    # one, by name
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from pdl.store import offline

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
BUILD = REPO / "build" / "notebooks"


@dataclass
class NotebookRun:
    """What one execution produced."""

    name: str
    mode: str
    seconds: float = 0.0
    results: dict[str, object] = field(default_factory=dict)
    failed_checks: list[str] = field(default_factory=list)
    passed_checks: list[str] = field(default_factory=list)
    exercises: dict[str, str] = field(default_factory=dict)  # exercise -> verdict on the stub
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failed_checks


def notebook_paths(names: list[str] | None = None) -> list[Path]:
    """The notebooks to run: all ``notebooks/NN_*.ipynb``, or those whose stem starts with a name."""
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if names:
        paths = [p for p in paths if any(p.stem == n or p.stem.startswith(n) for n in names)]
    return paths


def settings(nb: nbformat.NotebookNode) -> dict:
    return dict(nb.metadata.get("pdl", {}))


def execute_notebook(path: Path, mode: str = "fast", out_dir: Path | None = None) -> NotebookRun:
    """Execute ``path`` with the ``mode``'s parameters, evaluate its checks, save the executed copy."""
    if mode not in ("fast", "full"):
        raise ValueError(f"mode must be 'fast' or 'full', not {mode!r}")
    out_dir = out_dir or BUILD / mode
    out_dir.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(path, as_version=4)
    config = settings(nb)
    run = NotebookRun(name=path.stem, mode=mode)
    parameters = dict(config.get(f"{mode}_parameters", {}))
    if offline():
        parameters.update(config.get("offline_parameters", {}))
    if parameters:
        inject_parameters(nb, parameters)

    # The kernel runs in the output folder: TensorBoard runs, checkpoints and other files a
    # notebook writes land in build/, not in the source tree.
    client = NotebookClient(
        nb,
        timeout=int(config.get("timeout", 600)),
        kernel_name="python3",
        resources={"metadata": {"path": str(out_dir)}},
    )
    started = time.perf_counter()
    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
            run.seconds = time.perf_counter() - started
            run.results = _evaluate(client, len(nb.cells), config, mode, run)
    except (
        CellExecutionError,
        RuntimeError,
        TimeoutError,
    ) as error:  # a cell failed, the kernel died
        run.seconds = time.perf_counter() - started
        run.error = _short(f"{type(error).__name__}: {error}")
    nb.metadata.setdefault("pdl", {})["execution"] = {
        "mode": mode,
        "seconds": round(run.seconds, 1),
    }
    drop_frozen_widgets(nb)
    nbformat.write(nb, out_dir / path.name)
    return run


def drop_frozen_widgets(nb: nbformat.NotebookNode) -> int:
    """Remove widget outputs (tqdm's notebook progress bars) from an executed copy; return how many.

    A widget lives in the kernel: saved in a file it is only its first text, a bar frozen at
    0% above every epoch, on the course site and in any viewer. The epoch's summary line,
    printed as plain text, stays.
    """
    dropped = 0
    for cell in nb.cells:
        kept = [
            output
            for output in cell.get("outputs", [])
            if "application/vnd.jupyter.widget-view+json" not in output.get("data", {})
        ]
        dropped += len(cell.get("outputs", [])) - len(kept)
        if cell.cell_type == "code":
            cell.outputs = kept
    return dropped


def inject_parameters(nb: nbformat.NotebookNode, parameters: dict) -> None:
    """Insert a cell that overrides ``parameters`` right after the cell tagged ``parameters``.

    The same convention as papermill: the original defaults stay visible, the injected cell
    (tagged ``injected-parameters``) follows them and wins.
    """
    index = next(
        (
            i
            for i, cell in enumerate(nb.cells)
            if "parameters" in cell.get("metadata", {}).get("tags", [])
        ),
        None,
    )
    if index is None:
        raise ValueError("the notebook has fast_parameters but no cell tagged 'parameters'")
    lines = ["# Parameters injected by tools/run_notebooks.py"]
    lines += [f"{name} = {value!r}" for name, value in parameters.items()]
    cell = nbformat.v4.new_code_cell("\n".join(lines))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, cell)


_PROBE = """
import json as _json
_out = {"results": {}, "checks": {}}
for _name in %(results)r:
    try:
        _value = eval(_name)
        _out["results"][_name] = float(_value) if hasattr(_value, "__float__") else repr(_value)
    except Exception as _error:
        _out["results"][_name] = "error: %%s" %% _error
for _check in %(checks)r:
    try:
        _out["checks"][_check] = bool(eval(_check))
    except Exception as _error:
        _out["checks"][_check] = "error: %%s" %% _error
import pdl.checks as _checks
_answers, _solutions = _checks.answers(), _checks.solutions()
_out["exercises"] = {_name: _verdict.status for _name, _verdict in _answers.items()}
# Built into every run: each exercise's stub was checked and has a worked solution; every
# solution passes its check; and the stubs as shipped pass nothing, so the tally reports
# the student's answers, not the hidden solutions.
_out["checks"]["every exercise has a checked stub and a worked solution"] = sorted(_answers) == sorted(_solutions)
_out["checks"]["every worked solution passes its self-check"] = all(_v.passed for _v in _solutions.values())
_out["checks"]["the shipped stubs are reported as not attempted"] = all(
    _v.status == "not attempted" for _v in _answers.values())
print("PDL-RESULTS " + _json.dumps(_out))
"""


def _evaluate(
    client: NotebookClient, index: int, config: dict, mode: str, run: NotebookRun
) -> dict:
    """Evaluate the notebook's results and checks in its (still running) kernel."""
    checks = list(config.get("checks", [])) + list(config.get(f"{mode}_checks", []))
    probe = nbformat.v4.new_code_cell(
        _PROBE % {"results": list(config.get("results", [])), "checks": checks}
    )
    client.nb.cells.append(probe)  # nbclient stores outputs into the notebook's cell list
    try:
        client.execute_cell(probe, index, store_history=False)
    finally:
        client.nb.cells.pop()  # the probe is not part of the executed copy
    text = "".join(o.get("text", "") for o in probe.outputs if o.get("output_type") == "stream")
    line = next(ln for ln in text.splitlines() if ln.startswith("PDL-RESULTS "))
    probed = json.loads(line.removeprefix("PDL-RESULTS "))
    run.exercises = probed["exercises"]
    for check, outcome in probed["checks"].items():
        (run.passed_checks if outcome is True else run.failed_checks).append(
            check if outcome in (True, False) else f"{check} ({outcome})"
        )
    return probed["results"]


def _short(message: str, limit: int = 4000) -> str:
    return message if len(message) <= limit else message[:1500] + "\n...\n" + message[-2500:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Execute the course notebooks and check their results."
    )
    parser.add_argument(
        "names", nargs="*", help="notebook names or prefixes, e.g. 03 or 03_nn_module"
    )
    parser.add_argument("--mode", choices=["fast", "full"], default="full")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default build/notebooks/<mode>)"
    )
    args = parser.parse_args(argv)
    out_dir = args.out or BUILD / args.mode
    paths = notebook_paths(args.names)
    if not paths:
        print(f"no notebooks match {args.names}", file=sys.stderr)
        return 2
    runs = []
    for path in paths:
        print(f"{path.name} ({args.mode}) ...", flush=True)
        run = execute_notebook(path, args.mode, out_dir)
        runs.append(run)
        status = "ok" if run.ok else "FAILED"
        print(f"  {status} in {run.seconds:.1f}s  results: {json.dumps(run.results)}")
        for check in run.failed_checks:
            print(f"  failed check: {check}")
        if run.error:
            print(f"  error:\n{run.error}")
    total = sum(r.seconds for r in runs)
    print(f"{len(runs)} notebooks, {total:.1f}s in all, {sum(not r.ok for r in runs)} failed")
    report = out_dir / "report.json"
    previous = json.loads(report.read_text()) if report.exists() else {}
    previous.update({r.name: asdict(r) for r in runs})
    report.write_text(json.dumps(previous, indent=2))
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
