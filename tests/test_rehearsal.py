"""Rehearsal models: the hub architectures from their published configs, loaded as a hub id would be."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, Dinov2Model

from addlib.course.rehearsal import MODELS, REHEARSAL_DIR, build, folder_name, main, random_weights
from addlib.discriminator import load_dinov2
from addlib.loading import load_pipeline, load_tiny_vae
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


# CLIP ViT-g/14 (the ADD paper's CLIP score model; open_clip lists 1366.68M) and ViT-B/32 (151.28M).
CLIPS = {"laion/CLIP-ViT-g-14-laion2B-s12B-b42K": 1_366_678_273, "openai/clip-vit-base-patch32": 151_277_313}


@pytest.mark.parametrize("model_id", CLIPS)
def test_every_shipped_clip_config_has_the_published_architecture(model_id):
    from transformers import CLIPConfig, CLIPModel

    with torch.device("meta"):
        model = CLIPModel(CLIPConfig.from_pretrained(REHEARSAL_DIR / folder_name(model_id)))
    assert sum(p.numel() for p in model.parameters()) == CLIPS[model_id]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """The small teacher, DINOv2-S, TAESD and CLIP ViT-B/32, built once (about 25 s and 1.5 GB)."""
    out = tmp_path_factory.mktemp("rehearsal")
    main(["--models", "nota-ai/bk-sdm-tiny", "facebook/dinov2-small", "madebyollin/taesd",
          "openai/clip-vit-base-patch32", "--out", str(out)])
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
    assert set(MODELS) == {*PUBLISHED, "facebook/dinov2-small", "madebyollin/taesd", *CLIPS}
    assert random_weights(folder) and not random_weights(REHEARSAL_DIR.parent / "teacher")


def test_add_on_a_hub_architecture_keeps_the_teachers_schedule_and_exports_a_student_that_samples_with_it(
        rehearsal):
    """SD predicts epsilon on a schedule whose alpha-bar(999) is 0.0047: the student keeps both (train_add's
    "Hub teachers"). Its x0 at s = 999 is finite, a LoRA step on the real architecture runs, and the exported
    pipeline samples on the same schedule, as diffusers' own call does."""
    from accelerate import Accelerator

    from addlib.pipeline import denoise
    from addlib.add_trainer import ADDTrainer, student_pipeline
    from addlib.train_add import Config

    config = Config.stable_diffusion(
        teacher=str(rehearsal / "nota-ai--bk-sdm-tiny"), feature_network=str(rehearsal / "facebook--dinov2-small"),
        tiny_vae=str(rehearsal / "madebyollin--taesd"), resolution=64, batch_size=1, steps=1, lora_rank=4,
        gradient_checkpointing=True, dataset="shapes")
    trainer = ADDTrainer.from_config(config, Accelerator(cpu=True))
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


def test_the_real_scale_evaluation_runs_on_the_rehearsal_models_on_a_cpu_in_under_two_minutes(rehearsal):
    """Teacher at 1 and 25 guided steps, student at 1, 2 and 4: CLIP score and FD_CLIP from a (random) CLIP, and
    FID where torch-fidelity is installed; the scores mean nothing here, the code path is what is tested."""
    import time

    from addlib.bench.evaluation import evaluate

    teacher = load_pipeline(rehearsal / "nota-ai--bk-sdm-tiny", device="cpu")
    prompts = ["a photo of a red bicycle", "a bowl of lemons on a table", "a snowy mountain village"]
    reference = torch.rand(4, 3, 64, 64) * 2 - 1
    start = time.perf_counter()
    rows, images, skipped = evaluate(teacher, teacher, prompts, reference, resolution=64,
                                     clip_model=rehearsal / "openai--clip-vit-base-patch32")
    assert time.perf_counter() - start < 120
    assert [row["model"] for row in rows] == ["teacher, 1 step", "teacher, 25 steps, guidance 7.5",
                                              "student, 1 step", "student, 2 steps", "student, 4 steps"]
    for row in rows:
        assert 0 <= float(row["CLIP score"]) <= 100 and float(row["FD_CLIP"]) >= 0 and float(row["s/image"]) > 0
    assert images["student, 4 steps"].shape == (3, 3, 64, 64)
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        assert skipped == ["FID skipped: torch-fidelity is not installed (pip install torch-fidelity)"]
        assert all(row["FID"] == "-" for row in rows)


def test_clip_score_is_the_cosine_clip_itself_computes(rehearsal):
    from transformers import CLIPModel

    from addlib.bench.evaluation import clip_score, load_clip
    from addlib.datasets import to_uint8

    model, processor = load_clip(rehearsal / "openai--clip-vit-base-patch32")
    images, prompts = torch.rand(3, 3, 64, 64) * 2 - 1, ["a cat", "a dog on a sofa", "a red bicycle"]
    inputs = processor(text=prompts, images=list(to_uint8(images)), return_tensors="pt", padding=True)
    assert isinstance(model, CLIPModel)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image  # logit_scale * cos(image i, text j)
    cosine = logits.diagonal() / model.logit_scale.exp()
    assert clip_score(images, prompts, model, processor, batch_size=2) == pytest.approx(
        (100 * cosine.clamp(min=0)).mean().item(), abs=1e-4)
    with pytest.raises(ValueError, match=r"images is empty \(shape \(0, 3, 64, 64\)\)"):  # not a torch.cat error
        clip_score(images[:0], [], model, processor)


def test_fd_clip_is_zero_for_a_set_against_itself_and_grows_with_a_shift(rehearsal):
    from addlib.bench.evaluation import frechet_distances, load_clip
    from addlib.datasets import to_uint8

    clip = load_clip(rehearsal / "openai--clip-vit-base-patch32")
    metric = frechet_distances(clip)[0]["FD_CLIP"]
    images = torch.rand(6, 3, 32, 32) * 2 - 1
    metric.update(to_uint8(images), real=True)
    metric.update(to_uint8(images), real=False)
    same = metric.compute().item()
    metric.reset()  # the reference stays
    metric.update(to_uint8((images * 0.3 + 0.6).clamp(-1, 1)), real=False)
    assert abs(same) < 1e-3 * metric.compute().item()


def test_without_a_clip_model_the_table_says_which_metrics_were_skipped_and_the_bench_says_random(
        rehearsal, tmp_path, capsys):
    from PIL import Image

    from addlib import bench

    for i in range(2):
        Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(tmp_path / f"{i}.png")
    (tmp_path / "prompts.txt").write_text("a blue sky\na green field\n")
    teacher = str(rehearsal / "nota-ai--bk-sdm-tiny")
    arguments = ["quality", "--teacher", teacher, "--student", teacher, "--reference", str(tmp_path),
                 "--prompts", str(tmp_path / "prompts.txt"), "--resolution", "64"]
    with pytest.raises(ValueError, match="--clip-model .*no-clip: no such folder, and not a hub id"):
        bench.main([*arguments, "--clip-model", str(tmp_path / "no-clip")])  # a typo, refused before sampling
    rows = bench.main([*arguments, "--clip-model", "openai/clip-vit-large-patch14"])  # a hub out of reach
    out = capsys.readouterr().out
    assert all(row["CLIP score"] == row["FD_CLIP"] == "-" for row in rows)
    assert "CLIP score and FD_CLIP skipped: " in out and "openai/clip-vit-large-patch14" in out
    assert "random weights (rehearsal models): these scores measure nothing but that the code runs" in out
