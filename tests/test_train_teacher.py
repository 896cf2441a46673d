"""The teacher's training loop: exact resume, NaN stops, config checks, recipe. Tiny step counts."""

import json

import pytest

from addlib.course import train_teacher
from addlib.course.train_teacher import Config, train
from addlib.utils.runs import lr_at

TINY = dict(vae_steps=3, vae_batch_size=4, unet_steps=4, batch_size=4, warmup_steps=1, checkpoint_every=2)


def test_lr_schedule_warms_up_then_decays():
    rates = [lr_at(s, 100, 1.0, 10) for s in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:])) and rates[-1] == pytest.approx(0.1, abs=1e-3)


def test_resume_repeats_an_uninterrupted_run_exactly(straight_and_resumed, same_tensors):
    (straight, _), (resumed, _) = straight_and_resumed(  # the third UNet step, after the step-2 checkpoint
        lambda out, run_dir, resume: train(Config(**TINY), out, run_dir, resume), train_teacher, "denoising_loss", 3)
    for part in ["unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model", "text_encoder/model"]:
        assert same_tensors(straight / f"{part}.safetensors", resumed / f"{part}.safetensors"), f"{part} differs"
    log = lambda out: json.loads((out / "loss_log.json").read_text())  # noqa: E731
    assert log(straight) == log(resumed)


def test_nan_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    real_loss = train_teacher.denoising_loss
    calls = []

    def nan_at_fourth_step(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 4 else loss

    monkeypatch.setattr(train_teacher, "denoising_loss", nan_at_fourth_step)
    with pytest.raises(FloatingPointError, match=r"UNet loss became nan at step 3; the last good checkpoint \(step 2\)"):
        train(Config(**TINY), tmp_path / "out", tmp_path / "run")
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["state"]["unet_step"] == 2


def test_resume_with_another_config_is_refused(tmp_path):
    train(Config(**TINY), tmp_path / "out", tmp_path / "run")
    with pytest.raises(ValueError, match=r"another configuration .*'lr': \(0.0005, 0.001\)"):
        train(Config(**(TINY | {"lr": 1e-3})), tmp_path / "out", tmp_path / "run", resume=True)
    recipe = json.loads((tmp_path / "out" / "recipe.json").read_text())
    assert recipe["config"]["unet_steps"] == 4 and recipe["command"].startswith("python -m addlib.course.train_teacher")
    assert recipe["fp16_storage_max_abs_change_of_unet_output"] < 0.05


def test_cli_refuses_to_overwrite_a_run_without_resume(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.json").write_text("{}")
    with pytest.raises(SystemExit):
        train_teacher.main(["--run-dir", str(tmp_path / "run")])
    assert "already holds a checkpoint: pass --resume" in capsys.readouterr().err
