"""Where the course lives on GitHub: one setting, and one command to move it.

The repository is ``[project.urls] Repository`` in ``pyproject.toml``, its branch
``[tool.pdl] branch``. Everything that names them is derived from that setting (the tests
and the website read it) or rewritten by this script: the notebooks' Colab badges and their
set-up cells (``PDL_SOURCE = "git+https://github.com/..."``), the links in the READMEs and
slides. To re-host the course under your own account:

    make repository REPO=https://github.com/OWNER/NAME            # optionally BRANCH=fall-2027
    python tools/repository.py https://github.com/OWNER/NAME --branch fall-2027
    python tools/repository.py                                    # print the current setting

It rewrites only the old URLs, in the text files of the checkout (not in build/, data/ or
any hidden or installed folder), and prints each file it changed.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BRANCH = "main"
GITHUB = re.compile(r"https://github\.com/(?P<owner>[\w.-]+)/(?P<name>[\w.-]+?)(?:\.git)?/?")
BRANCH = re.compile(r"[\w.][\w./-]*")  # what git allows, near enough; no spaces or quotes
# Files that may name the repository: text, outside build products, data and installed packages.
SUFFIXES = {
    ".md",
    ".ipynb",
    ".py",
    ".toml",
    ".yaml",
    ".yml",
    ".txt",
    ".cfg",
    ".rst",
    ".html",
    ".css",
    ".js",
}
SKIPPED = {"build", "data", "node_modules", "runs", "__pycache__"}


@dataclass(frozen=True)
class Repository:
    """A GitHub repository and branch, and the URLs the course derives from them.

    Example:
        >>> repo = Repository("https://github.com/owner/course", "main")
        >>> repo.colab("01_tensors.ipynb")
        'https://colab.research.google.com/github/owner/course/blob/main/notebooks/01_tensors.ipynb'
        >>> repo.install_source, Repository(repo.url, "fall").install_source
        ('git+https://github.com/owner/course', 'git+https://github.com/owner/course@fall')
    """

    url: str  # https://github.com/OWNER/NAME
    branch: str = DEFAULT_BRANCH

    @property
    def slug(self) -> str:
        return self.url.removeprefix("https://github.com/")

    @property
    def colab_prefix(self) -> str:
        return f"https://colab.research.google.com/github/{self.slug}/blob/{self.branch}/"

    def colab(self, notebook: str) -> str:
        """The "Open in Colab" link of ``notebooks/<notebook>``."""
        return f"{self.colab_prefix}notebooks/{notebook}"

    def blob(self, path: str) -> str:
        """The GitHub page of a file in the repository."""
        return f"{self.url}/blob/{self.branch}/{path}"

    @property
    def install_source(self) -> str:
        """What the set-up cell gives pip: ``git+URL``, with ``@branch`` unless it is the default."""
        return f"git+{self.url}" + ("" if self.branch == DEFAULT_BRANCH else f"@{self.branch}")


def parse(url: str, branch: str = DEFAULT_BRANCH) -> Repository:
    """A Repository from a GitHub URL (``.git`` and a trailing ``/`` are dropped); ValueError otherwise.

    Colab opens notebooks from GitHub only, so the course must live on GitHub.

    Example:
        >>> parse("https://github.com/someone/dl-course.git/")
        Repository(url='https://github.com/someone/dl-course', branch='main')
        >>> parse("https://gitlab.com/someone/dl-course")
        Traceback (most recent call last):
        ...
        ValueError: REPO must look like https://github.com/OWNER/NAME (Colab opens notebooks from GitHub only), not 'https://gitlab.com/someone/dl-course'
    """
    match = GITHUB.fullmatch(url.strip())
    if not match:
        raise ValueError(
            f"REPO must look like https://github.com/OWNER/NAME (Colab opens notebooks from GitHub only), not {url!r}"
        )
    if not BRANCH.fullmatch(branch) or ".." in branch:
        raise ValueError(f"{branch!r} is not a branch name git accepts")
    return Repository(f"https://github.com/{match['owner']}/{match['name']}", branch)


def _section(toml: str, name: str) -> re.Match | None:
    """The lines of the TOML table ``[name]``, up to the next table."""
    return re.search(rf"^\[{re.escape(name)}\]\n(?:(?!\[).*\n)*", toml, re.M)


def current(root: Path = REPO) -> Repository:
    """The repository and branch set in ``root``'s pyproject.toml.

    Example:
        >>> current().url.startswith("https://github.com/")
        True
    """
    # Read with two regular expressions, not tomllib: the course supports Python 3.10.
    text = (root / "pyproject.toml").read_text(encoding="utf-8")
    urls = _section(text, "project.urls")
    url = re.search(r'^Repository\s*=\s*"([^"]+)"', urls.group(0) if urls else "", re.M)
    if url is None:
        raise ValueError(
            f'{root / "pyproject.toml"} has no [project.urls] Repository = "https://github.com/..."'
        )
    tool = _section(text, "tool.pdl")
    branch = re.search(r'^branch\s*=\s*"([^"]+)"', tool.group(0) if tool else "", re.M)
    return parse(url.group(1), branch.group(1) if branch else DEFAULT_BRANCH)


def rewriter(old: Repository, new: Repository) -> Callable[[str], str]:
    """A function that rewrites every URL naming ``old`` in a text to name ``new``.

    One regular expression, one pass: the most specific form (a Colab link, a pip source, a
    file on a branch) is tried first at each place, so no URL is rewritten twice.

    Example:
        >>> move = rewriter(Repository("https://github.com/a/b"), Repository("https://github.com/c/d", "fall"))
        >>> move('PDL_SOURCE = "git+https://github.com/a/b"')
        'PDL_SOURCE = "git+https://github.com/c/d@fall"'
        >>> move("https://colab.research.google.com/github/a/b/blob/main/notebooks/x.ipynb")
        'https://colab.research.google.com/github/c/d/blob/fall/notebooks/x.ipynb'
        >>> move("see https://github.com/a/b/tree/main/slides and https://github.com/a/b-fork")
        'see https://github.com/c/d/tree/fall/slides and https://github.com/a/b-fork'
    """
    url, slug, branch = (re.escape(s) for s in (old.url, old.slug, old.branch))
    forms = [
        (
            rf"https://colab\.research\.google\.com/github/{slug}/blob/{branch}/",
            lambda m: new.colab_prefix,
        ),
        (rf"git\+{url}(?:@[\w./-]+)?(?![\w-])", lambda m: new.install_source),
        (
            rf"{url}/(?P<kind>blob|tree)/{branch}(?![\w.-])",
            lambda m: f"{new.url}/{m['kind']}/{new.branch}",
        ),
        (rf"{url}(?![\w-])", lambda m: new.url),
    ]
    pattern = re.compile("|".join(f"(?P<form{i}>{form})" for i, (form, _) in enumerate(forms)))

    def replace(match: re.Match) -> str:
        index = next(i for i in range(len(forms)) if match[f"form{i}"] is not None)
        return forms[index][1](match)

    return lambda text: pattern.sub(replace, text)


def text_files(root: Path) -> list[Path]:
    """The files of the checkout that may name the repository (see SUFFIXES and SKIPPED)."""
    files = []
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if any(p in SKIPPED or p.startswith(".") for p in parts[:-1]) or not path.is_file():
            continue
        if path.suffix in SUFFIXES or path.name == "Makefile":
            files.append(path)
    return files


def set_branch(pyproject: str, branch: str) -> str:
    """``pyproject`` with ``[tool.pdl] branch`` set (the section is added when missing).

    Example:
        >>> print(set_branch('[tool.pdl]\\nbranch = "main"  # a comment\\n', "fall"), end="")
        [tool.pdl]
        branch = "fall"  # a comment
    """
    section = _section(pyproject, "tool.pdl")
    if section is None:
        return pyproject.rstrip("\n") + f'\n\n[tool.pdl]\nbranch = "{branch}"\n'
    body = section.group(0)
    if re.search(r'^branch\s*=\s*"[^"]*"', body, re.M):  # the value only: a comment after it stays
        new_body = re.sub(
            r'^(branch\s*=\s*)"[^"]*"', rf'\g<1>"{branch}"', body, count=1, flags=re.M
        )
    else:
        new_body = f'[tool.pdl]\nbranch = "{branch}"\n' + body.removeprefix("[tool.pdl]\n")
    return pyproject[: section.start()] + new_body + pyproject[section.end() :]


def rehost(new: Repository, root: Path = REPO) -> list[Path]:
    """Rewrite every URL of the current repository in ``root`` to ``new``; return the changed files."""
    old = current(root)
    move = rewriter(old, new)
    changed = []
    for path in text_files(root):
        if (
            path.suffix == ".ipynb"
        ):  # through nbformat, so the notebook stays valid and keeps its ids
            nb = nbformat.read(path, as_version=4)
            before = nbformat.writes(nb)
            for cell in nb.cells:
                cell.source = move(cell.source)
            if nbformat.writes(nb) != before:
                nbformat.write(nb, path)
                changed.append(path)
            continue
        text = path.read_text(encoding="utf-8")
        moved = move(text)
        if path == root / "pyproject.toml":
            moved = set_branch(moved, new.branch)
        if moved != text:
            path.write_text(moved, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Print or change the GitHub repository the course lives in."
    )
    parser.add_argument(
        "url", nargs="?", help="https://github.com/OWNER/NAME (omit it to print the current one)"
    )
    parser.add_argument(
        "--branch",
        default=None,
        help=f"the branch (default: keep the current one, else {DEFAULT_BRANCH})",
    )
    parser.add_argument("--root", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    old = current(args.root)
    if not args.url:
        print(f"repository {old.url}, branch {old.branch}")
        return 0
    try:
        new = parse(args.url, args.branch or old.branch)
    except ValueError as error:
        parser.error(str(error))
    changed = rehost(new, args.root)
    for path in changed:
        print(f"rewrote {path.relative_to(args.root)}")
    print(f"{old.url} ({old.branch}) -> {new.url} ({new.branch}): {len(changed)} files changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
