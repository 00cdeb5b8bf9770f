"""Build the course website into build/site/: the executed lectures, their decks, the API reference.

    python tools/build_site.py                                    # make site: from build/notebooks/full/
    python tools/build_site.py --notebooks build/notebooks/fast   # from the fast (CI) run

(Without ``--notebooks``, the fast run's copies are used when only they are complete, and the
build says so.)
    python tools/build_site.py --out /tmp/site --slides /tmp/decks

Three steps:

1. Stage the sources in ``build/site-src/``: the pages of ``site/`` (the home page gets the
   syllabus, read from each notebook's title cell) and one lecture page per notebook: its
   executed copy, with the Colab badge as a local image next to links to its deck (HTML and
   PDF) and to the notebook on GitHub, and the worked solutions collapsed.
2. Sphinx (settings in ``site/conf.py``: myst-nb, sphinx-book-theme, autodoc) writes the HTML.
3. The decks (``build/slides/``: HTML, PDF and their figures) are copied into ``slides/``.

Nothing is executed here: the notebooks come executed from ``tools/run_notebooks.py``, the
decks rendered from ``tools/build_slides.py``. The result opens from disk or any static
web server (``python -m http.server -d build/site``) and fetches nothing from the network.
"""

from __future__ import annotations

import argparse
import copy
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from sphinx.cmd.build import build_main

# Run as a script (python tools/...py), the repository root is not on sys.path: put it there
# so that `tools.` imports work the same as under pytest.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.repository import Repository, current
from tools.run_notebooks import BUILD as NOTEBOOK_BUILD
from tools.run_notebooks import REPO, notebook_paths

SITE = REPO / "site"
STAGING = REPO / "build" / "site-src"
OUT = REPO / "build" / "site"
SLIDES = REPO / "build" / "slides"
PAGES = ("index.md", "setup.md", "troubleshooting.md", "instructors.md", "api.md")
MATHJAX = (
    SITE / "node_modules" / "mathjax" / "es5" / "tex-svg-full.js"
)  # site/package.json, served locally
BADGE = re.compile(
    r"\[!\[[^\]]*\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]\([^)]*\)"
)


class BuildError(RuntimeError):
    """The site cannot be built: an input is missing, or Sphinx failed."""


@dataclass
class Lecture:
    """What the home page says about one lecture, read from its notebook's title cell."""

    name: str  # 01_tensors
    number: str  # 01
    title: str  # Tensors
    objectives: list[str]
    time: str  # "60 minutes", or "" when the notebook does not say


def lecture(nb: nbformat.NotebookNode, name: str) -> Lecture:
    """The title, learning objectives and estimated time of a lecture notebook.

    Example:
        >>> nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
        ...     "# 01 · Tensors\\n\\n**You will learn to**\\n- create tensors;\\n- index them.\\n\\n"
        ...     "**Estimated time**: 60 minutes.")])
        >>> lecture(nb, "01_tensors")
        Lecture(name='01_tensors', number='01', title='Tensors', objectives=['create tensors;', 'index them.'], time='60 minutes')
    """
    text = nb.cells[0].source if nb.cells and nb.cells[0].cell_type == "markdown" else ""
    heading = next(
        (ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("# ")), name
    )
    number, _, title = heading.partition(" · ")
    if not title:
        number, title = name[:2], heading
    learn = re.search(r"\*\*You will learn to\*\*\s*\n((?:\s*- .*\n?)+)", text)
    objectives = (
        [ln.strip()[2:] for ln in learn.group(1).splitlines() if ln.strip()] if learn else []
    )
    spent = re.search(r"\*\*(?:Estimated time|Time)(?::\*\*|\*\*:)\s*(.+?)\.(?:\s|$)", text, re.S)
    return Lecture(
        name,
        number.strip(),
        title.strip(),
        objectives,
        " ".join(spent.group(1).split()) if spent else "",
    )


def deck_links(name: str, prefix: str) -> str:
    """Inline HTML links to a lecture's deck, relative to a page ``prefix`` ('' or '../')."""
    return f'<a href="{prefix}slides/{name}.html">slides</a> (<a href="{prefix}slides/{name}.pdf">PDF</a>)'


def lecture_page(
    nb: nbformat.NotebookNode, name: str, repository: Repository
) -> nbformat.NotebookNode:
    """The executed notebook as a site page: local Colab badge, deck links, solutions collapsed."""
    nb = copy.deepcopy(nb)
    links = (
        f'<p class="pdl-lecture-links"><a href="{repository.colab(name + ".ipynb")}">'
        '<img src="../_static/colab-badge.svg" alt="Open In Colab" width="117" height="20"></a> '
        f"<span>{deck_links(name, '../')}</span> "
        f'<a href="{repository.blob(f"notebooks/{name}.ipynb")}">the notebook on GitHub</a></p>'
    )
    title = nb.cells[0]
    if BADGE.search(title.source):
        title.source = BADGE.sub(lambda _: links, title.source, count=1)
    else:  # no badge in the title cell: the links go right under its heading
        head, _, rest = title.source.partition("\n")
        title.source = f"{head}\n\n{links}\n{rest}"
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if cell.cell_type == "code" and "solution" in tags and "hide-input" not in tags:
            tags.append("hide-input")  # collapsed behind "Show code cell source", as in Jupyter
    nb.metadata.pop("widgets", None)
    return nb


def home_page(template: str, lectures: list[Lecture], repository: Repository) -> str:
    """``site/index.md`` with its syllabus, the lectures' objectives and the toctree filled in."""
    rows = ["| # | Lecture | Deck | Time |", "|---|---|---|---|"]
    rows += [
        f"| {lec.number} | [{lec.title}](notebooks/{lec.name}.ipynb) | {deck_links(lec.name, '')} | {lec.time} |"
        for lec in lectures
    ]
    objectives = []
    for lec in lectures:
        objectives.append(f"### {lec.number} · {lec.title}\n")
        objectives += [f"- {item}" for item in lec.objectives] or ["(see the lecture)"]
        objectives.append(f"\n[Open the lecture](notebooks/{lec.name}.ipynb)\n")
    return fill(
        template,
        repository,
        syllabus="\n".join(rows),
        objectives="\n".join(objectives),
        lectures="\n".join(f"notebooks/{lec.name}" for lec in lectures),
    )


def fill(page: str, repository: Repository, **fields: str) -> str:
    """Replace ``{{ name }}`` placeholders in a page; ``repository_link`` is always known.

    Example:
        >>> fill("at {{ repository_link }}", Repository("https://github.com/a/b"))
        'at [a/b](https://github.com/a/b)'
    """
    fields["repository_link"] = f"[{repository.slug}]({repository.url})"
    for key, value in fields.items():
        page = page.replace("{{ " + key + " }}", value)
    left = re.findall(r"\{\{ \w+ \}\}", page)
    if left:
        raise BuildError(f"unknown placeholders {left} in a page of site/")
    return page


def executed_notebooks() -> Path:
    """``build/notebooks/full/`` when it holds every notebook executed (``make``), else the fast run's folder."""
    for mode in ("full", "fast"):
        if all((NOTEBOOK_BUILD / mode / p.name).is_file() for p in notebook_paths()):
            return NOTEBOOK_BUILD / mode
    return NOTEBOOK_BUILD / "full"  # incomplete everywhere: stage() names what is missing


def stale(notebooks: Path) -> list[str]:
    """The notebooks edited since their copy in ``notebooks`` was executed."""
    return [
        f"{p.name} changed after it was executed into {notebooks}"
        for p in notebook_paths()
        if (notebooks / p.name).is_file()
        and p.stat().st_mtime > (notebooks / p.name).stat().st_mtime
    ]


def stage(notebooks: Path, staging: Path = STAGING) -> list[Lecture]:
    """Write Sphinx's source folder: the pages and one lecture page per notebook."""
    sources = notebook_paths()
    missing = [p.name for p in sources if not (notebooks / p.name).is_file()]
    if missing:
        raise BuildError(
            f"no executed copy of {', '.join(missing)} in {notebooks}: run "
            "`make notebooks` (or tools/run_notebooks.py --mode fast and --notebooks build/notebooks/fast)"
        )
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "notebooks").mkdir(parents=True)
    repository = current(REPO)
    lectures = []
    for source in sources:
        nb = nbformat.read(notebooks / source.name, as_version=4)
        lectures.append(lecture(nb, source.stem))
        nbformat.write(
            lecture_page(nb, source.stem, repository), staging / "notebooks" / source.name
        )
    for page in PAGES:
        text = (SITE / page).read_text(encoding="utf-8")
        text = (
            home_page(text, lectures, repository) if page == "index.md" else fill(text, repository)
        )
        (staging / page).write_text(text, encoding="utf-8")
    return lectures


def copy_decks(lectures: list[Lecture], slides: Path, out: Path) -> None:
    """Copy each lecture's deck (HTML, PDF) and the decks' figures into ``out/slides/``."""
    wanted = [slides / f"{lec.name}.{kind}" for lec in lectures for kind in ("html", "pdf")]
    missing = [p.name for p in wanted if not p.is_file()]
    if missing:
        raise BuildError(f"decks not rendered in {slides}: {', '.join(missing)}; run `make slides`")
    target = out / "slides"
    target.mkdir(parents=True, exist_ok=True)
    for path in wanted:
        shutil.copy2(path, target / path.name)
        if (
            path.suffix == ".html"
        ):  # the site's icon, or the browser asks the server for /favicon.ico
            html = path.read_text(encoding="utf-8")
            icon = '<head><link rel="icon" href="../_static/favicon.svg" type="image/svg+xml">'
            (target / path.name).write_text(html.replace("<head>", icon, 1), encoding="utf-8")
    if (slides / "figures").is_dir():
        shutil.copytree(slides / "figures", target / "figures")


def build(
    notebooks: Path,
    slides: Path = SLIDES,
    out: Path = OUT,
    staging: Path = STAGING,
    quiet: bool = False,
) -> tuple[int, float, list[str]]:
    """Build the site; return its page count, the seconds it took and the warnings (Sphinx's, stale notebooks)."""
    started = time.perf_counter()
    if not MATHJAX.is_file():
        raise BuildError(
            f"MathJax is not installed ({MATHJAX}): run `make site`, or `npm ci` in site/"
        )
    if out.exists() and any(out.iterdir()):
        if not (out / ".buildinfo").exists():
            raise BuildError(f"{out} exists and is not a site built here: not overwriting it")
        shutil.rmtree(
            out
        )  # a site this script built: start afresh, so no page of a removed lecture stays
    lectures = stage(notebooks, staging)
    warnings_file = staging / "warnings.txt"
    arguments = [
        "-b",
        "html",
        "-c",
        str(SITE),
        "-d",
        str(staging / ".doctrees"),
        "-w",
        str(warnings_file),
        "-j",
        "auto",
        str(staging),
        str(out),
    ]
    status = build_main(arguments + (["-q"] if quiet else []))  # Sphinx prints its warnings itself
    outdated = stale(notebooks)
    for warning in outdated:
        print(f"WARNING: {warning}", file=sys.stderr)
    warnings = outdated + [
        ln for ln in warnings_file.read_text(encoding="utf-8").splitlines() if ln.strip()
    ]
    if status != 0:
        raise BuildError("Sphinx failed:\n" + "\n".join(warnings[-30:]))
    copy_decks(lectures, slides, out)
    pages = len([p for p in out.rglob("*.html") if "_static" not in p.relative_to(out).parts])
    return pages, time.perf_counter() - started, warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the course website (Sphinx + myst-nb) into build/site/."
    )
    parser.add_argument(
        "--notebooks",
        type=Path,
        default=None,
        help="executed notebooks (default build/notebooks/full, else build/notebooks/fast when only that is complete)",
    )
    parser.add_argument(
        "--slides", type=Path, default=SLIDES, help="rendered decks (default build/slides)"
    )
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default build/site)")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or executed_notebooks()
    print(f"lectures from {notebooks}, decks from {args.slides}")
    try:
        pages, seconds, warnings = build(
            notebooks.resolve(), args.slides.resolve(), args.out.resolve(), quiet=True
        )
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"{args.out}: {pages} pages in {seconds:.1f} s, {len(warnings)} warnings (above); "
        f"preview with: python -m http.server -d {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
