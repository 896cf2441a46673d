"""Tests never download: the hub is switched off before anything imports huggingface_hub.

The notebooks' kernels, started by nbval, inherit this environment too.
"""

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several workers share the cores: one thread each (and in each notebook's kernel), or their thread pools
    # spin against each other and every worker runs several times slower than alone.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


# What makes the suite long: the notebooks (nbval), the website in Chromium, nbgrader grading a notebook, the
# set-up cell's fresh virtual environment and torchrun. `-m "not slow"` leaves them out while developing.
SLOW_FILES = {"test_website.py", "test_nbgrader.py", "test_setup_cell.py"}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.suffix == ".ipynb" or item.path.name in SLOW_FILES or "two_processes" in item.name:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def interrupt_at_call(monkeypatch):
    """``install(owner, name, call)`` makes ``owner.name`` raise KeyboardInterrupt on its ``call``-th call, as if
    the machine went away mid-run, and returns a function that puts the original back (for the resume)."""
    def install(owner, name: str, call: int):
        original, calls = getattr(owner, name), []

        def interrupted(*args, **kwargs):
            calls.append(1)
            if len(calls) == call:
                raise KeyboardInterrupt
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, interrupted)
        return lambda: monkeypatch.setattr(owner, name, original)
    return install


@pytest.fixture
def straight_and_resumed(tmp_path, interrupt_at_call):
    """``go(train, owner, name, call)`` runs ``train(out, run_dir, resume)`` once straight through, and once
    interrupted at ``owner.name``'s ``call``-th call and then resumed; it returns the two runs' ``(out, run_dir)``
    for the test to compare, which must find them the same."""
    def go(train, owner, name: str, call: int):
        straight, resumed = (tmp_path / "straight", tmp_path / "run_straight"), (tmp_path / "resumed",
                                                                                  tmp_path / "run_resumed")
        train(*straight, False)
        restore = interrupt_at_call(owner, name, call)
        with pytest.raises(KeyboardInterrupt):
            train(*resumed, False)
        restore()
        train(*resumed, True)
        return straight, resumed
    return go


@pytest.fixture
def same_tensors():
    """``same(a, b)``: whether two safetensors files hold the same tensors, bit for bit."""
    import torch
    from safetensors.torch import load_file

    def same(a, b) -> bool:
        a, b = load_file(a), load_file(b)
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return same


@pytest.fixture(scope="module")
def teacher():
    """The shipped teacher pipeline, frozen as the trainers freeze it."""
    from addlib.loading import load_pipeline

    pipe = load_pipeline()
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False)
    return pipe
