"""The lecture decks in slides/: they render, their code runs, their figures exist, they cover the syllabus.

The decks are rendered once per test session (figures, HTML and PDF, into a temporary folder)
by ``tools/build_slides.py``; the tests then read what that build produced. Rendering needs
Marp CLI (``make slides/node_modules/.installed``) and Chromium; without them the tests fail
and say what to install.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from tools.build_slides import (
    EXPECTED_WARNINGS,
    REPO,
    SLIDES,
    BuildError,
    DeckReport,
    build,
    deck_paths,
    find_browser,
    marp_warnings,
    parse_deck,
    run_code,
)
from tools.make_figures import FIGURES

LECTURES = [
    "00_frameworks",
    "01_tensors",
    "02_autograd",
    "03_nn_module",
    "04_training_tricks",
    "05_cnn",
    "06_batchnorm",
    "07_finetuning_resnet",
    "08_model_to_application",
]
DECKS = {path.stem: parse_deck(path) for path in deck_paths()}
TOPICS = yaml.safe_load((SLIDES / "topics.yaml").read_text(encoding="utf-8"))
MIN_SLIDES, MAX_SLIDES = 15, 40
# Longer code lines make Marp shrink the whole block (its auto-scaling), and then it is hard
# to read from the back of the room. 88 characters fit the theme's code font at full size.
MAX_CODE_LINE = 88
# Words a syllabus fragment may leave uncovered: connectives, not topics.
STOPWORDS = {
    "a",
    "an",
    "and",
    "as",
    "by",
    "e",
    "for",
    "from",
    "g",
    "in",
    "is",
    "it",
    "its",
    "of",
    "on",
    "or",
    "the",
    "then",
    "to",
    "vs",
    "with",
}


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> tuple[Path, dict[str, DeckReport]]:
    """Figures + every deck to HTML and PDF, once per session."""
    try:
        find_browser()
    except BuildError as error:
        pytest.fail(f"Chromium is needed to render the decks to PDF: {error}")
    out = tmp_path_factory.mktemp("slides")
    try:
        reports = build(out, verbose=False)
    except BuildError as error:
        pytest.fail(str(error))
    return out, {report.name: report for report in reports}


def normalized(text: str) -> str:
    """Lower case, no emphasis or code marks, single spaces: what phrase matching compares."""
    return re.sub(r"\s+", " ", text.replace("*", "").replace("`", "")).strip().lower()


# --------------------------------------------------------------------------------------
# The decks as Markdown
# --------------------------------------------------------------------------------------


def test_one_deck_per_lecture():
    assert sorted(DECKS) == LECTURES


@pytest.mark.parametrize("name", LECTURES)
def test_front_matter(name):
    front = DECKS[name].front_matter
    assert front.get("marp") is True
    assert front.get("theme") == "pdl", "every deck uses the course theme (slides/pdl.css)"
    # MathJax renders math to inline SVG; KaTeX would fetch its fonts from a CDN.
    assert front.get("math") == "mathjax", "math must be pre-rendered offline: use `math: mathjax`"
    assert front.get("paginate") is True, "the footer shows the slide number"
    assert str(front.get("footer", "")).startswith(f"PDL {name[:2]} ")
    assert front.get("title", "").startswith(name[:2])


@pytest.mark.parametrize("name", LECTURES)
def test_slide_count(name):
    count = len(DECKS[name].slides)
    assert MIN_SLIDES <= count <= MAX_SLIDES, (
        f"{name} has {count} slides; aim for {MIN_SLIDES}-{MAX_SLIDES}"
    )


@pytest.mark.parametrize("name", LECTURES)
def test_deck_ends_with_its_notebook(name):
    last = DECKS[name].slides[-1]
    assert f"notebooks/{name}.ipynb" in last.text, (
        f"the last slide of {name} must point to its notebook"
    )


@pytest.mark.parametrize("name", LECTURES)
def test_speaker_notes(name):
    deck = DECKS[name]
    without = [slide.number for slide in deck.slides if not slide.notes]
    assert len(without) <= len(deck.slides) // 10, (
        f"{name}: slides without speaker notes: {without}"
    )


@pytest.mark.parametrize("name", LECTURES)
def test_code_blocks_are_marked_and_readable(name):
    for block in DECKS[name].code:
        where = f"{name} slide {block.slide} (line {block.line})"
        assert block.lang, f"{where}: a code block needs a language for highlighting"
        assert block.lang not in ("py", "python3", "ipython"), (
            f"{where}: write ```python (or ```python skip)"
        )
        if block.lang == "python":
            words = block.info.split()
            assert words == ["python"] or words[1] == "skip", (
                f"{where}: unknown marker {block.info!r}; use ```python, or ```python skip for a block "
                "that is deliberately not run"
            )
        long = [line for line in block.source.splitlines() if len(line) > MAX_CODE_LINE]
        assert not long, (
            f"{where}: lines over {MAX_CODE_LINE} characters get shrunk on the slide: {long}"
        )


def test_skip_marker_is_recognized(tmp_path):
    deck_file = tmp_path / "99_demo.md"
    deck_file.write_text(
        "---\nmarp: true\n---\n\n```python skip\nimport tensorflow\n```\n\n---\n\n"
        '```python\nx = """\n---\n"""\n```\n\n```bash\nls\n```\n'
    )
    deck = parse_deck(deck_file)
    assert len(deck.slides) == 2, "a --- inside a code block is not a slide break"
    assert [(b.lang, b.skipped, b.slide) for b in deck.code] == [
        ("python", True, 1),
        ("python", False, 2),
        ("bash", False, 2),
    ]
    run = run_code(deck, timeout=60)
    assert run.ok and run.ran == 1 and run.skipped == 1


def test_a_failing_block_is_reported_with_its_slide(tmp_path):
    deck_file = tmp_path / "99_demo.md"
    deck_file.write_text(
        "---\nmarp: true\n---\n\n```python\nx = 1\n```\n\n---\n\n```python\nx + 'a'\n```\n"
    )
    run = run_code(parse_deck(deck_file), timeout=60)
    assert not run.ok
    assert run.failed_at == "slide 2, line 11"
    assert "TypeError" in run.output


@pytest.mark.parametrize("name", LECTURES)
def test_python_blocks_run(name):
    run = run_code(DECKS[name], timeout=300)
    assert run.ok, f"{name}: the python block at {run.failed_at} failed:\n{run.output[-3000:]}"
    assert run.ran >= 3, f"{name}: only {run.ran} runnable python blocks"


# --------------------------------------------------------------------------------------
# The topic checklist
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LECTURES)
def test_topics_appear_in_deck(name):
    assert name in TOPICS, f"slides/topics.yaml has no checklist for {name}"
    visible = normalized(DECKS[name].visible_text())
    missing = []
    for item in TOPICS[name]:
        assert item.get("phrases"), f"{name}: topic {item['course']!r} lists no phrases"
        for phrase in item["phrases"]:
            if not any(normalized(alternative) in visible for alternative in phrase.split(" | ")):
                missing.append(f"{phrase!r} (topic: {item['course']})")
    assert not missing, f"{name} does not say:\n  " + "\n  ".join(missing)


def syllabus_sections(course_md: str) -> dict[str, str]:
    """Each lecture's syllabus text, by number: what follows its ``**NN Title**`` heading."""
    sections: dict[str, list[str]] = {}
    current = None
    in_syllabus = False
    for line in course_md.splitlines():
        if line.startswith("## "):
            in_syllabus = line.strip() == "## Syllabus: eight lectures" or line.startswith(
                "## Syllabus"
            )
            current = None
            continue
        if not in_syllabus:
            continue
        heading = re.match(r"^\*\*(\d\d) [^*]+\*\*:?\s*(.*)$", line)
        if heading:
            current = heading.group(1)
            sections[current] = [heading.group(2)]
        elif current is not None:
            sections[current].append(re.sub(r"^\s*- ", "", line))
    return {number: " ".join(lines).strip() for number, lines in sections.items()}


def uncovered(section: str, fragments: list[str]) -> tuple[list[str], list[str]]:
    """(fragments not found verbatim in ``section``, topic words no fragment covers)."""
    not_found = [fragment for fragment in fragments if fragment not in section]
    rest = section
    for fragment in sorted(fragments, key=len, reverse=True):
        rest = rest.replace(fragment, " ")
    words = [word for word in re.findall(r"[A-Za-z0-9]+", rest) if word.lower() not in STOPWORDS]
    return not_found, words


def test_coverage_check_finds_gaps():
    section = "creation, dtype, shape and views, broadcasting."
    assert uncovered(section, ["creation,", "dtype,", "shape and views,", "broadcasting."]) == (
        [],
        [],
    )
    assert uncovered(section, ["creation,", "dtype,", "broadcasting."]) == ([], ["shape", "views"])
    assert uncovered(section, ["creation,", "dtypes,"])[0] == ["dtypes,"]


def course_md_path() -> Path | None:
    configured = os.environ.get("PDL_COURSE_MD")
    candidates = [Path(configured)] if configured else []
    candidates.append(REPO.parent / "shared" / "COURSE.md")
    return next((path for path in candidates if path.is_file()), None)


def test_checklist_covers_the_syllabus():
    path = course_md_path()
    if path is None:
        pytest.skip("COURSE.md not found (set PDL_COURSE_MD); the checklist itself is still tested")
    sections = syllabus_sections(path.read_text(encoding="utf-8"))
    problems = []
    for name in LECTURES:
        section = sections.get(name[:2])
        assert section, f"COURSE.md has no syllabus entry **{name[:2]} ...**"
        not_found, words = uncovered(section, [item["course"] for item in TOPICS[name]])
        problems += [f"{name}: not verbatim in COURSE.md: {fragment!r}" for fragment in not_found]
        if words:
            problems.append(f"{name}: syllabus words no topic covers: {', '.join(words)}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LECTURES)
def test_images_are_generated_figures(name):
    for slide, link in DECKS[name].images:
        assert re.fullmatch(r"figures/[\w-]+\.png", link), (
            f"{name} slide {slide}: link {link!r}; decks link generated figures as figures/<name>.png"
        )
        assert Path(link).stem in FIGURES, (
            f"{name} slide {slide}: {link} is not drawn by tools/make_figures.py"
        )


def test_every_figure_is_used():
    used = {Path(link).stem for deck in DECKS.values() for _, link in deck.images}
    assert set(FIGURES) <= used, f"figures no deck uses: {sorted(set(FIGURES) - used)}"


# --------------------------------------------------------------------------------------
# Rendering (one build per session)
# --------------------------------------------------------------------------------------


def test_marp_warning_filter():
    log = (
        "[  INFO ] Converting 1 markdown...\n"
        f"[  WARN ] {EXPECTED_WARNINGS[0]} for conversion from a.md.\n"
        "[  WARN ] The local file is missing and will be ignored. Make sure the file path\n"
        "          is correct.\n"
        "[ ERROR ] Failed converting Markdown.\n"
    )
    assert marp_warnings(log) == [
        "[  WARN ] The local file is missing and will be ignored. Make sure the file path is correct.",
        "[ ERROR ] Failed converting Markdown.",
    ]


def test_missing_chromium_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("CHROME_PATH", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BuildError, match="apt-get install chromium"):
        find_browser()


@pytest.mark.parametrize("name", LECTURES)
def test_deck_renders_without_warnings(rendered, name):
    out, reports = rendered
    report = reports[name]
    assert (out / f"{name}.html").stat().st_size > 0
    assert (out / f"{name}.pdf").stat().st_size > 0
    assert not report.warnings, f"Marp warned while rendering {name}:\n  " + "\n  ".join(
        report.warnings
    )


@pytest.mark.parametrize("name", LECTURES)
def test_pdf_has_one_page_per_slide(rendered, name):
    _, reports = rendered
    report = reports[name]
    slides = len(DECKS[name].slides)
    assert report.html_slides == slides, (
        f"{name}: HTML has {report.html_slides} slides, the deck {slides}"
    )
    assert report.pdf_pages == slides, (
        f"{name}: PDF has {report.pdf_pages} pages, the deck {slides} slides"
    )


@pytest.mark.parametrize("name", LECTURES)
def test_nothing_overflows_the_slides(rendered, name):
    _, reports = rendered
    overflow = reports[name].overflow
    assert not overflow, (
        f"{name}: text runs into the margin (too much on one slide):\n  "
        + "\n  ".join(f"slide {page}: {text[:120]}" for page, text in overflow)
    )


@pytest.mark.parametrize("name", LECTURES)
def test_linked_images_exist_after_figure_generation(rendered, name):
    out, _ = rendered
    missing = [
        f"slide {slide}: {link}" for slide, link in DECKS[name].images if not (out / link).is_file()
    ]
    assert not missing, f"{name} links missing images: {missing}"


@pytest.mark.parametrize("name", LECTURES)
def test_html_fetches_nothing_from_the_network(rendered, name):
    out, _ = rendered
    html = (out / f"{name}.html").read_text(encoding="utf-8")
    remote = re.findall(
        r"""(?:src|href)\s*=\s*["']?(https?://[^"'\s>]+)|url\(\s*["']?(https?://[^"')\s]+)""", html
    )
    links = sorted({a or b for a, b in remote})
    assert not links, f"{name}.html references remote resources (it must work offline): {links}"
    assert "@import url(http" not in html


def test_build_report_is_written(rendered):
    out, reports = rendered
    saved = json.loads((out / "report.json").read_text())
    assert [entry["name"] for entry in saved] == LECTURES
    assert all(entry["pdf_pages"] == entry["slides"] for entry in saved)


def test_theme_and_preview_settings():
    theme = (SLIDES / "pdl.css").read_text(encoding="utf-8")
    assert "@theme pdl" in theme
    settings = json.loads((REPO / ".vscode" / "settings.json").read_text(encoding="utf-8"))
    assert "./slides/pdl.css" in settings["markdown.marp.themes"], (
        "the VS Code preview needs the theme"
    )
