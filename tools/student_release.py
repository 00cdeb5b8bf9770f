"""The student release: every lecture notebook without its worked solutions (``make student``).

Each ``notebooks/NN_*.ipynb`` is written to ``build/student/`` without its cells tagged
``solution``, without outputs, and without the instructor's results and checks in its
metadata (``pdl.grading.student_notebook``). The sources are only read. Hand out the
folder; grade what comes back with ``python -m pdl grade``.

    python tools/student_release.py              # every notebook
    python tools/student_release.py 01 03        # some, by number or name
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

# Run as a script (python tools/...py), the repository root is not on sys.path: put it there
# so that `tools.` imports work the same as under pytest.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pdl.grading import exercise_names, student_notebook
from tools.run_notebooks import REPO, notebook_paths

OUT = REPO / "build" / "student"


def write_release(path: Path, out_dir: Path = OUT) -> Path:
    """Write the student release of the notebook at ``path`` into ``out_dir``; return its path."""
    release = nbformat.from_dict(student_notebook(nbformat.read(path, as_version=4)))
    nbformat.validate(release)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / path.name
    nbformat.write(release, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write the student release of the notebooks (solutions removed)."
    )
    parser.add_argument(
        "names", nargs="*", help="notebook names or prefixes, e.g. 01 or 01_tensors"
    )
    parser.add_argument(
        "--out", type=Path, default=OUT, help=f"output folder (default {OUT.relative_to(REPO)})"
    )
    args = parser.parse_args(argv)
    paths = notebook_paths(args.names)
    if not paths:
        print(f"no notebooks match {args.names}", file=sys.stderr)
        return 2
    for path in paths:
        target = write_release(path, args.out)
        count = len(exercise_names(nbformat.read(target, as_version=4)))
        print(f"{target}: {count} exercises, solutions removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
