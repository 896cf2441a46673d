"""LADD's discriminator on the miniature teacher: shapes, where gradients go, paired re-noising, bad input, and
the trainer with it (resume included)."""

import json

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from addlib import add_trainer
from addlib.latent_discriminator import (
    LatentDiscriminator,
    block_channels,
    logit_normal_timesteps,
    unet_blocks,
)
from addlib.loading import LADD_STUDENT_DIR, STUDENT_DIR
from addlib.pipeline import text_encoder_output
from addlib.add_trainer import ADDTrainer
from addlib.train_add import Config, train

B = 3
LAYERS = ["down.1", "mid", "up.1"]


@pytest.fixture(scope="module")
def batch(teacher):
    torch.manual_seed(0)
    encoded = text_encoder_output(teacher, ["a red circle", "a small square at the top left", "a triangle"])
    return torch.randn(B, 4, 8, 8), encoded[0], encoded.pooler_output


def make(teacher, **kwargs):
    torch.manual_seed(0)
    return LatentDiscriminator(teacher.unet, kwargs.pop("layers", LAYERS), teacher.text_encoder.config.hidden_size,
                               teacher.scheduler.alphas_cumprod, **kwargs)


def test_heads_read_every_block_at_its_own_size(teacher, batch):
    latents, tokens, pooled = batch
    disc = make(teacher, layers=list(unet_blocks(teacher.unet)))
    features, timesteps = disc.features(latents, tokens, torch.Generator().manual_seed(0))
    channels = block_channels(teacher.unet)
    # 8x8 latents: the down blocks halve twice (the last one keeps 2x2), the up blocks double back
    sides = {"down.0": 4, "down.1": 2, "down.2": 2, "mid": 2, "up.0": 4, "up.1": 8, "up.2": 8}
    assert [f.shape for f in features] == [(B, sides[k] ** 2, channels[k]) for k in disc.layers]
    assert timesteps.shape == (B,) and timesteps.dtype == torch.int64
    logits = disc.heads_logits(features, pooled, timesteps)
    assert [tuple(l.shape) for l in logits] == [(B, sides[k] ** 2) for k in disc.layers]
    assert not any(name.startswith("unet") for name in disc.state_dict())  # the teacher is not saved with the heads


def test_generator_gradient_reaches_the_latents_and_heads_not_the_teacher(teacher, batch):
    latents, tokens, pooled = batch
    disc = make(teacher)
    latents = latents.clone().requires_grad_(True)
    sum(l.mean() for l in disc(latents, tokens, pooled, torch.Generator().manual_seed(1))).backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0
    assert all(p.grad is not None for p in disc.heads.parameters())
    assert all(p.grad is None for p in teacher.unet.parameters())


def test_the_discriminator_loss_trains_the_heads_alone_with_r1(teacher, batch):
    latents, tokens, pooled = batch
    disc = make(teacher)
    fake = latents.flip(0).clone().requires_grad_(True)
    loss, stats = disc.loss(latents, fake, r1_weight=10.0, generator=torch.Generator().manual_seed(2),
                            **disc.condition(None, tokens, pooled))
    loss.backward()
    assert set(stats) == {"hinge", "r1", "real_score", "fake_score"} and stats["r1"] > 0
    assert fake.grad is None  # the fakes are detached: this loss trains the heads only
    assert all(p.grad is not None for p in disc.heads.parameters())
    assert all(p.grad is None for p in teacher.unet.parameters())


def test_real_and_fake_are_noised_alike(teacher, batch):
    """With paired generators, a real batch and the same batch as 'fakes' get identical features: the heads
    can tell real from fake by content alone."""
    latents, tokens, pooled = batch
    disc = make(teacher)
    first, t1 = disc.features(latents, tokens, torch.Generator().manual_seed(3))
    again, t2 = disc.features(latents, tokens, torch.Generator().manual_seed(3))
    assert torch.equal(t1, t2) and all(torch.equal(a, b) for a, b in zip(first, again))


def test_logit_normal_timesteps_follow_m_and_s():
    generator = torch.Generator().manual_seed(0)
    t = logit_normal_timesteps(20_000, 1.0, 1.0, generator)
    assert t.min() >= 0 and t.max() <= 999
    # E[sigmoid(1 + n)] = 0.70 for n ~ N(0, 1); the median is sigmoid(1) = 0.731
    assert 0.68 < t.float().mean() / 1000 < 0.72 and 715 < t.float().median() < 745
    low = logit_normal_timesteps(20_000, -1.0, 0.5, generator)
    assert low.float().median() < 300


def test_bad_input_is_one_line_naming_the_choices(teacher):
    with pytest.raises(ValueError, match=r"^teacher feature layers \['mid', 'up.7'\] must be distinct block names of "
                                         r"the teacher UNet: down.0, down.1, down.2, mid, up.0, up.1, up.2$"):
        make(teacher, layers=["mid", "up.7"])
    with pytest.raises(ValueError, match=r"spread s must be a positive number \(LADD's is 1.0\), got 0.0$"):
        make(teacher, t_std=0.0)
    with pytest.raises(ValueError, match=r"mean m must be a finite number .*got nan$"):
        make(teacher, t_mean=float("nan"))
    with pytest.raises(ValueError, match=r"^unknown discriminator 'gan'; choose one of add, ladd, add\+ladd$"):
        Config(discriminator="gan").check()
    with pytest.raises(ValueError, match=r"ladd_t_std \(--ladd-t-std\) must be at least 0, got -1.0$"):
        Config(discriminator="ladd", ladd_t_std=-1.0).check()
    with pytest.raises(ValueError, match=r"spread s must be a positive number .*got 0.0$"):
        Config(discriminator="ladd", ladd_t_std=0.0).check()
    with pytest.raises(ValueError, match=r"^discriminator 'ladd' reads no image embedding"):
        Config(discriminator="ladd", discriminator_conditioning="text,image").check()
    with pytest.raises(ValueError, match=r"^teacher feature layers \['up.9'\] must be distinct"):
        ADDTrainer.from_config(Config(discriminator="ladd", ladd_layers="up.9", steps=1, batch_size=2))


def test_ladd_training_resumes_exactly_and_moves_student_and_heads(straight_and_resumed, same_tensors):
    tiny = dict(steps=4, batch_size=4, checkpoint_every=2, discriminator="ladd")
    (straight, straight_run), (_, resumed_run) = straight_and_resumed(
        lambda out, run_dir, resume: train(Config(**tiny), out, run_dir, resume), add_trainer.ADDTrainer, "step", 3)
    assert same_tensors(straight_run / "checkpoint.safetensors", resumed_run / "checkpoint.safetensors")
    log = json.loads((straight / "loss_log.json").read_text())
    assert log[0]["r1"] > 0 and log[0]["adversarial"] != 0
    heads = [k for k in load_file(straight_run / "checkpoint.safetensors") if k.startswith("module.heads.")]
    assert heads and not any("unet" in k for k in heads)
    recipe = json.loads((straight / "recipe.json").read_text())
    assert "--discriminator ladd" in recipe["command"] and "--ladd-layers down.1,mid,up.1" in recipe["command"]


def test_in_the_trainer_the_generator_loss_trains_the_student_alone():
    trainer = ADDTrainer.from_config(Config(discriminator="ladd", steps=1, batch_size=2), Accelerator())
    inputs = trainer.inputs(0)
    inputs.pop("images")
    trainer.discriminator.heads.requires_grad_(False)  # as ADDTrainer.step holds them for the generator update
    loss, (adversarial, _), x_theta, _ = trainer.generator_loss(**inputs)
    adversarial.backward()
    student = trainer.accelerator.unwrap_model(trainer.student)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in trainer.teacher.unet.parameters())
    assert all(p.grad is None for p in trainer.discriminator.heads.parameters())
    assert x_theta.shape == inputs["latents"].shape


def test_the_shipped_students_differ_in_their_discriminators_alone():
    """data/ladd_student is the comparison notebook 08 draws: the same recipe, seed and length as data/student,
    with LADD's heads alone where the student has ADD's beside them, at the miniature's default noise levels
    (settings a recipe predates are at their defaults)."""
    student, ladd = (json.loads((folder / "recipe.json").read_text())["config"]
                     for folder in (STUDENT_DIR, LADD_STUDENT_DIR))
    defaults = vars(Config())
    assert ladd["discriminator"] == "ladd" and ladd["ladd_t_mean"] == defaults["ladd_t_mean"] == -1.0
    differences = {key: value for key, value in ladd.items() if student.get(key, defaults[key]) != value}
    assert student["discriminator"] == "add+ladd" and differences == {"discriminator": "ladd"}
