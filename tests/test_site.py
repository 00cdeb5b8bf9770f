"""The course website, opened in a real browser: headless Chromium through Selenium.

The site is built by tools/build_site.py (the code ``make site`` runs) into a temporary
folder, from the executed notebooks (``build/notebooks/full/`` when complete, else
``build/notebooks/fast/``, which the notebook tests write earlier in ``make test``; a missing
one is executed here in fast mode) and the decks in ``build/slides/`` (rendered here when
missing). Then it is served on 127.0.0.1 and every page is opened: no console errors, every
internal link, image, script and stylesheet resolves, math is rendered, search finds
"BatchNorm", and no request leaves the machine. Screenshots of the home page and of a
lecture go to ``build/site-screenshots/``.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest

from tools.build_site import SLIDES, build, executed_notebooks
from tools.run_notebooks import BUILD, REPO, execute_notebook, notebook_paths

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# sphinx-book-theme and myst-parser still use Sphinx APIs due for removal in Sphinx 11: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*Check CHANGES for Sphinx API modifications")

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1000",
]
SCREENSHOTS = REPO / "build" / "site-screenshots"


def lectures_to_build_from() -> Path:
    """The executed notebooks ``make site`` would use; a missing one is executed first, in fast mode."""
    folder = executed_notebooks()
    if not all((folder / p.name).is_file() for p in notebook_paths()):
        for path in notebook_paths():  # run alone, before the notebook tests have run
            if not (BUILD / "fast" / path.name).is_file():
                execute_notebook(path, mode="fast")
        folder = BUILD / "fast"
    return folder


def rendered_decks() -> Path:
    """build/slides/, rendered first if a lecture's deck is missing."""
    if not all(
        (SLIDES / f"{p.stem}.{kind}").is_file()
        for p in notebook_paths()
        for kind in ("html", "pdf")
    ):
        from tools.build_slides import build as build_slides

        build_slides(SLIDES, verbose=False)
    return SLIDES


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built site: its folder, page count and Sphinx's warnings."""
    notebooks, decks = lectures_to_build_from(), rendered_decks()
    root = tmp_path_factory.mktemp("site")
    pages, _, warnings = build(notebooks, decks, root / "site", staging=root / "src", quiet=True)
    return {"root": root / "site", "pages": pages, "warnings": warnings}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def server(site):
    """The site on http://127.0.0.1:PORT/, for the length of this module."""
    handler = functools.partial(_QuietHandler, directory=str(site["root"]))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian Chromium with a fresh profile, logging the console and the network."""
    if not Path(CHROMEDRIVER).is_file() or not shutil.which("chromium"):
        pytest.fail(
            "the browser tests need chromium and chromedriver (apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


# Run in the page once it has loaded: MathJax's typesetting finished, then what the DOM holds.
_INSPECT = """
const done = arguments[arguments.length - 1];
const typeset = window.MathJax && MathJax.startup ? MathJax.startup.promise : Promise.resolve();
typeset.then(() => done({
  refs: [...document.querySelectorAll("a[href], img[src], link[href], script[src], iframe[src], source[src]")]
        .map(e => e.getAttribute(e.hasAttribute("href") ? "href" : "src")),
  images: [...document.querySelectorAll("img")].map(i => [i.getAttribute("src"), i.complete && i.naturalWidth > 0]),
  math: document.querySelectorAll("span.math, div.math").length,
  typeset: document.querySelectorAll("span.math mjx-container, div.math mjx-container").length,
  math_errors: document.querySelectorAll("mjx-merror").length,
}), error => done({error: String(error)}));
"""


def page_urls(root: Path, base: str) -> list[str]:
    """Every HTML page of the site (lecture decks included), as URLs on the test server."""
    pages = sorted(p for p in root.rglob("*.html") if "_static" not in p.relative_to(root).parts)
    return [urljoin(base, p.relative_to(root).as_posix()) for p in pages]


@pytest.fixture(scope="module")
def crawl(site, server, browser):
    """Open every page once; keep what the console, the network log and the DOM said."""
    browser.get_log("browser"), browser.get_log("performance")  # start from empty logs
    visited = {}
    for url in page_urls(site["root"], server):
        browser.get(url)
        browser.execute_script(
            "window.scrollTo(0, document.body.scrollHeight)"
        )  # lazy images load too
        WebDriverWait(browser, 30).until(
            lambda d: d.execute_script("return [...document.images].every(i => i.complete)")
        )
        found = browser.execute_async_script(_INSPECT)
        found["console"] = [
            e for e in browser.get_log("browser") if e["level"] == "SEVERE"
        ]  # errors
        found["requests"] = [
            json.loads(e["message"])["message"]["params"]["request"]["url"]
            for e in browser.get_log("performance")
            if json.loads(e["message"])["message"]["method"] == "Network.requestWillBeSent"
        ]
        visited[url] = found
    return visited


def test_every_page_has_its_parts(site):
    root = site["root"]
    assert site["pages"] >= len(notebook_paths()) + 5, (
        "a page per lecture, home, set-up, troubleshooting, instructors, API"
    )
    home = (root / "index.html").read_text()
    for path in notebook_paths():
        page = root / "notebooks" / f"{path.stem}.html"
        assert page.is_file(), f"no page for lecture {path.stem}"
        html = page.read_text()
        assert (
            f'href="../slides/{path.stem}.html"' in html
            and f'href="../slides/{path.stem}.pdf"' in html
        )
        assert "colab-badge.svg" in html and "colab.research.google.com/github/" in html
        assert f"notebooks/{path.stem}.html" in home, "the syllabus links every lecture"
    for page in (
        "setup",
        "troubleshooting",
        "instructors",
        "api",
        "api/pdl.train",
        "api/pdl.checks.core",
    ):
        assert (root / f"{page}.html").is_file(), page
    assert "pdl.train.fit" in (root / "api" / "pdl.train.html").read_text(), (
        "the API reference documents fit"
    )
    assert 'id="set-up-two-commands"' in home and 'id="syllabus"' in home


def test_nothing_is_loaded_from_another_host(site):
    # Every script, stylesheet, font, image or frame the pages load is part of the site.
    offenders = []
    for page in site["root"].rglob("*.html"):
        html = page.read_text(errors="replace")
        for tag, attribute, value in re.findall(
            r"<(script|link|img|iframe|source)\b[^>]*?\b(src|href)=\"([^\"]*)\"", html
        ):
            if re.match(r"(?:[a-z]+:)?//", value) and not value.startswith("data:"):
                offenders.append(f"{page.relative_to(site['root'])}: <{tag} {attribute}={value}>")
    css = [p for p in site["root"].rglob("*.css")]
    offenders += [
        f"{p.relative_to(site['root'])}: {m}"
        for p in css
        for m in re.findall(
            r"url\(\s*['\"]?((?:https?:)?//[^)'\"]+)", p.read_text(errors="replace")
        )
    ]
    assert not offenders, "fetched from the network at view time:\n" + "\n".join(offenders[:20])


def test_every_page_loads_without_console_errors(crawl):
    problems = [
        f"{url}: {e['level']} {e['message']}"
        for url, found in crawl.items()
        for e in found["console"]
    ]
    problems += [f"{url}: {found['error']}" for url, found in crawl.items() if "error" in found]
    assert not problems, "\n".join(problems[:20])


def test_no_request_leaves_localhost(crawl, server):
    # chrome:// is the browser's own pages (its new-tab page at start-up), never the network.
    outside = sorted(
        {
            f"{url} -> {request}"
            for url, found in crawl.items()
            for request in found["requests"]
            if not request.startswith((server, "data:", "blob:", "about:", "chrome://"))
        }
    )
    assert not outside, "\n".join(outside[:20])


def _target(root: Path, page_url: str, ref: str, base: str) -> tuple[Path, str] | None:
    """The file (and #fragment) an internal link points to; None for a link off the site."""
    absolute = urljoin(page_url, ref)
    if not absolute.startswith(base):
        return None
    parts = urlsplit(absolute)
    path = root / unquote(parts.path.removeprefix(urlsplit(base).path))
    return (path / "index.html" if path.is_dir() else path), parts.fragment


def test_every_internal_link_and_image_resolves(site, crawl, server):
    root, broken = site["root"], []
    ids: dict[Path, set[str]] = {}
    for url, found in crawl.items():
        for ref in found["refs"]:
            target = _target(root, url, ref, server)
            if target is None or ref.startswith(("mailto:", "javascript:", "data:")):
                continue
            path, fragment = target
            if not path.is_file():
                broken.append(f"{url}: {ref} (no such file)")
            elif fragment and path.suffix == ".html":
                if path not in ids:
                    ids[path] = set(re.findall(r'\bid="([^"]+)"', path.read_text(errors="replace")))
                if unquote(fragment) not in ids[path]:
                    broken.append(f"{url}: {ref} (no such anchor)")
        broken += [
            f"{url}: image {src} did not load" for src, loaded in found["images"] if not loaded
        ]
    assert not broken, "\n".join(broken[:30])


def test_math_is_rendered(crawl):
    with_math = {url: found for url, found in crawl.items() if found.get("math")}
    assert with_math, "no page has math: the lecture notebooks do"
    unrendered = [
        f"{url}: {f['typeset']} of {f['math']} formulas typeset, {f['math_errors']} TeX errors"
        for url, f in with_math.items()
        if f["typeset"] < f["math"] or f["math_errors"]
    ]
    assert not unrendered, "\n".join(unrendered)


def _search(browser, url: str) -> list[str]:
    browser.get(url)
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script(
            "const s = document.querySelector('#search-results .search-summary');"
            "return s && /found|did not match/.test(s.innerText)"
        )
    )
    return browser.execute_script(
        "return [...document.querySelectorAll('#search-results ul.search li a')]"
        ".map(a => a.getAttribute('href'))"
    )


def test_search_finds_batchnorm_served_and_from_disk(site, server, browser):
    browser.get_log("browser")
    for base in (server, site["root"].as_uri() + "/"):
        results = _search(browser, urljoin(base, "search.html?q=BatchNorm"))
        assert any("batchnorm" in href.lower() for href in results), f"{base}: {results}"
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_screenshots(site, server, browser):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    lecture = next(
        (p.stem for p in notebook_paths() if p.stem.startswith("06")), notebook_paths()[0].stem
    )
    shots = {"home.png": "index.html", "lecture.png": f"notebooks/{lecture}.html"}
    for name, page in shots.items():
        browser.get(urljoin(server, page))
        browser.execute_async_script(_INSPECT)  # wait for the math
        assert browser.save_screenshot(str(SCREENSHOTS / name))
    # A second view of the lecture: where its first formula is, to see it typeset.
    browser.execute_script(
        "document.querySelector('mjx-container')?.scrollIntoView({block: 'center'})"
    )
    assert browser.save_screenshot(str(SCREENSHOTS / "lecture-math.png"))
    for name in [*shots, "lecture-math.png"]:
        assert (SCREENSHOTS / name).stat().st_size > 10_000, f"{name} looks empty"


def test_sphinx_builds_without_warnings(site):
    # A docstring that breaks reStructuredText renders as a wrong page (a block quote, a link
    # to a missing anchor) without failing the build: Sphinx's warnings are errors here.
    # (Warnings about notebooks edited after they were executed are about the build folder.)
    sphinx = [w for w in site["warnings"] if "WARNING:" in w or "ERROR:" in w or "CRITICAL:" in w]
    assert not sphinx, "\n".join(sphinx[:20])
