"""The course as a website: build it as README.md says, serve it on localhost and read every page in a real
headless Chromium, as a learner's browser would: figures load, math is typeset, tables are tables, and every
link inside the site leads somewhere.

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
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1024"]
# A Markdown table's second line: one per table.
TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$", re.M)
MATH = re.compile(r"\$[^$]+\$")


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
  done(JSON.stringify({
    images: [...document.images].map(i => ({src: i.src, width: i.naturalWidth})),
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


def _image_outputs(notebook):
    cells = nbformat.read(notebook, as_version=4).cells
    return sum(any(key.startswith("image/") for key in output.get("data", {}))
               for cell in cells if cell.cell_type == "code" for output in cell.outputs)


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
