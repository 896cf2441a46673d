"""The repository's promises: install files in step, CI runs the README's command, notebooks in step."""

import re
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

from addlib.course import exercises

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}


def _requirement(spec: str) -> tuple[str, str]:
    name, bound = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", spec).groups()
    return name.lower(), bound.replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    wanted = dict(_requirement(r) for r in wanted)
    wanted = {CONDA_NAMES.get(name, name): bound for name, bound in wanted.items()}
    conda = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    # What conda-forge lacks comes from PyPI, in the pip: section.
    pip = [d for entry in conda if isinstance(entry, dict) for d in entry.get("pip", []) if d != "-e ."]
    listed = [d for d in conda if isinstance(d, str) and not d.startswith(("python=", "pip"))] + pip
    listed = dict(map(_requirement, listed))
    assert listed == wanted, "environment.yml and pyproject.toml list different requirements"


def test_lowest_versions_environment_pins_every_declared_floor():
    """CI's lowest-versions environment must test the floors pyproject.toml declares, all of them (torch aside:
    CI installs its CPU build, 2.13, everywhere)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    floors = {name: bound.removeprefix(">=") for name, bound in map(_requirement, declared) if name != "torch"}
    lines = (ROOT / "tests" / "constraints" / "lowest.txt").read_text().splitlines()
    pinned = dict(line.lower().split("==") for line in lines if "==" in line and not line.startswith("#"))
    assert pinned.keys() == floors.keys(), "tests/constraints/lowest.txt and pyproject.toml name different packages"
    for name, floor in floors.items():
        assert _version(pinned[name]) == _version(floor), f"{name}: pyproject says >={floor}, CI pins {pinned[name]}"


def _version(text: str) -> tuple[int, ...]:
    parts = tuple(int(part) for part in text.split("."))
    return parts + (0,) * (3 - len(parts))


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", setup, flags=re.S)


def test_readme_gives_two_setup_commands_and_ci_runs_the_test_one():
    commands = _readme_commands()
    assert len(commands) == 2, "the README's set-up section must show exactly two commands"
    course, tests = commands
    assert "jupyter" in course and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci, f"CI must run the README's test command verbatim: {tests!r}"


def test_learner_notebooks_are_in_step_with_solutions():
    stale = exercises.sync(ROOT, check=True)
    assert not stale, f"stale: {stale}; run `python -m addlib.course.exercises` and commit the result"


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("*.ipynb")), ids=lambda p: p.name)
def test_solution_notebook_structure(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    extras = exercises.NOTEBOOK_EXTRAS.get(path.stem, ())
    assert code[0].source == exercises.setup_cell_source(exercises.repository_url(ROOT), extras)
    solutions = [c for c in code if c.metadata.get("nbgrader", {}).get("solution")]
    assert len(solutions) >= 2, "each notebook has at least two exercises"
    ids = [c.metadata["nbgrader"]["grade_id"] for c in code if "nbgrader" in c.metadata]
    assert len(ids) == len(set(ids)), "nbgrader grade_ids must be unique"
    for cell in solutions:
        following = code[code.index(cell) + 1]
        assert "checks.check_" in following.source, f"exercise {cell.metadata['nbgrader']['grade_id']} needs a check cell"
        assert following.metadata["nbgrader"]["grade"] is True
    size = path.stat().st_size
    assert size < 400_000, f"{path.name} is {size // 1000} kB; keep figures small"


# A figure the text quotes (two decimals or more) must be one the notebook prints, or a constant its code sets;
# one it quotes from docs/benchmarks.md must stand there, and the cell must say so. Re-executing a notebook
# then cannot leave its text behind. Figures from elsewhere, each with where it comes from:
QUOTED_ELSEWHERE = {
    ("01_forward_process", "0.0047"): "Stable Diffusion's alphas_cumprod[999], drawn in the schedule figure",
}
FIGURE = re.compile(r"(?<![\w.:/])(\d+\.\d{2,})(?![\w.]*\d)")


def _figures(text: str) -> set[str]:
    """Every decimal in ``text``, and each rounded to fewer places: 0.875 is quoted as 0.88 or 0.9."""
    found = set()
    for number in re.findall(r"\d+\.\d+", text):
        places = len(number.split(".")[1])
        found.update(f"{float(number):.{k}f}" for k in range(1, places + 1))
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("*.ipynb")), ids=lambda p: p.name)
def test_figures_in_the_text_are_the_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    outputs = "\n".join(str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", ""))
                        for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs)
    printed, docs = _figures(outputs + code), _figures((ROOT / "docs" / "benchmarks.md").read_text())
    wrong = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        cites_docs = "docs/benchmarks.md" in cell.source
        for figure in FIGURE.findall(cell.source):
            if figure in printed or (cites_docs and figure in docs) or (path.stem, figure) in QUOTED_ELSEWHERE:
                continue
            uncited = "" if cites_docs else " (nor does the cell cite docs/benchmarks.md)"
            wrong.append(f"cell {index}: {figure}{uncited}")
    assert not wrong, f"{path.name} quotes figures that no output prints: {'; '.join(wrong)}"


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("*.ipynb")), ids=lambda p: p.name)
def test_every_notebook_opens_with_objectives_and_ends_with_a_summary(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "**You will learn**" in first.source and "**You need**" in first.source
    learn = first.source.split("**You will learn**")[1].split("**You need**")[0]
    objectives = [line for line in learn.splitlines() if line.startswith("- ")]
    assert 3 <= len(objectives) <= 4, f"{len(objectives)} learning objectives; state three or four"
    need = first.source.split("**You need**")[1].split("\n\n")[0]
    assert re.search(r"\d+ minutes? on a 2-core CPU", need), "say how long the notebook takes on a 2-core CPU"
    summaries = [cell for cell in nb.cells if cell.cell_type == "markdown" and "## Summary" in cell.source]
    assert len(summaries) == 1, "one summary, near the end"
    points = [line for line in summaries[0].source.split("## Summary")[1].splitlines() if line.startswith("- ")]
    assert len(points) >= 3, "the summary restates the notebook's points"


def test_strip_solution_keeps_indentation_and_rejects_unbalanced_markers():
    source = "def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\nf(1)"
    assert exercises.strip_solution(source, exercises.CODE_STUB) == (
        "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()\nf(1)"
    )
    with pytest.raises(ValueError, match="is never closed"):
        exercises.strip_solution("### BEGIN SOLUTION\nx = 1", exercises.CODE_STUB)
    with pytest.raises(ValueError, match="without a ### BEGIN SOLUTION"):
        exercises.strip_solution("x = 1\n### END SOLUTION", exercises.CODE_STUB)


def test_exercise_notebook_stubs_answers_and_clears_outputs():
    kernelspec = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": kernelspec, "widgets": {"state": {}}})
    answer = nbformat.v4.new_code_cell("### BEGIN SOLUTION\ny = 2\n### END SOLUTION", execution_count=3,
                                       metadata={"nbgrader": {"solution": True, "grade_id": "y"}, "scrolled": True})
    answer.outputs = [nbformat.v4.new_output("stream", text="hi")]
    nb.cells = [answer]
    learner = exercises.exercise_notebook(nb)
    cell = learner.cells[0]
    assert cell.source == "# YOUR CODE HERE\nraise NotImplementedError()"
    assert cell.outputs == [] and cell.execution_count is None
    assert cell.metadata == {"nbgrader": {"solution": True, "grade_id": "y"}}
    assert learner.metadata == {"kernelspec": kernelspec}
    nb.cells[0].metadata = {}
    with pytest.raises(ValueError, match="solution markers and nbgrader metadata disagree"):
        exercises.exercise_notebook(nb)


def test_a_progress_bar_is_stored_as_its_last_state():
    stream = lambda name, text: nbformat.v4.new_output("stream", name=name, text=text)  # noqa: E731
    cell = nbformat.v4.new_code_cell("run()")
    cell.outputs = [stream("stderr", "\rsteps:   0%|"), stream("stderr", "\rsteps:  50%|"),
                    stream("stderr", "\rsteps: 100%|"), stream("stdout", "done\nloss 0.1\n"), stream("stderr", "\n")]
    exercises.coalesce_streams(cell)
    assert [(o.name, o.text) for o in cell.outputs] == [
        ("stderr", "steps: 100%|"), ("stdout", "done\nloss 0.1\n"), ("stderr", "\n")]
