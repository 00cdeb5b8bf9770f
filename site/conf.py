"""Sphinx settings of the course website (built by tools/build_site.py, ``make site``).

The pages are Markdown (MyST) and the executed lecture notebooks (myst-nb, never executed
here); the API reference comes from pdl's docstrings. Everything a page needs is served
from the site itself, so it works offline and from disk: MathJax is a local copy
(``site/package.json``), no widget or require.js scripts are loaded from CDNs, and the
Colab badge is a local image.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # pdl for autodoc, tools for the repository setting

from tools.repository import current  # noqa: E402

repository = current(REPO)

project = "Practical Deep Learning"
author = "the pdl course authors"
copyright = "the pdl course authors, MIT licence"
html_title = "Practical Deep Learning"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
]

# The pages (copied next to the lectures by tools/build_site.py) are Markdown.
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
templates_path = [str(HERE / "_templates")]  # absolute: autosummary looks beside the sources
suppress_warnings = ["myst.header"]  # lecture notebooks may start sections at ### under a # title

# --- Notebooks: shown as executed by tools/run_notebooks.py, never re-run here.
nb_execution_mode = "off"
nb_ipywidgets_js = {}  # no require.js / widget manager from a CDN; widgets show their text form
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# --- Math: MathJax 3 from the site's own _static/ (SVG output: no font files to fetch).
mathjax_path = "tex-svg-full.js"
mathjax3_config = {"tex": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]]}}

# --- API reference from the docstrings (Google style "Example:" sections, via napoleon).
autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# --- Theme: sphinx-book-theme, with its fonts and icons bundled (nothing from a CDN).
html_theme = "sphinx_book_theme"
html_static_path = ["_static", "node_modules/mathjax/es5/tex-svg-full.js"]
html_css_files = ["pdl.css"]
html_favicon = "_static/favicon.svg"
html_copy_source = False
# Search result snippets are fetch()ed from each page, which a page opened from disk may not
# do: without them search works the same from disk and from a server.
html_show_search_summary = False
html_show_sourcelink = False
html_theme_options = {
    "repository_url": repository.url,
    "repository_branch": repository.branch,
    "path_to_docs": "",  # lecture pages are notebooks/NN_slug, as in the repository
    "use_repository_button": True,
    "use_download_button": False,  # the sources are not copied; the notebooks are on GitHub
    "launch_buttons": {"colab_url": "https://colab.research.google.com"},
    "home_page_in_toc": True,
    "show_toc_level": 2,
}
html_context = {"default_mode": "light"}
