"""The ADD training loop on the miniature: exact resume, NaN stops, bad configurations. Tiny step counts."""

import json

import pytest
from safetensors.torch import load_file

from addlib import train_add
from addlib.train_add import Config, train

TINY = dict(steps=4, batch_size=4, checkpoint_every=2)


def test_resume_repeats_an_uninterrupted_run_exactly(tmp_path, interrupt_at_call):
    train(Config(**TINY), tmp_path / "straight", tmp_path / "run_straight")
    restore = interrupt_at_call(train_add.ADDTrainer, "step", 3)  # the third step, after the step-2 checkpoint
    with pytest.raises(KeyboardInterrupt):
        train(Config(**TINY), tmp_path / "resumed", tmp_path / "run_resumed")
    restore()
    train(Config(**TINY), tmp_path / "resumed", tmp_path / "run_resumed", resume=True)

    straight = load_file(tmp_path / "straight" / "unet" / "diffusion_pytorch_model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all((straight[k] == resumed[k]).all() for k in straight)
    log = lambda name: json.loads((tmp_path / name / "loss_log.json").read_text())
    assert log("straight") == log("resumed")
    recipe = json.loads((tmp_path / "straight" / "recipe.json").read_text())
    assert recipe["command"].startswith("python -m addlib.train_add") and recipe["config"]["steps"] == 4


def test_nan_stops_with_a_clear_message(tmp_path, monkeypatch):
    real_loss = train_add.distillation_loss
    monkeypatch.setattr(train_add, "distillation_loss", lambda *a, **k: real_loss(*a, **k) * float("nan"))
    with pytest.raises(FloatingPointError, match="student loss became nan at step 0"):
        train(Config(**TINY), tmp_path / "out", tmp_path / "run")


@pytest.mark.parametrize("timesteps, message", [("999,1000", r"in \[0, 999\]"), ("249,999", "from high to low"),
                                                 ("", "integers"), ("999,999", "repeats")])
def test_bad_student_timesteps_are_refused(timesteps, message, capsys):
    with pytest.raises(SystemExit):
        train_add.main(["--student-timesteps", timesteps])
    assert "student_timesteps" in capsys.readouterr().err
    with pytest.raises(ValueError, match=message):
        Config(student_timesteps=timesteps).check()
