"""Render the lecture decks: figures first, then every deck to HTML and PDF with Marp CLI.

    python tools/build_slides.py                 # figures + every deck -> build/slides/
    python tools/build_slides.py 03 04           # only decks whose name starts with 03 or 04
    python tools/build_slides.py --no-pdf        # HTML only (no Chromium needed)
    python tools/build_slides.py --check-code    # also run every ```python block of each deck

What lands in ``build/slides/`` (``--out`` to change it):

- ``figures/*.png``: drawn by ``tools/make_figures.py``;
- ``NN_slug.md``: a copy of each deck, placed next to ``figures/`` so that the decks' relative
  links (``figures/x.png``) resolve the same way for the HTML and for the PDF (Marp resolves
  local images relative to the Markdown file when Chromium prints the PDF);
- ``NN_slug.html``: Marp's presenter-ready HTML (open it from disk: nothing is fetched from
  the network; math is pre-rendered as SVG by MathJax, fonts are local);
- ``NN_slug.pdf``: one page per slide, printed by Chromium;
- ``report.json``: per deck, the slide and page counts, render seconds and any warnings.

Marp CLI comes from ``slides/node_modules`` (pinned in ``slides/package-lock.json``; ``make
slides`` runs ``npm ci`` there). The PDF needs a Chromium-family browser: ``CHROME_PATH`` or
the first of chromium / chromium-browser / google-chrome on the PATH. Marp adds Chromium's
``--no-sandbox`` by itself when it runs as root; elsewhere set ``CHROME_NO_SANDBOX=1`` if
Chromium cannot start its sandbox (e.g. in some containers).

The module also holds the small deck parser the tests use (slides, code blocks, images,
speaker notes), so the build and the tests read a deck the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SLIDES = REPO / "slides"
THEME = SLIDES / "pdl.css"
DEFAULT_OUT = REPO / "build" / "slides"
MARP = SLIDES / "node_modules" / ".bin" / "marp"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# The info string that marks a ```python block as deliberately not runnable (pseudo-code, an
# error on purpose, TensorFlow or JAX for comparison). Marp highlights by the first word, so
# the block still renders as Python. Anything else after "python" is an error (a typo such as
# "python skp" must not silently stop a block from running).
SKIP_MARKER = "skip"

# Marp's one expected warning: it says that --allow-local-files is on, which the PDF needs to
# embed the figures (local files that this repository generated).
EXPECTED_WARNINGS = ("Insecure local file accessing is enabled",)


# --------------------------------------------------------------------------------------
# Reading a deck
# --------------------------------------------------------------------------------------

FENCE = re.compile(r"^(```+|~~~+)(.*)$")
COMMENT = re.compile(r"<!--(.*?)-->", re.DOTALL)
IMAGE = re.compile(r"!\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# Marp directives written as HTML comments ("<!-- _class: lead -->"): not speaker notes.
DIRECTIVE = re.compile(r"^\s*_?[a-zA-Z]+\s*:")


@dataclass
class CodeBlock:
    """One fenced code block of a deck."""

    slide: int  # 1-based slide number
    line: int  # 1-based line of the opening fence in the deck file
    lang: str  # first word of the info string ("python", "bash", ...)
    info: str  # the whole info string
    source: str

    @property
    def skipped(self) -> bool:
        """True for ```python skip blocks, which are shown but never executed."""
        return self.info.split()[1:2] == [SKIP_MARKER]


@dataclass
class Slide:
    """One slide: its Markdown and where it starts in the file."""

    number: int
    line: int
    text: str

    @property
    def notes(self) -> list[str]:
        """The speaker notes: HTML comments that are not Marp directives.

        Example:
            >>> Slide(1, 1, "# Hi\\n<!-- _class: title -->\\n<!-- Say hello. -->").notes
            ['Say hello.']
        """
        return [
            c.strip() for c in COMMENT.findall(_without_code(self.text)) if not DIRECTIVE.match(c)
        ]


@dataclass
class Deck:
    """A Marp deck: front matter, slides, code blocks, image links."""

    path: Path
    front_matter: dict
    slides: list[Slide]
    code: list[CodeBlock]

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def images(self) -> list[tuple[int, str]]:
        """``(slide number, link)`` of every Markdown image outside code blocks."""
        found = []
        for slide in self.slides:
            text = COMMENT.sub("", _without_code(slide.text))
            found.extend((slide.number, match.group(2)) for match in IMAGE.finditer(text))
        return found

    def visible_text(self) -> str:
        """What the audience sees: the slides without speaker notes and directives, code included."""
        return "\n".join(COMMENT.sub(" ", slide.text) for slide in self.slides)


def _without_code(text: str) -> str:
    """``text`` with fenced code blocks removed (a ``<!--`` inside code is not a comment)."""
    out, fence = [], None
    for line in text.splitlines():
        match = FENCE.match(line.strip())
        if fence is None and match:
            fence = match.group(1)
            continue
        if fence is not None:
            if _closes(fence, line.strip()):
                fence = None
            continue
        out.append(line)
    return "\n".join(out)


def _closes(fence: str, stripped: str) -> bool:
    """Whether a (stripped) line closes the code block opened with ``fence``: the same
    backticks or tildes and nothing after them."""
    return stripped.startswith(fence) and not stripped[len(fence) :].strip()


def parse_deck(path: str | Path) -> Deck:
    """Split a Marp deck into front matter, slides and code blocks.

    Slides are separated by a line ``---`` outside code blocks (Marp's rule); the YAML front
    matter is the block between the first two ``---`` lines at the very top.

    Example:
        >>> import tempfile
        >>> md = Path(tempfile.mkdtemp()) / "99_demo.md"
        >>> _ = md.write_text("---\\nmarp: true\\n---\\n# One\\n\\n---\\n\\n```python\\nx = 1\\n```\\n")
        >>> deck = parse_deck(md)
        >>> len(deck.slides), deck.front_matter, deck.code[0].slide, deck.code[0].source
        (2, {'marp': True}, 2, 'x = 1\\n')
    """
    import yaml

    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    front_matter: dict = {}
    start = 0
    if lines and lines[0].strip() == "---":
        end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
        if end is None:
            raise ValueError(
                f"{path}: the front matter starting on line 1 is never closed with ---"
            )
        front_matter = yaml.safe_load("\n".join(lines[1:end])) or {}
        start = end + 1

    slides: list[Slide] = []
    code: list[CodeBlock] = []
    current: list[str] = []
    current_start = start + 1
    fence: str | None = None
    block: dict | None = None
    for index in range(start, len(lines)):
        line = lines[index]
        stripped = line.strip()
        if fence is None:
            match = FENCE.match(stripped)
            if match:
                fence = match.group(1)
                info = match.group(2).strip()
                block = {
                    "line": index + 1,
                    "info": info,
                    "lines": [],
                    "indent": len(line) - len(line.lstrip()),
                }
            elif stripped == "---":
                slides.append(Slide(len(slides) + 1, current_start, "\n".join(current)))
                current, current_start = [], index + 2
                continue
        elif _closes(fence, stripped):
            fence = None
            info = block["info"]
            code.append(
                CodeBlock(
                    slide=len(slides) + 1,
                    line=block["line"],
                    lang=(info.split() or [""])[0],
                    info=info,
                    source="".join(f"{text[block['indent'] :]}\n" for text in block["lines"]),
                )
            )
            block = None
        elif block is not None:
            block["lines"].append(line)
        current.append(line)
    if fence is not None:
        raise ValueError(f"{path}: the code block opened on line {block['line']} is never closed")
    slides.append(Slide(len(slides) + 1, current_start, "\n".join(current)))
    return Deck(path=path, front_matter=front_matter, slides=slides, code=code)


def deck_paths(names: list[str] | None = None) -> list[Path]:
    """The decks ``slides/NN_*.md``, or those whose name starts with one of ``names``.

    Example:
        >>> [p.name for p in deck_paths(["00"])]
        ['00_frameworks.md']
    """
    paths = sorted(SLIDES.glob("[0-9][0-9]_*.md"))
    if names:
        paths = [p for p in paths if any(p.stem.startswith(n) for n in names)]
    return paths


# --------------------------------------------------------------------------------------
# Running a deck's code
# --------------------------------------------------------------------------------------

# Executes the blocks one after the other in one namespace, as a student pasting them into
# one notebook would; reports the first failure with the slide it came from.
_RUNNER = textwrap.dedent(
    """
    import json, sys, time, traceback
    blocks = json.load(open(sys.argv[1]))
    namespace = {"__name__": "__main__"}
    for block in blocks:
        start = time.perf_counter()
        label = f"slide {block['slide']}, line {block['line']}"
        try:
            exec(compile(block["source"], f"<{block['deck']} {label}>", "exec"), namespace)
        except BaseException:
            print(f"@@FAILED {label}", flush=True)
            traceback.print_exc()
            sys.exit(1)
        print(f"@@OK {label} {time.perf_counter() - start:.2f}s", flush=True)
    """
)


@dataclass
class CodeRun:
    """What running one deck's python blocks gave."""

    deck: str
    ran: int
    skipped: int
    seconds: float
    ok: bool
    output: str
    failed_at: str | None = None


def run_code(deck: Deck, *, timeout: float = 300, python: str = sys.executable) -> CodeRun:
    """Execute every runnable ```python block of ``deck`` in order, in one fresh process.

    The process runs in an empty temporary directory (so files the code writes, e.g. a
    checkpoint or ``runs/``, vanish afterwards) with matplotlib's non-interactive backend.

    Example:
        >>> run_code(parse_deck(deck_paths(["01"])[0])).ok  # doctest: +SKIP
        True
    """
    runnable = [b for b in deck.code if b.lang == "python" and not b.skipped]
    skipped = sum(1 for b in deck.code if b.lang == "python" and b.skipped)
    blocks = [
        {"deck": deck.name, "slide": b.slide, "line": b.line, "source": b.source} for b in runnable
    ]
    env = {
        **os.environ,
        "MPLBACKEND": "Agg",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        # The blocks use tiny tensors: one thread is fastest, and on a busy machine several
        # threads per small operation spend most of their time waiting for each other.
        "OMP_NUM_THREADS": os.environ.get("PDL_SLIDES_THREADS", "1"),
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"deck-{deck.name}-") as workdir:
        spec = Path(workdir) / "blocks.json"
        spec.write_text(json.dumps(blocks))
        script = Path(workdir) / "run_blocks.py"
        script.write_text(_RUNNER)
        try:
            result = subprocess.run(
                [python, str(script), str(spec)],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            output, ok = result.stdout + result.stderr, result.returncode == 0
        except subprocess.TimeoutExpired as error:
            output = f"{error.stdout or ''}{error.stderr or ''}\ntimed out after {timeout} s"
            ok = False
    failed = re.search(r"@@FAILED (.*)", output)
    if not ok and failed is None:  # died without saying where: it was the block after the last OK
        done = len(re.findall(r"^@@OK ", output, re.MULTILINE))
        failed_at = (
            f"slide {runnable[done].slide}, line {runnable[done].line}"
            if done < len(runnable)
            else "?"
        )
    else:
        failed_at = failed.group(1) if failed else None
    return CodeRun(
        deck=deck.name,
        ran=len(runnable),
        skipped=skipped,
        seconds=time.perf_counter() - start,
        ok=ok,
        output=output,
        failed_at=failed_at,
    )


# --------------------------------------------------------------------------------------
# Rendering with Marp CLI
# --------------------------------------------------------------------------------------


class BuildError(RuntimeError):
    """A tool the build needs is missing, or a deck failed to render."""


def find_browser() -> str:
    """The Chromium-family browser Marp prints PDFs with: ``CHROME_PATH`` or one on the PATH.

    Example:
        >>> find_browser()  # doctest: +SKIP
        '/usr/bin/chromium'
    """
    configured = os.environ.get("CHROME_PATH")
    if configured:
        if not Path(configured).exists():
            raise BuildError(f"CHROME_PATH is set to {configured}, which does not exist")
        return configured
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise BuildError(
        "No Chromium-family browser found to print the PDFs (looked for CHROME_PATH and "
        f"{', '.join(BROWSERS)} on the PATH). Install one, e.g. `apt-get install chromium` on "
        "Debian/Ubuntu, or set CHROME_PATH; or build HTML only with --no-pdf."
    )


def marp_executable() -> Path:
    """The pinned Marp CLI in ``slides/node_modules``; a clear error when it is not installed."""
    if not MARP.exists():
        raise BuildError(
            f"Marp CLI is not installed ({MARP.relative_to(REPO)} is missing). Run "
            "`make slides/node_modules/.installed` (or `cd slides && npm ci`); it needs Node.js >= 18."
        )
    return MARP


@dataclass
class Render:
    """One Marp run: the file it wrote, how long it took, and what it warned about."""

    output: Path
    seconds: float
    warnings: list[str]
    log: str


def marp_warnings(log: str) -> list[str]:
    """The WARN/ERROR messages in Marp's output, minus the expected ``--allow-local-files`` one.

    A message can continue on indented lines; they are joined to it.

    Example:
        >>> marp_warnings("[  INFO ] ok\\n[  WARN ] The local file is missing and will be ignored.\\n"
        ...               "          Make sure the file path is correct.\\n"
        ...               "[  WARN ] Insecure local file accessing is enabled for conversion from x.md.")
        ['[  WARN ] The local file is missing and will be ignored. Make sure the file path is correct.']
    """
    messages: list[str] = []
    for line in log.splitlines():
        if line.startswith("[") and "]" in line:
            messages.append(line.strip())
        elif line.startswith(" ") and messages and line.strip():
            messages[-1] += " " + line.strip()
        elif line.strip():
            messages.append(line.strip())
    problems = [m for m in messages if re.search(r"\b(WARN|WARNING|ERROR)\b", m)]
    return [m for m in problems if not any(expected in m for expected in EXPECTED_WARNINGS)]


def render(
    deck_md: Path, output: Path, *, pdf: bool, browser: str | None = None, timeout: float = 180
) -> Render:
    """Render one deck with Marp CLI to ``output`` (HTML, or PDF when ``pdf``).

    Example:
        >>> render(Path("build/slides/01_tensors.md"), Path("build/slides/01_tensors.pdf"), pdf=True)  # doctest: +SKIP
    """
    command = [
        str(marp_executable()),
        str(deck_md),
        "--output",
        str(output),
        "--theme-set",
        str(THEME),
        "--no-stdin",
        "--no-config-file",
    ]
    if pdf:
        command += ["--pdf", "--allow-local-files", "--browser-path", browser or find_browser()]
    start = time.perf_counter()
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=deck_md.parent
        )
    except subprocess.TimeoutExpired as error:
        raise BuildError(f"Marp did not finish {output.name} within {timeout} s") from error
    seconds = time.perf_counter() - start
    log = result.stdout + result.stderr
    if result.returncode != 0 or not output.exists():
        raise BuildError(
            f"Marp failed on {deck_md.name} -> {output.name} (exit {result.returncode}):\n{log}"
        )
    return Render(output=output, seconds=seconds, warnings=marp_warnings(log), log=log)


def pdf_pages(path: Path) -> int:
    """Number of pages of a PDF, read with poppler's ``pdfinfo`` (or pypdf if it is missing).

    Example:
        >>> pdf_pages(Path("build/slides/01_tensors.pdf"))  # doctest: +SKIP
        19
    """
    if shutil.which("pdfinfo"):
        info = subprocess.run(
            ["pdfinfo", str(path)], capture_output=True, text=True, check=True
        ).stdout
        return int(re.search(r"^Pages:\s+(\d+)", info, re.MULTILINE).group(1))
    from pypdf import PdfReader

    return len(PdfReader(str(path)).pages)


# The theme's slide is 1280 x 720 px with 64 px of padding at the bottom and the sides; the
# PDF page is the same box in points (960 x 540 pt, 0.75 pt per px).
CONTENT_BOTTOM_PT = (720 - 64) * 0.75
CONTENT_RIGHT_PT = (1280 - 64) * 0.75
TOLERANCE_PT = 3.0


def overflowing_text(path: Path) -> list[tuple[int, str]]:
    """Text that runs into the bottom or right margin of a page: ``(page, words)`` per page.

    Marp clips a slide at its edge but not at its padding, so content that does not fit shows
    up in the margin (over the footer) before it disappears. Word boxes come from poppler's
    ``pdftotext -bbox``; the footer row (the lecture title and "n / total") is left out.

    Example:
        >>> overflowing_text(Path("build/slides/02_autograd.pdf"))  # doctest: +SKIP
        []
    """
    import html as html_lib

    if not shutil.which("pdftotext"):
        raise BuildError("pdftotext (poppler-utils) is needed to check the PDF pages for overflow")
    xml = subprocess.run(
        ["pdftotext", "-bbox", str(path), "-"], capture_output=True, text=True, check=True
    ).stdout
    problems = []
    for number, page in enumerate(re.findall(r"<page\b.*?</page>", xml, re.DOTALL), start=1):
        words = [
            (float(x0), float(y0), float(x1), float(y1), html_lib.unescape(text))
            for x0, y0, x1, y1, text in re.findall(
                r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">(.*?)</word>',
                page,
            )
        ]
        footer_rows = {
            round(y0, 1) for _, y0, _, _, text in words if y0 > CONTENT_BOTTOM_PT and text == "PDL"
        }
        outside = [
            text
            for x0, y0, x1, y1, text in words
            if round(y0, 1) not in footer_rows
            and (y1 > CONTENT_BOTTOM_PT + TOLERANCE_PT or x1 > CONTENT_RIGHT_PT + TOLERANCE_PT)
        ]
        if outside:
            problems.append((number, " ".join(outside)))
    return problems


def html_slides(path: Path) -> int:
    """Number of slides in Marp's HTML output (one ``<section id="n">`` each).

    Example:
        >>> html_slides(Path("build/slides/01_tensors.html"))  # doctest: +SKIP
        19
    """
    return len(re.findall(r'<section\b[^>]*\bid="\d+"', path.read_text(encoding="utf-8")))


@dataclass
class DeckReport:
    """Everything the build learned about one deck."""

    name: str
    slides: int
    html: str
    html_seconds: float
    html_slides: int
    pdf: str | None = None
    pdf_seconds: float | None = None
    pdf_pages: int | None = None
    overflow: list[tuple[int, str]] = field(default_factory=list)  # (page, text in the margin)
    warnings: list[str] = field(default_factory=list)
    code: dict | None = None

    @property
    def ok(self) -> bool:
        counts_match = self.html_slides == self.slides and (
            self.pdf_pages is None or self.pdf_pages == self.slides
        )
        code_ok = self.code is None or self.code["ok"]
        return not self.warnings and not self.overflow and counts_match and code_ok


def build_deck(
    path: Path,
    out_dir: Path,
    *,
    pdf: bool = True,
    browser: str | None = None,
    check_code: bool = False,
) -> DeckReport:
    """Stage ``path`` next to the figures in ``out_dir`` and render it to HTML (and PDF)."""
    deck = parse_deck(path)
    staged = out_dir / path.name
    shutil.copyfile(path, staged)
    html = render(staged, out_dir / f"{path.stem}.html", pdf=False)
    report = DeckReport(
        name=path.stem,
        slides=len(deck.slides),
        html=str(html.output),
        html_seconds=html.seconds,
        html_slides=html_slides(html.output),
        warnings=list(html.warnings),
    )
    if pdf:
        printed = render(staged, out_dir / f"{path.stem}.pdf", pdf=True, browser=browser)
        report.pdf, report.pdf_seconds = str(printed.output), printed.seconds
        report.pdf_pages = pdf_pages(printed.output)
        report.overflow = overflowing_text(printed.output)
        report.warnings += printed.warnings
    if check_code:
        run = run_code(deck)
        report.code = {k: v for k, v in asdict(run).items() if k != "output"}
        if not run.ok:
            report.code["output"] = run.output[-3000:]
    return report


def build(
    out_dir: Path = DEFAULT_OUT,
    names: list[str] | None = None,
    *,
    pdf: bool = True,
    figures: bool = True,
    check_code: bool = False,
    verbose: bool = True,
) -> list[DeckReport]:
    """Draw the figures, then render every deck (or those in ``names``) into ``out_dir``.

    Example:
        >>> reports = build(Path("build/slides"), ["01"])  # doctest: +SKIP
        >>> reports[0].pdf_pages == reports[0].slides  # doctest: +SKIP
        True
    """
    paths = deck_paths(names)
    if not paths:
        raise BuildError(f"no decks match {names} in {SLIDES}")
    out_dir.mkdir(parents=True, exist_ok=True)
    browser = find_browser() if pdf else None
    marp_executable()
    say = print if verbose else (lambda *_: None)
    if figures:
        from tools.make_figures import generate

        start = time.perf_counter()
        say(f"figures -> {out_dir / 'figures'}")
        generate(out_dir / "figures", verbose=verbose)
        say(f"figures done in {time.perf_counter() - start:.1f} s")
    reports = []
    for path in paths:
        report = build_deck(path, out_dir, pdf=pdf, browser=browser, check_code=check_code)
        reports.append(report)
        pdf_part = f", PDF {report.pdf_seconds:.1f} s, {report.pdf_pages} pages" if pdf else ""
        code_part = ""
        if report.code is not None:
            code_part = f", code {'ok' if report.code['ok'] else 'FAILED at ' + str(report.code['failed_at'])}"
        say(
            f"{report.name}: {report.slides} slides, HTML {report.html_seconds:.1f} s{pdf_part}{code_part}"
            + ("" if report.ok else "  <-- PROBLEM")
        )
        for warning in report.warnings:
            say(f"    {warning}")
        for page, text in report.overflow:
            say(f"    slide {page} overflows its margin: {text[:100]}")
    (out_dir / "report.json").write_text(json.dumps([asdict(r) for r in reports], indent=2))
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="decks to build, by name prefix (default: all)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output folder (default: build/slides)"
    )
    parser.add_argument("--no-pdf", action="store_true", help="HTML only")
    parser.add_argument(
        "--no-figures", action="store_true", help="reuse the figures already in --out"
    )
    parser.add_argument(
        "--check-code", action="store_true", help="also run every python block of each deck"
    )
    args = parser.parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # for `from tools.make_figures import generate`
    start = time.perf_counter()
    try:
        reports = build(
            args.out,
            args.names or None,
            pdf=not args.no_pdf,
            figures=not args.no_figures,
            check_code=args.check_code,
        )
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    bad = [r.name for r in reports if not r.ok]
    print(
        f"{len(reports)} decks in {args.out} ({time.perf_counter() - start:.1f} s)"
        + (f"; problems in {', '.join(bad)} (see report.json)" if bad else "")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
