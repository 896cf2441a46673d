"""One-line errors: configuration ranges, inputs, devices, and the commands that print them."""

import subprocess
import sys

import pytest
import torch

from addlib import bench, train_add
from addlib.course import exercises, rehearsal, train_evaluators, train_teacher, train_tiny_vae
from addlib.train_add import Config
from addlib.utils.commands import run_command
from addlib.utils.errors import check_images, resolve_device


@pytest.mark.parametrize("change, message", [
    (dict(steps=0), r"^steps \(--steps\) must be at least 1, got 0$"),
    (dict(steps=-5), r"^steps \(--steps\) must be at least 1, got -5$"),
    (dict(steps=2.5), r"^steps \(--steps\) must be an integer, got 2.5$"),
    (dict(batch_size=0), r"^batch_size \(--batch-size\) must be at least 1, got 0$"),
    (dict(checkpoint_every=0), r"^checkpoint_every \(--checkpoint-every\) must be at least 1, got 0$"),
    (dict(lr=0.0), r"^lr \(--lr\) must be above 0, got 0.0$"),
    (dict(lr=float("nan")), r"^lr \(--lr\) is nan; give a finite number$"),
    (dict(discriminator_lr=float("inf")), r"^discriminator_lr \(--discriminator-lr\) is inf; give a finite number$"),
    (dict(discriminator_lr=-1e-3), r"^discriminator_lr \(--discriminator-lr\) must be above 0, got -0.001$"),
    (dict(r1_weight=float("inf")), r"^r1_weight \(--r1-weight\) is inf; give a finite number$"),
    (dict(head_width=0), r"^head_width \(--head-width\) must be at least 1, got 0$"),
    (dict(discriminator_verdict="max"), r"^unknown verdict 'max' \(--discriminator-verdict\); choose one of tokens, image$"),
    (dict(ema_decay=2.0), r"^ema_decay \(--ema-decay\) must be in \[0, 1\), got 2.0$"),
    (dict(omit_prob=1.5), r"^omit_prob \(--omit-prob\) must be in \[0, 1\], got 1.5$"),
    (dict(r1_weight=-1.0), r"^r1_weight \(--r1-weight\) must be at least 0, got -1.0$"),
    (dict(seed="2"), r"^seed \(--seed\) must be an integer, got '2'$"),
    (dict(teacher_guidance_scale=0.5), r"^teacher_guidance_scale must be at least 1 \(1 = no guidance\), got 0.5$"),
    (dict(mixed_precision="fp32"), r"^mixed_precision must be one of no, fp16, bf16, got 'fp32'$"),
])
def test_add_config_refuses_what_no_run_can_use_as_it_is_built(change, message):
    with pytest.raises(ValueError, match=message):
        Config(**change)


def test_fp16_is_refused_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="mixed_precision 'fp16' needs a CUDA GPU and torch sees none"):
        Config(mixed_precision="fp16")


@pytest.mark.parametrize("module, change, message", [
    (train_teacher, dict(vae_steps=0), "vae_steps"),
    (train_teacher, dict(uncond_prob=-0.1), "uncond_prob"),
    (train_tiny_vae, dict(warmup_steps=-1), r"warmup_steps \(--warmup-steps\) must be at least 0"),
    (train_evaluators, dict(vit_lr=0.0), "vit_lr"),
    (train_teacher, dict(resolution=30), "resolution 30 is not a positive multiple of the VAE's downsampling factor 4"),
])
def test_every_trainer_checks_its_config_as_it_is_built(module, change, message):
    with pytest.raises(ValueError, match=message):
        module.Config(**change)


@pytest.mark.parametrize("main, argv, message", [
    (train_add.main, ["--steps", "0"], "python -m addlib.train_add: error: steps (--steps) must be at least 1"),
    (train_add.main, ["--mixed-precision", "fp32"], "mixed_precision must be one of no, fp16, bf16"),
    (train_teacher.main, ["--batch-size", "0"], "batch_size (--batch-size) must be at least 1"),
    (train_tiny_vae.main, ["--lr", "-1"], "lr (--lr) must be above 0"),
    (train_evaluators.main, ["--steps", "0"], "must be at least 1, got 0"),
    (bench.main, ["teacher", "--num-images", "1"], "argument --num-images: must be an integer of at least 2"),
    (bench.main, ["stream", "--num-frames", "0"], "argument --num-frames: must be an integer of at least 1"),
    (bench.main, ["stream", "--repeats", "x"], "argument --repeats: must be an integer of at least 1, got 'x'"),
    (exercises.main, ["--execute", "README.md"], "not a notebook: README.md; name a solution notebook"),
    (exercises.main, ["--execute", "tests/nbval_sanitize.cfg"], "not a notebook: tests/nbval_sanitize.cfg"),
    (rehearsal.main, ["--out", "README.md"], "--out README.md is a file; give a folder"),
    (train_add.main, ["--run-dir", "README.md"], "--run-dir README.md is a file; give a folder"),
    (train_evaluators.main, ["--out", "README.md"], "--out README.md is a file; give a folder"),
])
def test_command_line_errors_are_one_line(main, argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and message in err and err.count("\n") == 1, err


def test_a_malformed_notebook_is_refused_before_any_notebook_runs(tmp_path, capsys):
    (tmp_path / "bad.ipynb").write_text("{not json")
    with pytest.raises(SystemExit) as exit:  # 01 would run for a minute if it were not refused first
        exercises.main(["--execute", "solutions/01_forward_process.ipynb", str(tmp_path / "bad.ipynb")])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "bad.ipynb is not a notebook nbformat can read" in err and err.count("\n") == 1


def test_run_command_prints_the_library_s_own_errors_as_one_line_and_keeps_tracebacks_for_bugs(capsys):
    def refused():
        check_images("frames", torch.zeros(3, 32, 32, dtype=torch.uint8), ndim=None)

    with pytest.raises(SystemExit) as exit:
        run_command(refused)
    assert exit.value.code == 2
    assert capsys.readouterr().err == "error: frames must be floating point in [-1, 1], got torch.uint8; for 0-255 " \
                                      "values use images.float() / 127.5 - 1\n"

    def bug():
        torch.zeros(2) @ torch.zeros(3)  # torch's own error: a bug of the caller, not bad input

    with pytest.raises(RuntimeError):
        run_command(bug)


def test_a_command_prints_one_line_from_a_fresh_process(tmp_path):
    """The same from outside, as a learner runs it: a teacher folder that is not there."""
    result = subprocess.run([sys.executable, "-m", "addlib.train_add", "--teacher", str(tmp_path / "none"),
                             "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr == f"error: no diffusers pipeline folder at {tmp_path / 'none'}; check the path, or save " \
                            f"one with addlib.loading.save_pipeline\n"


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^device 'cuda:1' asked for, but torch sees no CUDA GPU here"):
        resolve_device("cuda:1")
