"""The course as a website: build it as README.md says, serve it on localhost and read every page in a real
headless Chromium, as a learner's browser would: figures load, math is typeset, tables are tables, every
link inside the site leads somewhere, nothing makes a page scroll sideways, and the notebooks read as a
learner's: links to Colab and to the exercise notebook, and none of the lines written for the tools.

Needs Chromium and its driver (Debian: `apt-get install chromium chromium-driver`); without them the test is
skipped, except under CI (the CI variable set), where it fails.
"""

import functools
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import unquote, urldefrag
from urllib.request import urlopen

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = "python3 -m sphinx -M html . site -c docs"  # README.md's command, after the install
SITE_COMMAND = f'python3 -m pip install -e ".[site]" && {BUILD}'
NOTEBOOKS = sorted((ROOT / "solutions").glob("*.ipynb"))
# The README's Colab badges are pictures hosted by Colab: the one thing a page may load from elsewhere.
EXTERNAL_ALLOWED = ("https://colab.research.google.com/assets/colab-badge.svg",)
WINDOW_WIDTH = 1280  # a laptop's browser window: no page may scroll sideways in it
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  f"--window-size={WINDOW_WIDTH},1024"]
# A Markdown table's second line: one per table.
TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$", re.M)
MATH = re.compile(r"\$[^$]+\$")
# Lines the notebooks carry for nbgrader, nbval and papermill, which the site leaves out of the code it shows.
TOOL_MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "NBVAL_CHECK_OUTPUT", "Papermill")
WIDGET = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "An interactive widget: run the notebook to use it."  # docs/conf.py's, where a widget was


def _require(condition, reason):
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run this test, so install it there (.ci/run does)")
        pytest.skip(reason)


def _import(module):
    try:
        return importlib.import_module(module)
    except ImportError:
        _require(False, f"{module} is not installed (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built into a temporary folder, with Sphinx's output (its warnings included)."""
    _import("myst_nb")
    build = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "sphinx", *BUILD.split()[3:]]
    command[command.index("site")] = str(build)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"the site does not build:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return build / "html", done.stderr


@pytest.fixture(scope="module")
def server(site):
    html, _ = site
    handler = functools.partial(_QuietHandler, directory=str(html))
    httpd = _QuietServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a browser that drops a connection it no longer needs is no failure; the checks read every page


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = _import("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    _require(chromium and driver,
             "Chromium or chromedriver is not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    chrome.set_script_timeout(30)
    yield chrome
    chrome.quit()


# Run in the page once it has loaded: waits for MathJax and the images, then reports what the checks need.
READ_PAGE = """
const done = arguments[arguments.length - 1];
const images = [...document.images].map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; }));
const math = window.MathJax && MathJax.startup ? MathJax.startup.promise : null;
Promise.all([math, ...images]).then(() => {
  const main = document.querySelector('[role=main]') || document.body;
  const text = main.cloneNode(true);
  text.querySelectorAll('pre, code, script, style, mjx-container').forEach(e => e.remove());
  const root = document.documentElement, firstCell = main.querySelector('div.cell');
  const wider = e => e.getBoundingClientRect().right > root.clientWidth;
  const aboveCode = e => !firstCell || e.compareDocumentPosition(firstCell) & Node.DOCUMENT_POSITION_FOLLOWING;
  done(JSON.stringify({
    images: [...document.images].map(i => ({src: i.src, width: i.naturalWidth})),
    window: window.innerWidth,
    scrollWidth: root.scrollWidth,
    clientWidth: root.clientWidth,
    // the outermost elements that reach past the window's right edge: what makes the page scroll sideways
    overflowing: [...document.body.querySelectorAll('*')].filter(e => wider(e) && !wider(e.parentElement))
                   .map(e => `<${e.tagName.toLowerCase()} class="${e.className}">`),
    code: [...main.querySelectorAll('pre')].map(p => ({
      text: p.textContent,
      collapsed: Boolean(p.closest('details:not([open])')),
      scrolls: p.scrollWidth > p.clientWidth,
      printedTable: Boolean(p.closest('.tag_printed-table .cell_output')),
    })),
    emptyOutputs: [...main.querySelectorAll('.cell_output > *')]
                    .filter(e => !e.textContent.trim() && !(e.matches('img') || e.querySelector('img'))).length,
    widgetViews: main.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length,
    linksAboveCode: [...main.querySelectorAll('a[href]')].filter(aboveCode).map(a => a.href),
    mathjax: Boolean(window.MathJax && MathJax.startup),
    math: [...main.querySelectorAll('.math')].map(e => ({typeset: Boolean(e.querySelector('mjx-container')),
                                                         text: e.textContent.slice(0, 80)})),
    mathErrors: [...main.querySelectorAll('mjx-merror')].map(e => e.getAttribute('data-mjx-error')),
    text: text.textContent,
    tables: main.querySelectorAll('table').length,
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    ids: [...document.querySelectorAll('[id], a[name]')].map(e => e.id || e.getAttribute('name')),
    resources: performance.getEntriesByType('resource').map(e => e.name),
  }));
}).catch(error => done(JSON.stringify({error: String(error)})));
"""


def _read(browser, url):
    browser.get(url)
    page = json.loads(browser.execute_async_script(READ_PAGE))
    assert "error" not in page, f"{url}: the page's scripts failed: {page['error']}"
    page["console"] = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    return page


@pytest.fixture(scope="module")
def pages(site, server, browser):
    """Every page reachable from the home page, read in Chromium: {path: what READ_PAGE reports}."""
    read, queue = {}, ["index.html"]
    while queue:
        path = queue.pop(0)
        if path in read:
            continue
        read[path] = _read(browser, server + path)
        for link in read[path]["links"]:
            target = _local(server, link)
            if target is not None and target.endswith(".html") and target not in read:
                queue.append(target)
    return read


def _local(server, url):
    """The path of url inside the site, or None for an address elsewhere."""
    address, _ = urldefrag(url)
    if not address.startswith(server):
        return None
    path = unquote(address[len(server):])
    return path + "index.html" if path.endswith("/") or not path else path


def _page(notebook):
    return f"solutions/{notebook.stem}.html"


def _markdown(notebook):
    return "\n".join(cell.source for cell in nbformat.read(notebook, as_version=4).cells
                     if cell.cell_type == "markdown")


def _outputs(notebook):
    cells = nbformat.read(notebook, as_version=4).cells
    return [output for cell in cells if cell.cell_type == "code" for output in cell.outputs]


def _image_outputs(notebook):
    return sum(any(key.startswith("image/") for key in output.get("data", {})) for output in _outputs(notebook))


def test_readme_gives_the_command_that_builds_the_site():
    readme = (ROOT / "README.md").read_text()
    assert f"```bash\n{SITE_COMMAND}\n```" in readme, f"README.md must show the site's command: {SITE_COMMAND}"
    assert "site/" in (ROOT / ".gitignore").read_text().splitlines(), "the built site must stay out of git"


def test_site_builds_without_warnings(site):
    _, log = site
    warnings = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]
    assert not warnings, "Sphinx warned (a broken link or reference, most often):\n" + "\n".join(warnings)


def test_every_notebook_page_renders(pages):
    missing = [_page(nb) for nb in NOTEBOOKS if _page(nb) not in pages]
    assert not missing, f"not reachable from the home page: {missing}"
    for notebook in NOTEBOOKS:
        path, page, markdown = _page(notebook), pages[_page(notebook)], _markdown(notebook)
        figures = sum("/_images/" in image["src"] for image in page["images"])
        outputs = _image_outputs(notebook)
        assert figures == outputs, f"{path}: {figures} figures, {notebook.name} has {outputs} image outputs"
        tables = len(TABLE_RULE.findall(markdown))
        assert page["tables"] >= tables, f"{path}: {page['tables']} tables rendered, {notebook.name} has {tables}"
        if MATH.search(markdown):
            assert page["mathjax"], f"{path}: MathJax did not start (is _static/mathjax/tex-chtml.js there?)"
            assert page["math"], f"{path}: {notebook.name} has $...$ math but the page has none"


def test_no_page_scrolls_sideways(pages):
    """Code and printed output wrap; a table wider than the column, and a printed one (whose rows would lose
    their columns if they wrapped), scroll in their own boxes."""
    for path, page in pages.items():
        assert page["window"] == WINDOW_WIDTH, f"{path}: read in a window {page['window']} px wide"
        assert page["scrollWidth"] <= page["clientWidth"], (
            f"{path}: scrolls sideways, {page['scrollWidth']} px wide in a {page['clientWidth']} px window; "
            f"reaching past its edge: {page['overflowing'][:5]}")
        unwrapped = [code["text"][:80] for code in page["code"] if code["scrolls"] and not code["printedTable"]]
        assert not unwrapped, f"{path}: code that runs past its box instead of wrapping: {unwrapped[:3]}"


def test_every_notebook_page_links_to_colab_and_to_its_exercise_notebook(pages, server):
    """Above the first cell: the README table's Colab link, and a download of the exercise notebook."""
    readme = (ROOT / "README.md").read_text()
    for notebook in NOTEBOOKS:
        path, links = _page(notebook), pages[_page(notebook)]["linksAboveCode"]
        colab = re.search(rf"\((https://colab\.research\.google\.com/[^()\s]+/notebooks/{notebook.name})\)", readme)
        assert colab, f"README.md has no Colab link to notebooks/{notebook.name}"
        assert colab[1] in links, f"{path}: no link to {colab[1]} above the first cell"
        downloads = [target for target in (_local(server, link) for link in links)
                     if target and target.startswith("_downloads/") and target.endswith(f"/{notebook.name}")]
        assert downloads, f"{path}: no download of notebooks/{notebook.name} above the first cell"
        with urlopen(server + downloads[0]) as response:
            exercise = (ROOT / "notebooks" / notebook.name).read_bytes()
            assert response.read() == exercise, f"{path}: {downloads[0]} is not notebooks/{notebook.name}"


def test_the_code_shown_is_the_learners(pages):
    """No line written for nbgrader, nbval or papermill in the code any page shows, and every notebook's
    set-up cell collapsed."""
    for path, page in pages.items():
        for code in page["code"]:
            markers = [marker for marker in TOOL_MARKERS if marker in code["text"]]
            assert not markers, f"{path}: code shows {markers}: {code['text'][:200]!r}"
    for notebook in NOTEBOOKS:
        setup = [code for code in pages[_page(notebook)]["code"] if code["text"].startswith("# Set-up")]
        assert setup and all(code["collapsed"] for code in setup), f"{_page(notebook)}: no collapsed set-up cell"


def test_no_empty_output_and_a_sentence_where_a_widget_was(pages):
    """A widget's state is not stored in the notebook, so the page says what was there instead of leaving a
    blank; an output that is only a line break (a progress bar's last) is no box of its own."""
    for notebook in NOTEBOOKS:
        path, page = _page(notebook), pages[_page(notebook)]
        assert not page["emptyOutputs"], f"{path}: {page['emptyOutputs']} empty output boxes"
        widgets = sum(WIDGET in output.get("data", {}) for output in _outputs(notebook))
        notes = page["text"].count(WIDGET_NOTE)
        assert not page["widgetViews"], f"{path}: {page['widgetViews']} widgets left blank"
        assert notes == widgets, f"{path}: says {WIDGET_NOTE!r} {notes} times; {notebook.name} has {widgets} widgets"


def test_every_page_loads_its_images_math_and_nothing_from_elsewhere(pages, server):
    for path, page in pages.items():
        broken = [image["src"] for image in page["images"]
                  if image["width"] == 0 and image["src"] not in EXTERNAL_ALLOWED]
        assert not broken, f"{path}: images that do not load: {broken}"
        external = [url for url in page["resources"] if not url.startswith(server) and url not in EXTERNAL_ALLOWED]
        assert not external, f"{path}: loads from outside the site, so it would not work offline: {external}"
        errors = [message for message in page["console"]
                  if "favicon.ico" not in message and not any(url in message for url in EXTERNAL_ALLOWED)]
        assert not errors, f"{path}: errors in the browser's console: {errors}"
        raw = [math["text"] for math in page["math"] if not math["typeset"]]
        assert not raw, f"{path}: {len(raw)} formulas left as TeX, first: {raw[:3]}"
        assert not page["mathErrors"], f"{path}: MathJax could not typeset: {page['mathErrors']}"
        leftover = MATH.findall(page["text"]) + re.findall(r"\\[(\[][^\n]{0,40}", page["text"])
        assert not leftover, f"{path}: math left as raw text: {leftover[:3]}"


def test_every_link_inside_the_site_resolves(pages, server):
    checked = {}
    for path, page in pages.items():
        for link in sorted(set(page["links"])):
            target = _local(server, link)
            if target is None:
                continue
            if target not in checked:
                checked[target] = _status(server + target)
            assert checked[target] == 200, f"{path}: link to {link} answers {checked[target]}"
            fragment = unquote(urldefrag(link).fragment)
            if fragment and target.endswith(".html"):
                assert fragment in pages[target]["ids"], f"{path}: link to {link}; {target} has no id {fragment!r}"


def _status(url):
    try:
        with urlopen(url) as response:
            return response.status
    except HTTPError as error:
        return error.code


def test_readme_links_lead_to_the_notebook_pages_and_the_exercise_files(pages, server):
    """The README's links to solutions/ and docs/ open those pages; its links to the exercise notebooks in
    notebooks/ download the exercise notebook itself."""
    readme = (ROOT / "README.md").read_text()
    home = [_local(server, link) for link in pages["index.html"]["links"]]
    for target in re.findall(r"\]\(((?:notebooks|solutions|docs)/[^)#]+)\)", readme):
        source = Path(target)
        if source.parts[0] == "notebooks":
            downloads = [path for path in home if path and path.startswith("_downloads/")
                         and path.endswith(f"/{source.name}")]
            assert downloads, f"README.md links to {target}, but the home page has no download of it"
            with urlopen(server + downloads[0]) as response:
                assert response.read() == (ROOT / target).read_bytes(), f"{downloads[0]} is not {target}"
        else:
            page = source.with_suffix(".html").as_posix()
            assert page in home, f"README.md links to {target}, but the home page does not link to {page}"
