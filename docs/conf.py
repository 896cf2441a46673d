"""Sphinx configuration of the course website (README.md says how to build it).

The site's source folder is the repository itself: README.md is the home page, and the pages are
docs/benchmarks.md and the executed notebooks in solutions/, shown with the outputs stored in them (nothing is
re-executed). Links in them to other files of the repository (the exercise notebooks in notebooks/, say)
become downloads of those files. Math is typeset by a copy of MathJax installed from PyPI, so the site works
offline. The notebooks are shown as a learner reads them, not as the tools that check them see them: see
prepare_notebook.
"""

import importlib.util
import re
import shutil
from pathlib import Path

import nbformat

from addlib.course.exercises import SETUP_MARKER, colab_url, repository_url

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/benchmarks.md", "solutions/*.ipynb"]

project = "Fast diffusion"
# The footer says what LICENSE says.
LICENSE = (ROOT / "LICENSE").read_text()
year, author = re.search(r"Copyright \(c\) (\d{4}) (.+)", LICENSE).groups()
copyright = f"{year} {author} · {LICENSE.splitlines()[0]}"
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
# The notebooks draw their figures at 80 dpi, whose labels are too small to read at that size on a page;
# custom.css shrinks the larger ones back to the column's width.
nb_render_image_options = {"scale": 150}
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_dmath_double_inline = True  # $$...$$ inside a paragraph is display math, as in Jupyter
myst_heading_anchors = 3  # links to a heading (README.md#set-up) work as on GitHub
# A fence without a language is printed text (benchmarks.md's results), not Python; the notebooks' cells
# keep the highlighting their kernel names.
highlight_language = "none"

html_theme = "alabaster"
html_title = project
html_theme_options = {"page_width": "1100px", "sidebar_width": "260px", "show_relbars": True}
html_static_path = ["_static"]  # custom.css, which alabaster loads after its own
templates_path = ["_templates"]
html_copy_source = False  # no _sources/ copies of the pages
html_scaled_image_link = False  # an enlarged figure is no link to itself at its own, smaller size
mathjax_path = "mathjax/tex-chtml.js"  # relative to _static/, where finish_site puts it


LINK = re.compile(r"\]\((?![a-z]+:|#)([^)#\s]+\.(?:ipynb|md))(?=[)#])")
# Lines written for the tools that check the notebooks (nbval, nbgrader, papermill), not for the learner.
TOOL_LINES = re.compile(r"^[ \t]*(# NBVAL_CHECK_OUTPUT|### (BEGIN|END) SOLUTION|# Papermill parameters)[ \t]*$\n?",
                        re.M)
PAPERMILL_LABEL = re.compile(r"^# Papermill parameters: (\w)", re.M)
WIDGET = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "*(An interactive widget: run the notebook to use it.)*"
# A printed table: Markdown rows (addlib.bench's tables), or columns lined up with spaces.
PRINTED_TABLE = re.compile(r"^\|.*\|$|\S {2,}\S", re.M)


def prepare_notebook(notebook, name):
    """The notebook as the site shows it: links to Colab and to the exercise version under the title; the
    set-up cell collapsed; the tools' lines gone from the code; a sentence where a widget was (its state is
    not stored, so it would show nothing); no output that is only a line break (tqdm's last one); and the
    cells that print a table tagged, so that custom.css keeps its columns instead of wrapping its rows."""
    exercise = f"notebooks/{name}.ipynb"
    colab = colab_url(repository_url(ROOT), exercise)
    links = f"[Open in Colab]({colab}) · [download the exercise notebook](../{exercise})"
    # The first Markdown cell begins with the title (addlib.course.exercises requires it of every notebook).
    title = next(cell for cell in notebook.cells if cell.cell_type == "markdown")
    title.source = re.sub(r"^# .*", lambda heading: f"{heading[0]}\n\n{links}\n", title.source, count=1)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    if code and code[0].source.startswith(SETUP_MARKER):
        code[0].metadata.setdefault("tags", []).append("hide-input")
        code[0].metadata["mystnb"] = {"code_prompt_show": "Show the set-up cell",
                                      "code_prompt_hide": "Hide the set-up cell"}
    for cell in code:
        source = PAPERMILL_LABEL.sub(lambda label: f"# {label[1].upper()}", cell.source)
        cell.source = TOOL_LINES.sub("", source).rstrip()
        cell.outputs = [output for output in cell.outputs if output.output_type != "stream" or output.text.strip()]
        for output in cell.outputs:
            if WIDGET in output.get("data", {}):
                output.data = {"text/markdown": WIDGET_NOTE}
        if any(output.get("name") == "stdout" and PRINTED_TABLE.search(output.text) for output in cell.outputs):
            cell.metadata.setdefault("tags", []).append("printed-table")
    return notebook


def prepare_page(app, docname, source):
    """Notebooks are prepared for reading (prepare_notebook). Links to notebooks and Markdown files that are
    no pages of the site (the exercise notebooks) become downloads of those files; and the home page lists
    every page in the sidebar (README.md itself stays free of Sphinx directives)."""
    folder = (Path(app.srcdir) / docname).parent
    if Path(app.env.doc2path(docname)).suffix == ".ipynb":
        notebook = prepare_notebook(nbformat.reads(source[0], as_version=4), Path(docname).name)
        source[0] = nbformat.writes(notebook)

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
