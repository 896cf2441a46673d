"""A teacher's nbgrader workflow, run as README.md's "For teachers" writes it, on notebook 01, and once on
notebook 04, whose training cell runs for minutes.

On notebook 01 three learners submit: one hands the stubs back unchanged, one answers everything, one gets one
answer wrong.
Autograde must score them 0, full and one point less, and no feedback may show an interrupted cell or a
knock-on error: the only errors allowed are the learners' own.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT, NOTEBOOK = "forward_process", "01_forward_process.ipynb"
POINTS = 2  # one per check cell of notebook 01

# The wrong answer: x0_from_epsilon multiplies by sqrt(abar_t) where it should divide.
WRONG = ("return (x_t - (1 - alpha_bar).sqrt() * epsilon) / alpha_bar.sqrt()",
         "return (x_t - (1 - alpha_bar).sqrt() * epsilon) * alpha_bar.sqrt()")
WRONG_HINT = "you multiplied by sqrt(abar_t)"


def readme_commands() -> list[str]:
    """The teacher's commands from README.md, one per line, comments dropped."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(mkdir -p \.\./course.*?)```", readme, re.S)
    assert block, "README.md's 'For teachers' section has no bash block starting with 'mkdir -p ../course'"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def shell(commands: str, cwd: Path) -> None:
    """Run bash commands with this Python's environment first on the PATH, as in an activated venv."""
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", commands], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PATH": path})
    assert done.returncode == 0, f"{commands} failed:\n{done.stderr[-3000:]}"


def answered(released: dict, notebook: str, wrong: bool) -> dict:
    """The released notebook with every stub replaced by the solution's answer (one of them wrong if asked)."""
    solution = json.loads((ROOT / "solutions" / notebook).read_text())
    answers = {c["metadata"]["nbgrader"]["grade_id"]: "".join(c["source"])
               for c in solution["cells"] if c["metadata"].get("nbgrader", {}).get("solution")}
    for cell in released["cells"]:
        grade_id = cell["metadata"].get("nbgrader", {}).get("grade_id")
        if grade_id in answers:
            source = re.sub(r" *### (BEGIN|END) SOLUTION\n?", "", answers[grade_id])
            if wrong and grade_id == "x0_from_epsilon":
                assert WRONG[0] in source, "notebook 01's x0_from_epsilon answer changed; update WRONG"
                source = source.replace(*WRONG)
            cell["source"] = source
    return released


def errors(notebook: Path) -> list[str]:
    """'ename: evalue' of every error output in an autograded notebook."""
    cells = json.loads(notebook.read_text())["cells"]
    return [f"{o['ename']}: {o['evalue']}" for c in cells for o in c.get("outputs", []) if o["output_type"] == "error"]


def grade(work: Path, assignment: str, notebook: str, learners: dict[str, bool | None]) -> Path:
    """Run the README's commands for ``notebook`` as ``assignment`` in ``work``, which holds the clone's
    solutions/ and teaching/; each learner hands back the stubs (None), or every answer right (False) or with one
    wrong (True). Returns the course folder."""
    clone, exchange = work / "clone", work / "exchange"
    clone.mkdir()
    for folder in ("solutions", "teaching"):
        (clone / folder).symlink_to(ROOT / folder)
    commands = [c.replace(NOTEBOOK, notebook).replace(ASSIGNMENT, assignment) for c in readme_commands()]
    split = next(i for i, c in enumerate(commands) if c.startswith("nbgrader collect"))
    # A course's exchange normally lives in /srv/nbgrader/exchange; the test keeps its own.
    setup = "\n".join(commands[:split]).replace(
        "cd ../course", f"cd ../course && echo 'c.Exchange.root = \"{exchange}\"' >> nbgrader_config.py")
    shell(setup, cwd=clone)

    for learner, wrong in learners.items():
        home = work / "learners" / learner
        home.mkdir(parents=True)
        options = f"--course=add-course --Exchange.root={exchange}"
        shell(f"nbgrader fetch_assignment {assignment} {options}", cwd=home)
        if wrong is not None:
            path = home / assignment / notebook
            path.write_text(json.dumps(answered(json.loads(path.read_text()), notebook, wrong)))
        shell(f"nbgrader submit {assignment} --student={learner} {options}", cwd=home)

    course = work / "course"
    shell("\n".join(commands[split:]), cwd=course)
    return course


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    work = tmp_path_factory.mktemp("teacher")
    yield grade(work, ASSIGNMENT, NOTEBOOK, {"stubs": None, "correct": False, "wrong": True})
    shutil.rmtree(work, ignore_errors=True)


def test_shipped_config_gives_cells_as_long_as_the_test_suite_does():
    config = (ROOT / "teaching" / "nbgrader_config.py").read_text()
    nbval = re.search(r"--nbval-cell-timeout=(\d+)", (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"c.ExecutePreprocessor.timeout = {nbval}" in config


def test_autograde_scores_each_submission(graded):
    with open(graded / "grades.csv") as f:
        scores = {row["student_id"]: (float(row["score"]), float(row["max_score"])) for row in csv.DictReader(f)}
    assert scores == {"stubs": (0, POINTS), "correct": (POINTS, POINTS), "wrong": (POINTS - 1, POINTS)}


def test_feedback_shows_only_the_learners_own_errors(graded):
    autograded = {learner: errors(graded / "autograded" / learner / ASSIGNMENT / NOTEBOOK)
                  for learner in ("stubs", "correct", "wrong")}
    assert autograded["correct"] == []
    # A stub raises where it is called: in its check (which says so) and in the cells that use the function.
    assert autograded["stubs"] and all(e.startswith(("CheckFailed", "NotImplementedError"))
                                       for e in autograded["stubs"]), autograded["stubs"]
    assert [e.split(":")[0] for e in autograded["wrong"]] == ["CheckFailed"], autograded["wrong"]
    feedback = (graded / "feedback" / "wrong" / ASSIGNMENT / NOTEBOOK.replace(".ipynb", ".html")).read_text()
    assert WRONG_HINT in feedback, "the wrong answer's feedback does not show the checker's hint"


def test_a_notebook_that_trains_grades_in_full(tmp_path):
    """Notebook 04 trains three discriminators in one cell, minutes long: under the README's configuration no
    cell is interrupted, and a learner who answers everything gets every point with no error in the feedback."""
    notebook = "04_discriminator_r1.ipynb"
    checks = sum("checks.check_" in "".join(cell["source"]) and cell["cell_type"] == "code"
                 for cell in json.loads((ROOT / "solutions" / notebook).read_text())["cells"])
    course = grade(tmp_path, "discriminator_r1", notebook, {"correct": False})
    with open(course / "grades.csv") as f:
        (row,) = csv.DictReader(f)
    assert (float(row["score"]), float(row["max_score"])) == (checks, checks)
    assert errors(course / "autograded" / "correct" / "discriminator_r1" / notebook) == []
