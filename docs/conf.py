"""Sphinx configuration of the course website (README.md says how to build it).

The site's source folder is the repository itself: README.md is the home page, and the pages are
docs/benchmarks.md and the executed notebooks in solutions/, shown with the outputs stored in them (nothing is
re-executed). Links in them to other files of the repository (the exercise notebooks in notebooks/, say)
become downloads of those files. Math is typeset by a copy of MathJax installed from PyPI, so the site works
offline.
"""

import importlib.util
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/benchmarks.md", "solutions/*.ipynb"]

project = "Fast diffusion"
extensions = ["myst_nb"]
root_doc = "README"
include_patterns = PAGES
# Sphinx walks the whole source folder unless told not to: skip every folder the pages do not live in
# (virtual environments, training runs, the site itself).
exclude_patterns = ["site", "**/.ipynb_checkpoints"] + [
    path.relative_to(ROOT).as_posix()
    for folder in (ROOT, ROOT / "docs", ROOT / "solutions")
    for path in folder.iterdir()
    if path.is_dir() and path not in (ROOT / "docs", ROOT / "solutions")
]

nb_execution_mode = "off"  # the notebooks in solutions/ are executed; their stored outputs are the figures
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_dmath_double_inline = True  # $$...$$ inside a paragraph is display math, as in Jupyter
myst_heading_anchors = 3  # links to a heading (README.md#set-up) work as on GitHub

html_theme = "alabaster"
html_title = project
html_theme_options = {"page_width": "1100px", "sidebar_width": "260px", "show_relbars": True}
html_copy_source = False  # no _sources/ copies of the pages
mathjax_path = "mathjax/tex-chtml.js"  # relative to _static/, where finish_site puts it


LINK = re.compile(r"\]\((?![a-z]+:|#)([^)#\s]+\.(?:ipynb|md))(?=[)#])")


def prepare_page(app, docname, source):
    """Links to notebooks and Markdown files that are no pages of the site (the exercise notebooks) become
    downloads of those files; and the home page lists every page in the sidebar (README.md itself stays free
    of Sphinx directives)."""
    folder = (Path(app.srcdir) / docname).parent

    def link(match):
        page = app.env.path2doc(str(folder / match[1]))
        return match[0] if page in app.env.found_docs else f"](path:{match[1]}"

    source[0] = LINK.sub(link, source[0])
    if docname == app.config.root_doc:
        source[0] += "\n\n```{toctree}\n:hidden:\n:glob:\n\nsolutions/*\ndocs/benchmarks\n```\n"


def finish_site(app, exception):
    """index.html, a copy of the home page, so that the site's folder opens on it; and MathJax 3 (from the
    django-static-mathjax package: MathJax's files, nothing else) in _static/mathjax."""
    if exception is not None or app.builder.format != "html":
        return
    shutil.copyfile(Path(app.outdir) / f"{app.config.root_doc}.html", Path(app.outdir) / "index.html")
    package = importlib.util.find_spec("mathjax")
    es5 = Path(next(iter(package.submodule_search_locations))) / "static" / "mathjax" / "es5"

    def ignore(folder, names):  # of MathJax's ready-made bundles, only tex-chtml.js
        if folder != str(es5):
            return []
        return [name for name in names if name.endswith(".js") and name != "tex-chtml.js"]

    shutil.copytree(es5, Path(app.outdir) / "_static" / "mathjax", ignore=ignore, dirs_exist_ok=True)


def setup(app):
    app.connect("source-read", prepare_page)
    app.connect("build-finished", finish_site)
