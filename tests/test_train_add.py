"""The ADD training loop on the miniature: exact resume, NaN stops, bad configurations. Tiny step counts."""

import argparse
import json
import os
import shlex
import subprocess
import sys

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from addlib import add_trainer, discriminator, train_add
from addlib.discriminator import DIFFAUGMENT_POLICY
from addlib.evaluators import TinyViT, save_evaluator
from addlib.loading import load_pipeline
from addlib.lora import LORA_TARGETS
from addlib.sampling import sample
from addlib.shapes import make_shapes
from addlib.add_trainer import ADDTrainer, student_pipeline
from addlib.train_add import Config, train
from addlib.utils.commands import OneLineParser, add_config_options, command_line, parse_run_arguments

TINY = dict(steps=4, batch_size=4, checkpoint_every=2)


def test_resume_repeats_an_uninterrupted_run_exactly(tmp_path, straight_and_resumed, same_tensors):
    (straight, _), (resumed, _) = straight_and_resumed(  # the third step, after the step-2 checkpoint
        lambda out, run_dir, resume: train(Config(**TINY), out, run_dir, resume), add_trainer.ADDTrainer, "step", 3)
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert same_tensors(straight / weights, resumed / weights)
    log = lambda out: json.loads((out / "loss_log.json").read_text())  # noqa: E731
    assert log(straight) == log(resumed)
    recipe = json.loads((straight / "recipe.json").read_text())
    assert recipe["command"].startswith("python -m addlib.train_add") and recipe["config"]["steps"] == 4


def test_resume_with_another_configuration_is_refused_and_keeps_the_checkpoint(tmp_path):
    train(Config(steps=2, batch_size=2, checkpoint_every=1), tmp_path / "out", tmp_path / "run")
    before = (tmp_path / "run" / "checkpoint.safetensors").read_bytes()
    with pytest.raises(ValueError, match=rf"another configuration .*'lr': \({Config.lr}, 0.001\)"):
        train(Config(steps=2, batch_size=2, checkpoint_every=1, lr=1e-3), tmp_path / "out", tmp_path / "run",
              resume=True)
    assert (tmp_path / "run" / "checkpoint.safetensors").read_bytes() == before
    meta = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    del meta["state"]["config"]["discriminator_conditioning"]  # a run saved before that option existed
    (tmp_path / "run" / "checkpoint.json").write_text(json.dumps(meta))
    added = rf"another configuration .*'discriminator_conditioning': \(None, '{Config.discriminator_conditioning}'\)"
    with pytest.raises(ValueError, match=added):
        train(Config(steps=2, batch_size=2, checkpoint_every=1), tmp_path / "out", tmp_path / "run", resume=True)


def test_a_trainer_from_its_parts_trains_as_the_one_from_its_config():
    """from_config only builds the parts; the same parts, built by hand (a teacher in float32 from its folder,
    the heads drawn from the config's seed), make the same step."""
    config = Config(batch_size=2, discriminator="add+ladd")
    teacher = load_pipeline()
    torch.manual_seed(config.seed)
    by_hand = ADDTrainer(config, teacher, add_trainer.make_discriminator(config, teacher), Accelerator())
    assert by_hand.step(0, measure=True) == ADDTrainer.from_config(config, Accelerator()).step(0, measure=True)


def test_image_size_the_vae_cannot_take_is_refused():
    with pytest.raises(ValueError, match="resolution 30 is not a positive multiple of the VAE's downsampling factor 4"):
        ADDTrainer.from_config(Config(resolution=30), Accelerator())


def test_nan_stops_with_a_clear_message_naming_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_loss, calls = add_trainer.distillation_loss, []

    def nan_at_third_step(*args, **kwargs):
        calls.append(1)
        return real_loss(*args, **kwargs) * (float("nan") if len(calls) == 3 else 1)

    monkeypatch.setattr(add_trainer, "distillation_loss", nan_at_third_step)
    with pytest.raises(FloatingPointError, match=r"student loss became nan at step 2; the last good checkpoint "
                                                 r"\(step 2\) is in .*run: lower the learning rates"):
        train(Config(**TINY), tmp_path / "out", tmp_path / "run")
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["state"]["step"] == 2


@pytest.mark.parametrize("timesteps, message", [("999,1000", r"in \[0, 999\]"), ("249,999", "from high to low"),
                                                 ("", "integers"), ("999,999", "repeats")])
def test_bad_student_timesteps_are_refused(timesteps, message, capsys):
    with pytest.raises(SystemExit):
        train_add.main(["--student-timesteps", timesteps])
    assert "student_timesteps" in capsys.readouterr().err
    with pytest.raises(ValueError, match=message):
        Config(student_timesteps=timesteps).check()


def test_the_exported_pipeline_samples_as_add_with_diffusers_own_call(tmp_path):
    train(Config(steps=1, batch_size=2), tmp_path / "student", tmp_path / "run")
    pipe = load_pipeline(tmp_path / "student")
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    prompts = ["a red circle", "a large square on a blue background"]
    for steps in (1, 2, 4):
        ours = sample(pipe, prompts, steps, sampler="add", seed=3)
        theirs = pipe(prompts, num_inference_steps=steps, guidance_scale=0, output_type="pt",
                      generator=torch.Generator().manual_seed(3)).images * 2 - 1  # diffusers' [0, 1] to [-1, 1]
        torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_lora_student_shares_the_teacher_trains_only_adapters_and_exports_a_plain_unet(tmp_path):
    config = Config(steps=2, batch_size=2, lora_rank=4)
    trainer = ADDTrainer.from_config(config, Accelerator())
    teacher = load_pipeline(device="cpu").unet  # a separate copy, to compare with
    base = teacher.state_dict()
    assert trainer.accelerator.unwrap_model(trainer.student) is trainer.teacher.unet  # one UNet in memory
    assert all("lora" in name for name in trainer.trainable.names) and len(trainer.trainable.names) > 0
    x = torch.randn(2, 4, 8, 8)
    text = torch.randn(2, 16, trainer.teacher.text_encoder.config.hidden_size)
    with torch.no_grad():  # LoRA's B starts at zero: the student starts as the teacher
        torch.testing.assert_close(trainer.student(x, 500, text).sample, teacher(x, 500, text).sample)
    trainer.step(0)
    trainer.step(1)
    with torch.no_grad(), trainer.teacher_without_adapters():  # the teacher's predictions are the teacher's
        torch.testing.assert_close(trainer.teacher.unet(x, 500, text).sample, teacher(x, 500, text).sample)
    with torch.no_grad():  # and with the adapters on, the student has moved
        assert (trainer.student(x, 500, text).sample - teacher(x, 500, text).sample).abs().max() > 0
    unet = student_pipeline(trainer).unet
    assert not any("lora" in k or "base_layer" in k for k in unet.state_dict())
    changed = [k for k, v in unet.state_dict().items() if not torch.equal(v, base[k])]
    assert changed and all(any(t in k for t in LORA_TARGETS) for k in changed)
    with torch.no_grad():  # the merged UNet computes what the EMA adapters on the base do
        reference = trainer.accelerator.unwrap_model(trainer.student)
        trainer.trainable.load_state_dict(trainer.ema.state_dict())
        torch.testing.assert_close(unet(x, 500, text).sample, reference(x, 500, text).sample, atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_changes_memory_not_results(tmp_path):
    train(Config(steps=2, batch_size=2), tmp_path / "plain", tmp_path / "run_plain")
    train(Config(steps=2, batch_size=2, gradient_checkpointing=True), tmp_path / "ckpt", tmp_path / "run_ckpt")
    plain = load_file(tmp_path / "run_plain" / "checkpoint.safetensors")
    checkpointed = load_file(tmp_path / "run_ckpt" / "checkpoint.safetensors")
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], atol=1e-6, rtol=1e-5)


def test_two_processes_keep_identical_replicas(tmp_path):
    """Data-parallel training over gloo on two CPU processes, started by torchrun, which is what `accelerate
    launch --multi_gpu` runs on several GPUs (accelerate's own multi-CPU launcher needs MPI)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "addlib.train_add", "--steps", "2", "--batch-size", "2", "--checkpoint-every", "1",
               "--out", str(tmp_path / "student"), "--run-dir", str(tmp_path / "run")]
    environment = os.environ | {"ACCELERATE_USE_CPU": "1"}  # as accelerate's launcher sets it with --cpu
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    recipe = json.loads((tmp_path / "student" / "recipe.json").read_text())
    assert recipe["processes"] == 2 and recipe["replica_max_difference"] == 0.0


def test_recipe_command_repeats_the_configuration():
    config = Config(steps=7, gradient_checkpointing=True, tiny_vae="", augment="translation,cutout")
    parser = argparse.ArgumentParser()
    add_config_options(parser, Config)
    words = shlex.split(command_line("addlib.train_add", config.__dict__))[3:]
    assert Config(**vars(parser.parse_args(words))) == config


@pytest.mark.parametrize("argv, message", [
    (["--ladd-layers", "mid"], "--ladd-layers has no effect in this run: only --discriminator ladd or add+ladd"),
    (["--discriminator", "ladd", "--feature-network", "x"], "--feature-network has no effect in this run: LADD's"),
    (["--num-prompts", "64"], "--num-prompts has no effect in this run: only --dataset teacher generates"),
    (["--caption-column", "caption"], '--caption-column has no effect in this run: only an "hf:" dataset'),
])
def test_an_option_the_run_never_reads_is_refused(tmp_path, argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_run_arguments(OneLineParser(), argv, Config, tmp_path / "out", tmp_path / "run", train_add.PRESETS)
    assert message in capsys.readouterr().err
    # at its default it is accepted (older recipes write every field), and read where the run does read it
    parse_run_arguments(OneLineParser(), ["--ladd-t-mean", "-1.0"], Config, tmp_path / "out", tmp_path / "run")
    config, *_ = parse_run_arguments(OneLineParser(), ["--discriminator", "add+ladd", "--ladd-layers", "mid"],
                                     Config, tmp_path / "out", tmp_path / "run")
    assert config.ladd_layers == "mid"


def test_the_recipe_command_leaves_out_what_the_run_never_read_and_runs_again(tmp_path):
    train(Config(**TINY), tmp_path / "out", tmp_path / "run")
    command = json.loads((tmp_path / "out" / "recipe.json").read_text())["command"]
    assert "--ladd-layers" not in command and "--num-prompts" not in command and "--discriminator add" in command
    config, *_ = parse_run_arguments(OneLineParser(), shlex.split(command)[3:], Config, tmp_path / "out2",
                                     tmp_path / "run2")
    assert config == Config(**TINY)


def test_feature_network_is_the_shipped_vit_another_vit_folder_or_dinov2(tmp_path):
    torch.manual_seed(0)
    other = TinyViT(num_layers=2)
    save_evaluator(other, tmp_path / "vit")
    loaded = discriminator.feature_network(str(tmp_path / "vit"))
    assert isinstance(loaded, TinyViT) and loaded.num_layers == 2
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), other.state_dict().values()))
    assert discriminator.feature_network("miniature").num_layers == 6
    with pytest.raises(FileNotFoundError, match="no DINOv2 folder at .*no-such-folder"):  # not a hub id either
        discriminator.feature_network(str(tmp_path / "no-such-folder"))
    with pytest.raises(OSError, match="could not load DINOv2 'facebook/dinov2-small': .*hub .* offline, use the "
                                      "miniature's feature network") as error:  # the tests run offline (conftest)
        discriminator.feature_network("facebook/dinov2-small")
    assert "\n" not in str(error.value)


def write_folder(folder, captions):
    from PIL import Image

    folder.mkdir()
    images, _, _ = make_shapes(len(captions), seed=5, resolution=48)
    lines = []
    for i, (image, text) in enumerate(zip(images, captions)):
        pixels = ((image.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": text}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def test_an_image_caption_folder_trains_like_the_shapes(tmp_path):
    write_folder(tmp_path / "data", ["a red circle", "a blue square", "a triangle"])
    config = Config(steps=2, batch_size=2, dataset=str(tmp_path / "data"))
    trainer = ADDTrainer.from_config(config, Accelerator())
    images, captions = trainer.batch(0)
    assert images.shape == (2, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert set(captions) <= {"a red circle", "a blue square", "a triangle"}
    again = [trainer.batch(step)[1] for step in range(3)]  # two epochs of three: each image once per epoch
    assert sorted(again[0] + again[1][:1]) == ["a blue square", "a red circle", "a triangle"]
    assert again == [trainer.batch(step)[1] for step in range(3)]
    trainer.step(0)


def test_a_caption_too_long_for_the_tokenizer_is_refused_with_its_line(tmp_path):
    write_folder(tmp_path / "data", ["a red circle", "a a a a a small red circle at the top left on a blue background"])
    with pytest.raises(ValueError, match="metadata.jsonl line 2: prompt .* tokens but the tokenizer allows 16"):
        ADDTrainer.from_config(Config(dataset=str(tmp_path / "data")), Accelerator())


def test_an_unreadable_image_is_refused_when_the_folder_is_opened(tmp_path):
    write_folder(tmp_path / "data", ["a red circle", "a blue square"])
    (tmp_path / "data" / "1.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"1.png is not an image Pillow can read \(.*\); remove it or replace it"):
        ADDTrainer.from_config(Config(dataset=str(tmp_path / "data")), Accelerator())


def test_the_stable_diffusion_preset_is_the_papers_not_the_miniatures(tmp_path):
    miniature, real = Config(), Config.stable_diffusion()
    for field in ("lr", "discriminator_lr", "augment", "discriminator_conditioning", "distillation_weight",
                  "feature_network", "discriminator_layers", "r1_weight", "resolution", "teacher"):
        assert getattr(real, field) != getattr(miniature, field), field
    assert (real.lr, real.distillation_weight, real.discriminator_conditioning) == (1e-5, 2.5, "text,image")
    assert set(real.augment.split(",")) == set(DIFFAUGMENT_POLICY)
    assert real.r1_weight == pytest.approx(1e-5 * 257**2 / 2)  # the paper's gamma for 257 DINOv2-S tokens
    real.check()
    argv = ["--preset", "stable-diffusion", "--lr", "2e-5"]  # an option given replaces the preset's value
    config, *_ = parse_run_arguments(OneLineParser(), argv, Config, tmp_path / "out", tmp_path / "run",
                                     train_add.PRESETS)
    assert config == Config.stable_diffusion(lr=2e-5)
    config, *_ = parse_run_arguments(OneLineParser(), [], Config, tmp_path / "out", tmp_path / "run",
                                     train_add.PRESETS)
    assert config == miniature


def test_gradient_norms_are_each_loss_alone_and_leave_the_graph_for_their_sum():
    weight = torch.tensor([3.0, 4.0], requires_grad=True)
    losses = {"first": (weight * torch.tensor([1.0, 0.0])).sum(), "second": 2 * weight.pow(2).sum() / 2,
              "unweighted": 0 * torch.zeros(())}
    norms = add_trainer.gradient_norms(losses, [weight])
    assert norms == pytest.approx({"first": 1.0, "second": 2 * 5.0, "unweighted": 0.0})
    sum(losses.values()).backward()  # the graph survived the measurement
    torch.testing.assert_close(weight.grad, torch.tensor([1.0, 0.0]) + 2 * weight.detach())


@pytest.mark.parametrize("which", ["add", "ladd", "add+ladd"])
def test_measuring_health_logs_it_and_leaves_training_as_it_was(which):
    trainers = [ADDTrainer.from_config(Config(batch_size=2, discriminator=which), Accelerator()) for _ in range(2)]
    measured = trainers[0].step(0, measure=True)
    plain = trainers[1].step(0)
    for key in ("adversarial", "distillation", "hinge", "r1"):
        assert measured[key] == plain[key]
    for a, b in zip(trainers[0].modules().values(), trainers[1].modules().values()):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    heads = len(trainers[0].discriminator.heads)  # three per discriminator, each pair a single discriminator's
    assert heads == 3 * len(which.split("+")) and measured["hinge_at_chance"] == 2.0 * heads
    assert 0 <= measured["held_out_accuracy"] <= 1
    assert measured["grad_adversarial"] > 0 and measured["grad_distillation"] > 0
    assert not {"held_out_accuracy", "grad_adversarial"} & set(plain)


def test_held_out_accuracy_reads_the_sign_of_each_images_score(monkeypatch):
    trainer = ADDTrainer.from_config(Config(batch_size=4), Accelerator())
    verdicts = iter([torch.tensor([1.0, 2.0, -1.0, 3.0]), torch.tensor([-1.0, -2.0, -3.0, 4.0])])  # real, fake
    monkeypatch.setattr(add_trainer, "score", lambda logits: next(verdicts))
    health = trainer.health()
    assert health["held_out_accuracy"] == pytest.approx((3 / 4 + 3 / 4) / 2)
    assert health["held_out_gap"] == pytest.approx(5 / 4 - (-2 / 4))


def test_plot_health_draws_the_logged_measurements_and_refuses_a_log_without_them():
    from addlib.course.plotting import plot_health

    log = [{"step": 10 * i, "hinge": 6.0 - i, "hinge_at_chance": 6.0, "held_out_accuracy": 0.5 + 0.1 * i,
            "grad_adversarial": 2.0, "grad_distillation": 1.0} for i in range(3)]
    figure = plot_health({"run": [{"step": 5, "hinge": 6.0}, *log]}, smooth=1)
    hinge, accuracy, ratio = (axis.lines[0].get_ydata().tolist() for axis in figure.axes)
    assert hinge == pytest.approx([1.0, 5 / 6, 4 / 6]) and accuracy == pytest.approx([0.5, 0.6, 0.7])
    assert ratio == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="the log of 'old' holds no health measurements"):
        plot_health({"old": [{"step": 0, "hinge": 6.0}]})
