"""The notebooks' set-up cell, run as Colab runs it: in a Python without addlib, against a local clone."""

import subprocess
import venv
from pathlib import Path

import pytest

from addlib.course import exercises

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A fresh virtual environment with pip and nothing else: addlib is missing, as in a new Colab runtime."""
    folder = tmp_path_factory.mktemp("bare")
    venv.create(folder / "env", with_pip=True)
    return folder / "env" / "bin" / "python"


def run_cell(python, url: str, cwd, extras=()) -> subprocess.CompletedProcess:
    source = exercises.setup_cell_source(url, extras)
    return subprocess.run([python, "-c", source], cwd=cwd, capture_output=True, text=True)


def test_a_failed_clone_stops_the_cell_with_one_sentence(bare_python, tmp_path):
    done = run_cell(bare_python, str(tmp_path / "no-such-course"), tmp_path)
    assert done.returncode == 1
    message = done.stderr.strip()
    assert message.startswith(f"Set-up stopped: fetching the course from {tmp_path / 'no-such-course'} failed (")
    assert message.endswith("; run this cell again.") and "Traceback" not in message


def test_the_cell_installs_the_course_and_its_extras_from_a_clone_and_stops_for_a_restart(bare_python, tmp_path):
    source = tmp_path / "source"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(source)], check=True)
    # The CPU build of torch, as CI installs it (a bare requirement would pull the CUDA one), and an nbformat
    # older than the course's floor: the install must upgrade it, as it upgrades Colab's own older packages.
    subprocess.run([bare_python, "-m", "pip", "install", "-q", "torch==2.13.0", "nbformat==5.8.0"], check=True)
    work = tmp_path / "work"
    work.mkdir()
    # The lightest extra stands in for notebook 06's (torch-fidelity would pull a CUDA build of torch here).
    done = run_cell(bare_python, str(source), work, extras=("data",))
    assert done.returncode == 1, "a needed restart must stop Run all"  # SystemExit, as IPython shows it
    assert done.stderr.strip().startswith("Restart the runtime (Colab: Runtime > Restart session)"), done.stderr
    assert "nbformat" in done.stderr.split("the install changed ")[1]
    where = subprocess.run([bare_python, "-c", "import addlib, datasets; print(addlib.__file__)"], cwd=work,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where == str(work / source.name / "addlib" / "__init__.py")  # beside the notebook (Colab: /content)
    again = run_cell(bare_python, str(source), work)  # with the course installed, the cell does nothing
    assert again.returncode == 0 and again.stdout == "" and again.stderr == ""
