"""Re-hosting: the repository URL lives in pyproject.toml, and `make repository` moves it.

Tested on a temporary copy of the checkout, never on the checkout itself.
"""

from __future__ import annotations

import doctest
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import tools.repository
from tools.repository import Repository, current, text_files
from tools.run_notebooks import REPO

# Built from parts, so that this file never names the URL it moves the course to (moving back
# would rewrite it here too).
NEW = Repository("https://github.com/" + "someone/deep-learning-course", "fall-2027")
COPIED_OUT = shutil.ignore_patterns(
    "build",
    "data",
    "node_modules",
    ".venv",
    ".git",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "runs",
    ".ipynb_checkpoints",
)


def test_doctests():
    assert doctest.testmod(tools.repository).failed == 0


@pytest.fixture
def checkout(tmp_path):
    copy = tmp_path / "course"
    shutil.copytree(REPO, copy, ignore=COPIED_OUT)
    return copy


def make_repository(root: Path, *arguments: str) -> subprocess.CompletedProcess:
    """``make repository ...`` in ``root``, with the Python (and venv) running these tests."""
    venv = Path(sys.prefix)
    command = [
        "make",
        "-C",
        str(root),
        "--no-print-directory",
        f"VENV={venv}",
        "-o",
        str(venv / ".installed"),
        "repository",
        *arguments,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def links(root: Path) -> dict[str, tuple[str, str]]:
    """Each notebook's Colab badge link and set-up cell install source."""
    found = {}
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        badge = re.search(
            r"\]\((https://colab\.research\.google\.com/github/[^)]+)\)", cells[0].source
        )
        source = next(m for c in cells if (m := re.search(r'PDL_SOURCE = "([^"]+)"', c.source)))
        found[path.name] = (badge.group(1) if badge else "", source.group(1))
    return found


def test_one_setting_and_everything_agrees_with_it():
    repository = current()
    assert (
        repository.url
        == re.search(r'^Repository = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)[1]
    )
    for name, (badge, source) in links(REPO).items():
        assert (badge, source) == (repository.colab(name), repository.install_source), name


def test_make_repository_rewrites_every_badge_set_up_cell_and_link(checkout):
    original = {p: p.read_bytes() for p in text_files(checkout)}
    old = current(checkout)
    done = make_repository(checkout, f"REPO={NEW.url}", f"BRANCH={NEW.branch}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert current(checkout) == NEW
    assert links(checkout) == {
        name: (NEW.colab(name), NEW.install_source) for name in links(checkout)
    }
    assert NEW.colab_prefix in (checkout / "notebooks" / "README.md").read_text()
    assert (
        f'PDL_SOURCE = "{NEW.install_source}"' in (checkout / "notebooks" / "README.md").read_text()
    )
    assert NEW.url in (checkout / "README.md").read_text()
    left = [
        str(p.relative_to(checkout))
        for p in text_files(checkout)
        if old.url in p.read_text() or f"github/{old.slug}/" in p.read_text()
    ]
    assert not left, f"still naming {old.url}: {left}"
    # Moving back restores every file byte for byte: nothing but the URLs was touched.
    done = make_repository(checkout, f"REPO={old.url}", f"BRANCH={old.branch}")
    assert done.returncode == 0, done.stdout + done.stderr
    changed = [
        str(p.relative_to(checkout)) for p, data in original.items() if p.read_bytes() != data
    ]
    assert not changed, f"not restored: {changed}"


def test_a_url_colab_cannot_open_is_refused_before_anything_changes(checkout):
    before = (checkout / "pyproject.toml").read_text()
    done = make_repository(checkout, "REPO=https://gitlab.com/someone/course")
    assert done.returncode != 0 and "https://github.com/OWNER/NAME" in done.stderr
    assert (checkout / "pyproject.toml").read_text() == before


def test_without_repo_it_prints_the_current_setting(checkout):
    done = make_repository(checkout)
    assert done.returncode == 0 and current(checkout).url in done.stdout
