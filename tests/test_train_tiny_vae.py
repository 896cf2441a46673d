"""The tiny VAE's training: exact resume, and a folder that loads as a diffusers AutoencoderTiny. Tiny runs."""

import pytest
import torch

from addlib.course import train_tiny_vae
from addlib.course.train_tiny_vae import Config, train
from addlib.loading import load_tiny_vae

TINY = dict(steps=4, batch_size=4, checkpoint_every=2)


def test_resume_repeats_an_uninterrupted_run_and_the_result_loads(straight_and_resumed, same_tensors):
    (straight, _), (resumed, _) = straight_and_resumed(
        lambda out, run_dir, resume: train(Config(**TINY), out, run_dir, resume), train_tiny_vae, "tiny_vae_loss", 3)
    weights = "diffusion_pytorch_model.safetensors"
    assert same_tensors(straight / weights, resumed / weights)

    tiny = load_tiny_vae(straight, device="cpu")
    latents = tiny.encode(torch.zeros(2, 3, 32, 32)).latents
    assert latents.shape == (2, 4, 8, 8) and tiny.decode(latents).sample.shape == (2, 3, 32, 32)


def test_missing_tiny_vae_says_how_to_build_it(tmp_path):
    with pytest.raises(OSError, match="python -m addlib.course.train_tiny_vae"):
        load_tiny_vae(tmp_path / "nothing", device="cpu")
