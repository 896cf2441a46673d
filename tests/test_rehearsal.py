"""Rehearsal models: the hub architectures from their published configs, loaded as a hub id would be."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, Dinov2Model

from addlib.discriminator import load_dinov2
from addlib.loading import load_pipeline, load_tiny_vae
from addlib.rehearsal import MODELS, REHEARSAL_DIR, build, folder_name, main
from addlib.sampling import sample

# Parameter counts as the model cards and papers give them: SD 2.x's UNet 865.9M, OpenCLIP-H's text tower (its
# 23 layers that SD 2 uses) 340.4M, CLIP ViT-L/14's 123.1M, SD's VAE 83.7M; BK-SDM-Tiny's UNet 0.32B.
PUBLISHED = {
    "stabilityai/sd-turbo": (865_910_724, 83_653_863, 340_387_840),
    "stabilityai/stable-diffusion-2-1-base": (865_910_724, 83_653_863, 340_387_840),
    "nota-ai/bk-sdm-tiny": (323_384_964, 83_653_863, 123_060_480),
}


@pytest.mark.parametrize("model_id", PUBLISHED)
def test_every_shipped_pipeline_config_has_the_published_architecture(model_id):
    source = REHEARSAL_DIR / folder_name(model_id)
    with torch.device("meta"):  # the architecture without its memory: seconds for SD 2.1's 1.3B parameters
        parts = (UNet2DConditionModel.from_config(json.loads((source / "unet" / "config.json").read_text())),
                 AutoencoderKL.from_config(json.loads((source / "vae" / "config.json").read_text())),
                 CLIPTextModel(CLIPTextConfig.from_pretrained(source / "text_encoder")))
    assert tuple(sum(p.numel() for p in part.parameters()) for part in parts) == PUBLISHED[model_id]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """The small teacher, DINOv2-S and TAESD, built once (about 20 s and 1.2 GB)."""
    out = tmp_path_factory.mktemp("rehearsal")
    main(["--models", "nota-ai/bk-sdm-tiny", "facebook/dinov2-small", "madebyollin/taesd", "--out", str(out)])
    return out


def test_a_rehearsal_pipeline_loads_and_samples_as_the_hub_model_would(rehearsal):
    folder = rehearsal / "nota-ai--bk-sdm-tiny"
    shipped = REHEARSAL_DIR / "nota-ai--bk-sdm-tiny"
    assert (folder / "model_index.json").read_bytes() == (shipped / "model_index.json").read_bytes()
    pipe = load_pipeline(folder, device="cpu")
    assert type(pipe.scheduler).__name__ == "PNDMScheduler" and pipe.scheduler.config.prediction_type == "epsilon"
    assert len(pipe.tokenizer) == 49408 and pipe.tokenizer.model_max_length == 77
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]  # CLIP's ids
    images = sample(pipe, ["a photo of a cat"], num_inference_steps=1, height=64, width=64)
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()


def test_rehearsal_feature_network_and_tiny_vae_load_through_the_hub_loaders(rehearsal):
    dinov2 = load_dinov2(str(rehearsal / "facebook--dinov2-small"), image_size=56)
    assert isinstance(dinov2.model, Dinov2Model)
    tokens = dinov2.features(torch.rand(2, 3, 64, 64) * 2 - 1, [2, 5, 8, 11])  # ADD's blocks
    assert [tuple(t.shape) for t in tokens] == [(2, 1 + 4 * 4, 384)] * 4  # CLS + (56 / 14)^2 patches, ViT-S width
    tiny = load_tiny_vae(rehearsal / "madebyollin--taesd", device="cpu")
    assert tiny.decode(torch.randn(1, 4, 8, 8)).sample.shape == (1, 3, 64, 64)


def test_build_keeps_a_whole_folder_and_refuses_an_unknown_model(rehearsal):
    folder = rehearsal / "madebyollin--taesd"
    before = (folder / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert build("madebyollin/taesd", rehearsal) == folder
    assert (folder / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == before
    assert not list(rehearsal.glob("*.partial"))
    with pytest.raises(ValueError, match="no rehearsal configs for 'runwayml/stable-diffusion-v1-5'; choose from"):
        build("runwayml/stable-diffusion-v1-5", rehearsal)
    assert set(MODELS) == {*PUBLISHED, "facebook/dinov2-small", "madebyollin/taesd"}


def test_add_on_a_hub_architecture_keeps_the_teachers_schedule_and_exports_a_student_that_samples_with_it(
        rehearsal):
    """SD predicts epsilon on a schedule whose alpha-bar(999) is 0.0047: the student keeps both (train_add's
    "Hub teachers"). Its x0 at s = 999 is finite, a LoRA step on the real architecture runs, and the exported
    pipeline samples on the same schedule, as diffusers' own call does."""
    from accelerate import Accelerator

    from addlib.distillation import denoise
    from addlib.train_add import ADDTrainer, Config, student_pipeline

    config = Config.stable_diffusion(
        teacher=str(rehearsal / "nota-ai--bk-sdm-tiny"), feature_network=str(rehearsal / "facebook--dinov2-small"),
        tiny_vae=str(rehearsal / "madebyollin--taesd"), resolution=64, batch_size=1, steps=1, lora_rank=4,
        gradient_checkpointing=True)
    trainer = ADDTrainer(config, Accelerator(cpu=True))
    scheduler = trainer.teacher.scheduler
    assert scheduler.config.prediction_type == "epsilon"
    assert scheduler.alphas_cumprod[999].item() == pytest.approx(0.0047, abs=1e-4)  # SD's schedule, kept
    inputs = trainer.inputs(0)
    s = torch.tensor([999])
    noisy = scheduler.add_noise(inputs["latents"], inputs["noise"], s)
    with torch.no_grad():
        x0 = denoise(trainer.student, scheduler, noisy, s, inputs["text"])[0]
    assert torch.isfinite(x0).all() and x0.abs().max() < 1e3
    losses = trainer.step(0)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())

    student = student_pipeline(trainer)
    assert torch.equal(student.scheduler.alphas_cumprod, scheduler.alphas_cumprod)
    prompt = ["a photo of a red bicycle"]
    ours = sample(student, prompt, 1, sampler="add", seed=3, height=64, width=64)
    theirs = student(prompt, num_inference_steps=1, guidance_scale=0, height=64, width=64, output_type="pt",
                     generator=torch.Generator().manual_seed(3)).images * 2 - 1
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_the_rehearsal_bench_times_memory_options_in_fresh_processes_and_streams(rehearsal, capsys):
    from addlib import bench

    rows = bench.main(["rehearsal", "--teacher", "nota-ai/bk-sdm-tiny", "--options", "none", "+ TAESD",
                       "--rounds", "1", "--stream-model", "nota-ai/bk-sdm-tiny", "--out", str(rehearsal),
                       "--resolution", "64", "--batch-size", "1", "--steps", "1", "--num-frames", "2",
                       "--sample-images", "1"])
    out = capsys.readouterr().out
    assert [row["memory options"] for row in rows] == ["none", "+ TAESD"]
    assert rows[0]["time vs 'none'"] == "1.00" and all(float(row["peak memory (GiB)"]) > 0 for row in rows)
    assert "64x64, batch 1" in out and "s per image" in out and "fps (best of 1)" in out
