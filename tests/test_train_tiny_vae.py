"""The tiny VAE's training: exact resume, and a folder that loads as a diffusers AutoencoderTiny. Tiny runs."""

import pytest
import torch
from safetensors.torch import load_file

from addlib import train_tiny_vae
from addlib.loading import load_tiny_vae
from addlib.train_tiny_vae import Config, train

TINY = dict(steps=4, batch_size=4, checkpoint_every=2)


def test_resume_repeats_an_uninterrupted_run_and_the_result_loads(tmp_path, interrupt_at_call):
    train(Config(**TINY), tmp_path / "straight", tmp_path / "run_straight")
    restore = interrupt_at_call(train_tiny_vae, "tiny_vae_loss", 3)
    with pytest.raises(KeyboardInterrupt):
        train(Config(**TINY), tmp_path / "resumed", tmp_path / "run_resumed")
    restore()
    train(Config(**TINY), tmp_path / "resumed", tmp_path / "run_resumed", resume=True)
    weights = "diffusion_pytorch_model.safetensors"
    straight, resumed = load_file(tmp_path / "straight" / weights), load_file(tmp_path / "resumed" / weights)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)

    tiny = load_tiny_vae(tmp_path / "straight", device="cpu")
    latents = tiny.encode(torch.zeros(2, 3, 32, 32)).latents
    assert latents.shape == (2, 4, 8, 8) and tiny.decode(latents).sample.shape == (2, 3, 32, 32)


def test_missing_tiny_vae_says_how_to_build_it(tmp_path):
    with pytest.raises(OSError, match="python -m addlib.train_tiny_vae"):
        load_tiny_vae(tmp_path / "nothing", device="cpu")
