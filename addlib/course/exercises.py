"""Make the learners' notebooks from the solutions, and keep everything derived from them in step.

``solutions/NN_*.ipynb`` are the source of truth: complete and executed. Each exercise's answer sits between
``### BEGIN SOLUTION`` and ``### END SOLUTION`` in a cell with nbgrader metadata (``"solution": true``), so a
teacher can also run nbgrader on ``solutions/`` directly. This command writes ``notebooks/NN_*.ipynb`` with
the answers replaced by ``# YOUR CODE HERE`` / ``raise NotImplementedError()`` (as nbgrader does) and the
outputs cleared. It also writes what depends on the repository's address, which is written once, in
``pyproject.toml`` (``[project.urls] Repository``): the set-up cell at the top of every notebook and the
README's notebook table with its "Open in Colab" badges.

    python -m addlib.course.exercises            # regenerate notebooks/, set-up cells, README table
    python -m addlib.course.exercises --check    # exit 1 and say what is stale (the tests run this)
    python -m addlib.course.exercises --execute solutions/01_forward_process.ipynb   # re-run a solution first
"""

from __future__ import annotations

import copy
import re
import sys
import tomllib
from datetime import datetime
from pathlib import Path

import nbformat

from addlib.utils.commands import OneLineParser, run_command

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CODE_STUB = ["# YOUR CODE HERE", "raise NotImplementedError()"]
MARKDOWN_STUB = ["YOUR ANSWER HERE"]
README_START, README_END = "<!-- notebooks:start -->", "<!-- notebooks:end -->"
# Metadata worth keeping in a learner's notebook: nbgrader's (for teachers) and tags (papermill's parameters).
KEPT_CELL_METADATA = ("nbgrader", "tags")
KEPT_NOTEBOOK_METADATA = ("kernelspec", "language_info")
SETUP_MARKER = "# Set-up"
# A cell that runs longer than this on 2 cores looks hung unless it shows progress.
SLOW_CELL_SECONDS = 10

REPO_ROOT = Path(__file__).resolve().parents[2]


def repository_url(root: Path = REPO_ROOT) -> str:
    """The course repository's address, from ``pyproject.toml``: the one place it is written."""
    with open(root / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["urls"]["Repository"].rstrip("/")


# The extras of pyproject.toml a notebook needs beyond the course itself, installed by its set-up cell (Colab
# has torchvision but not torch-fidelity). Locally the README's install decides, and the notebook says what it skips.
NOTEBOOK_EXTRAS = {"06_add_on_stable_diffusion": ("fid",)}

SETUP_CELL = """
{marker}: in Colab (or anywhere addlib is missing) this fetches the course into ./{folder}
# and installs it. Locally, with the course installed as the README says, it does nothing.
import importlib.metadata as metadata, importlib.util, pathlib, subprocess, sys
if importlib.util.find_spec("addlib") is None:
    def run(step, *command):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"Set-up stopped: {{step}} failed ({{done.stderr.strip()[-300:]}}); run this cell again.")
    course, url = pathlib.Path("{folder}").resolve(), "{url}"
    before = {{d.name: d.version for d in metadata.distributions()}}
    if not course.exists():
        run(f"fetching the course from {{url}}", "git", "clone", "-q", "--depth", "1", url, str(course))
    run("installing the course", sys.executable, "-m", "pip", "install", "-q", "-e", f"{{course}}{extras}")
    sys.path.insert(0, str(course))
    changed = sorted({{d.name for d in metadata.distributions() if before.get(d.name, d.version) != d.version}})
    if changed:  # an exception, so that Run all stops here rather than go on with the old modules
        raise SystemExit(f"Restart the runtime (Colab: Runtime > Restart session) and run the notebook from the "
                         f"top: the install changed {{', '.join(changed)}}.")
    print("The course is installed.")
"""


def setup_cell_source(url: str, extras: tuple[str, ...] = ()) -> str:
    """The first code cell of every notebook: in Colab (or any server without addlib) it fetches the course into
    ./<repository name> and installs it with ``extras`` (names of pyproject.toml's optional dependencies); where
    addlib is installed it does nothing.

    Plain Python, no ``!`` or ``%`` magics: a failed clone or install stops the cell with one sentence naming
    the step and the tool's last words, instead of a ``ModuleNotFoundError`` further down. An install that
    changed packages the runtime had already (Colab's own ipywidgets, say) stops the cell too, with one sentence
    saying to restart the runtime."""
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        declared = tomllib.load(f)["project"]["optional-dependencies"]
    unknown = [extra for extra in extras if extra not in declared]
    if unknown:
        raise ValueError(f"unknown extra {unknown[0]!r}; pyproject.toml declares {', '.join(declared)}")
    folder = url.rsplit("/", 1)[-1]
    return SETUP_CELL.format(marker=SETUP_MARKER, url=url, folder=folder,
                             extras=f"[{','.join(extras)}]" if extras else "").strip()


def strip_solution(source: str, stub: list[str]) -> str:
    """Replace each BEGIN/END SOLUTION block (markers included) by ``stub``, indented like the marker."""
    out, inside = [], False
    for number, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"line {number}: {BEGIN} inside another solution block; close it with {END}")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out += [indent + s for s in stub]
        elif stripped == END:
            if not inside:
                raise ValueError(f"line {number}: {END} without a {BEGIN} before it")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN} is never closed; add {END} after the answer")
    return "\n".join(out)


def exercise_notebook(solution: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """The learner's version of a solution notebook: answers stubbed, outputs and run metadata cleared."""
    nb = copy.deepcopy(solution)
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in KEPT_NOTEBOOK_METADATA}
    for index, cell in enumerate(nb.cells):
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in KEPT_CELL_METADATA}
        has_markers = BEGIN in cell.source
        is_solution = cell.metadata.get("nbgrader", {}).get("solution", False)
        if has_markers != is_solution:
            raise ValueError(
                f"{name}, cell {index}: solution markers and nbgrader metadata disagree; a cell with "
                f"{BEGIN} needs metadata {{'nbgrader': {{'solution': true, 'grade_id': ...}}}} and vice versa"
            )
        if has_markers:
            cell.source = strip_solution(cell.source, CODE_STUB if cell.cell_type == "code" else MARKDOWN_STUB)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def colab_url(url: str, path: str) -> str:
    """The address that opens ``path`` of the repository at ``url`` in Colab."""
    return url.replace("https://github.com/", "https://colab.research.google.com/github/") + f"/blob/main/{path}"


def readme_table(url: str, root: Path = REPO_ROOT) -> str:
    """The README's notebook list: one row per solution, its first heading as title, badge and links."""
    rows = ["| # | notebook | what you learn | |", "|---|---|---|---|"]
    for path in sorted((root / "solutions").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        title, summary = _title_and_summary(nb, path.name)
        badge = f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(url, f'notebooks/{path.name}')})"
        rows.append(f"| {path.name[:2]} | [{title}](notebooks/{path.name}) ([solution](solutions/{path.name})) | {summary} | {badge} |")
    return "\n".join(rows)


def _title_and_summary(nb: nbformat.NotebookNode, name: str) -> tuple[str, str]:
    """A notebook's ``# heading`` and the first line under it, which every notebook must begin with."""
    first_markdown = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
    match = re.match(r"#\s+(.+)\n+(.+)", first_markdown)
    if not match:
        raise ValueError(f"{name}: the first markdown cell must be '# Title' followed by a one-line summary")
    return match.group(1).strip(), match.group(2).strip()


def _with_setup_cell(nb: nbformat.NotebookNode, source: str, name: str) -> nbformat.NotebookNode:
    first_code = next((c for c in nb.cells if c.cell_type == "code"), None)
    if first_code is None or not first_code.source.startswith(SETUP_MARKER):
        raise ValueError(f"{name}: the first code cell must be the set-up cell starting with {SETUP_MARKER!r}")
    first_code.source = source
    return nb


def _write_if_changed(path: Path, text: str, check: bool, stale: list[str]) -> None:
    if path.exists() and path.read_text() == text:
        return
    stale.append(str(path))
    if not check:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def sync(root: Path = REPO_ROOT, check: bool = False) -> list[str]:
    """Regenerate (or with ``check``, only compare) everything derived from ``solutions/``; returns stale paths."""
    url, stale = repository_url(root), []
    solutions = sorted((root / "solutions").glob("[0-9][0-9]_*.ipynb"))
    for path in solutions:
        setup = setup_cell_source(url, NOTEBOOK_EXTRAS.get(path.stem, ()))
        solution = _with_setup_cell(nbformat.read(path, as_version=4), setup, path.name)
        _write_if_changed(path, nbformat.writes(solution) + "\n", check, stale)
        learner = exercise_notebook(solution, path.name)
        _write_if_changed(root / "notebooks" / path.name, nbformat.writes(learner) + "\n", check, stale)
    wanted = {p.name for p in solutions}
    stale += [str(p) for p in (root / "notebooks").glob("*.ipynb") if p.name not in wanted]  # orphans

    readme = (root / "README.md").read_text()
    start, end = readme.find(README_START), readme.find(README_END)
    if start < 0 or end < 0:
        raise ValueError(f"README.md needs the markers {README_START} and {README_END} around the notebook table")
    table = readme_table(url, root)
    updated = readme[: start + len(README_START)] + "\n" + table + "\n" + readme[end:]
    _write_if_changed(root / "README.md", updated, check, stale)
    return stale


def execute(path: Path, timeout: int = 1200) -> None:
    """Run a solution notebook top to bottom in its own folder and store it with its outputs."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=False,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    for index, cell in enumerate(nb.cells):
        # Timings change every run and would make every execution a diff: store none, but name the slow cells
        # that show no progress (a text bar writes to stderr).
        timing = cell.metadata.pop("execution", {})
        if "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            start, end = (datetime.fromisoformat(timing[k].replace("Z", "+00:00"))
                          for k in ("iopub.execute_input", "shell.execute_reply"))
            seconds = (end - start).total_seconds()
            if seconds > SLOW_CELL_SECONDS and not any(o.get("name") == "stderr" for o in cell.outputs):
                print(f"{path.name}, cell {index}: {seconds:.0f} s with no progress bar (a learner may think it hung)")
        coalesce_streams(cell)
    nbformat.write(nb, path)


def coalesce_streams(cell: nbformat.NotebookNode) -> None:
    """Consecutive outputs of one stream as one, with carriage returns applied, as a terminal shows them: a
    progress bar is stored as its last state, not as one output per update."""
    outputs = []
    for output in cell.get("outputs", []):
        previous = outputs[-1] if outputs else None
        if output.output_type == "stream" and previous and previous.output_type == "stream" \
                and previous.name == output.name:
            previous.text += output.text
        else:
            outputs.append(output)
    for output in outputs:
        if output.output_type == "stream":
            output.text = re.sub(r"[^\n]*\r(?=[^\n])", "", output.text)  # a line keeps what follows its last \r
    if "outputs" in cell:
        cell.outputs = outputs


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m addlib.course.exercises", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything is stale")
    parser.add_argument("--execute", nargs="*", type=Path, default=[], metavar="SOLUTION",
                        help="re-run these solution notebooks (outputs stored) before regenerating")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="the course repository (default: %(default)s)")
    args = parser.parse_args(argv)
    for path in args.execute:  # every one checked before the first runs, minutes long
        if not path.is_file() or path.suffix != ".ipynb":
            parser.error(f"{'no notebook' if not path.is_file() else 'not a notebook:'} {path}; name a solution "
                         f"notebook, e.g. solutions/01_forward_process.ipynb")
        try:  # a malformed file fails nbformat in many ways: its JSON, its encoding, its version converters
            nbformat.read(path, as_version=4)
        except Exception as error:  # noqa: BLE001
            parser.error(f"{path} is not a notebook nbformat can read ({str(error).splitlines()[0][:80]}); name a "
                         f"solution notebook, e.g. solutions/01_forward_process.ipynb")
    for path in args.execute:
        print(f"executing {path} ...", flush=True)
        execute(path)
    stale = sync(args.root, check=args.check)
    if args.check and stale:
        print("out of date (run `python -m addlib.course.exercises` and commit the result):\n  " + "\n  ".join(stale))
        return 1
    print("\n".join(f"wrote {p}" for p in stale) or "everything is in step")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
