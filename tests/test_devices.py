"""A model on one device and its inputs on another: the library moves the inputs, and the notebooks choose once.

PyTorch's "meta" device stands in for a GPU on any machine: a model there computes shapes but no numbers, and
fails, as on a GPU, on the first CPU tensor it meets. So each test puts the model on "meta", keeps the inputs on
the CPU where the seeded draws are made, and checks the result comes back on the model's device. Code that reads
values (a timestep's range, a NaN check, ``.item()``, numpy) cannot run on "meta": ``sample``, the metrics and
the probe run instead with the model in float64 and the inputs in float32, which takes the same moves.
"""

import copy
import json
import re
from pathlib import Path

import pytest
import torch

from addlib.bench.metrics import prompt_accuracy, shapes_fid
from addlib.distillation import distillation_loss, teacher_target
from addlib.evaluators import AttributeClassifier, TinyViT, load_attribute_classifier
from addlib.latent_discriminator import teacher_tokens
from addlib.loading import load_pipeline, load_tiny_vae
from addlib.miniature import build_pipeline
from addlib.pipeline import decode_latents, encode_prompts
from addlib.sampling import sample
from addlib.shapes import make_shapes
from addlib.utils.errors import resolve_device

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle", "a large blue square"]
META = torch.device("meta")


@pytest.fixture(scope="module")
def pipe():
    pipe = build_pipeline(seed=0)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False)
    return pipe


@pytest.fixture(scope="module")
def on_meta(pipe):
    return copy.deepcopy(pipe).to("meta")


def draws(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_distillation_runs_where_the_teacher_is(pipe, on_meta, guidance_scale):
    latents, noise = draws()
    embeds, uncond = encode_prompts(on_meta, PROMPTS), encode_prompts(on_meta, [""])
    assert embeds.device == META
    target = teacher_target(on_meta, latents, encode_prompts(pipe, PROMPTS), torch.tensor([100, 700]), noise,
                            guidance_scale=guidance_scale, uncond_embeds=encode_prompts(pipe, [""]))
    assert target.device == META and target.shape == latents.shape
    loss = distillation_loss(on_meta, latents.requires_grad_(), embeds, guidance_scale=guidance_scale,
                             uncond_embeds=uncond, generator=torch.Generator().manual_seed(1))
    assert loss.device == META and loss.ndim == 0 and loss.requires_grad
    assert decode_latents(on_meta, latents).device == META


def test_distillation_takes_the_teachers_dtype(pipe):
    teacher = copy.deepcopy(pipe).to(torch.float64)
    latents, noise = draws()
    with torch.no_grad():
        embeds = encode_prompts(teacher, PROMPTS)
    loss = distillation_loss(teacher, latents.requires_grad_(), embeds, torch.tensor([100, 700]), noise)
    loss.backward()
    assert loss.dtype == torch.float64 and latents.grad.dtype == torch.float32 and latents.grad.abs().sum() > 0


def test_teacher_tokens_run_where_the_unet_is(on_meta):
    latents, _ = draws()
    tokens = teacher_tokens(on_meta.unet, ["mid", "up.1"], latents, torch.tensor([0, 999]), torch.randn(2, 16, 64))
    assert [t.device for t in tokens] == [META, META]


def test_the_evaluators_read_images_where_they_are():
    images = make_shapes(2, seed=0)[0]
    torch.manual_seed(0)
    vit = TinyViT(patch_size=8, embed_dim=16, num_layers=2, num_heads=2).to("meta")
    classifier = AttributeClassifier(channels=(8, 8, 8), feature_dim=8, reject_channels=(8, 8, 8)).to("meta")
    outputs = [*vit.features(images, [0, 1]), vit.cls_embedding(images), classifier.features(images),
               classifier.none_logit(images)]
    assert all(output.device == META for output in outputs)


def test_sample_and_the_metrics_take_the_models_dtype(pipe):
    images = sample(copy.deepcopy(pipe).to(torch.float64), PROMPTS, 2, guidance_scale=2.0, seed=0)
    assert images.dtype == torch.float64
    torch.manual_seed(0)
    classifier = AttributeClassifier(channels=(8, 8, 8), feature_dim=8, reject_channels=(8, 8, 8)).double()
    real = make_shapes(4, seed=0)[0]
    assert 0 <= prompt_accuracy(real[:2], PROMPTS, classifier)["joint"] <= 1
    assert shapes_fid(real[:2], real[2:], classifier) >= 0
    assert classifier.predict(real).device == torch.device("cpu")  # compared with make_shapes' labels


def test_the_probe_pool_is_made_where_the_teacher_is(pipe):
    from addlib.bench.discriminators import one_step_pool

    teacher = copy.deepcopy(pipe).to(torch.float64)
    pool = one_step_pool(teacher, teacher.unet, num_images=3, seed=0)
    assert len(pool) == 3 and pool.fake_images.dtype == torch.float64


@pytest.mark.parametrize("device, message", [
    ("gpu", r"unknown device 'gpu'; available here: 'cpu'; use device='cpu', or leave device out$"),
    ("cuda", r"device 'cuda' asked for, but torch sees no CUDA GPU here \(torch .*\); available here: 'cpu'; "),
    ("mps", r"device 'mps' asked for, but torch sees no Apple MPS GPU here \(torch .*\); available here: 'cpu'; "),
])
def test_a_device_this_machine_lacks_is_one_line_that_names_those_it_has(monkeypatch, device, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for load in (resolve_device, lambda d: load_pipeline(device=d), lambda d: load_attribute_classifier(device=d)):
        with pytest.raises(ValueError, match=f"^{message}") as error:
            load(device)
        assert "\n" not in str(error.value)


def test_a_gpu_index_past_the_last_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match=r"^device 'cuda:1' asked for, but torch sees 1 CUDA GPU\(s\) here; "
                                         r"available here: 'cpu', 'cuda:0'; use device='cuda:0'"):
        resolve_device("cuda:1")


def test_a_precision_the_device_cannot_convolve_in_is_refused_before_loading(monkeypatch):
    def unsupported(input, weight, *args, **kwargs):  # what an older torch says of float16 on a CPU
        raise RuntimeError(f'"slow_conv2d_cpu" not implemented for {str(input.dtype)!r}')

    assert load_pipeline(dtype=torch.float16).unet.dtype == torch.float16  # this torch runs it: no refusal
    monkeypatch.setattr(torch.nn.functional, "conv2d", unsupported)
    for load in (load_pipeline, load_tiny_vae):
        with pytest.raises(ValueError, match=r"^torch.float16 convolutions do not run on cpu with torch .* "
                                             r'\("slow_conv2d_cpu" not implemented .*\); use dtype=torch.float32'):
            load(dtype=torch.float16)
    load_pipeline(dtype=torch.float32)  # float32 needs no probe


LOADERS = re.compile(r"\b(load_pipeline|load_tiny_vae|load_attribute_classifier|load_feature_network|Accelerator)\(")


def _call(source: str, start: int) -> str:
    """The text of the call whose opening parenthesis is at ``start``, up to its closing one."""
    depth = 0
    for end in range(start, len(source)):
        depth += {"(": 1, ")": -1}.get(source[end], 0)
        if depth == 0:
            return source[start:end + 1]
    raise AssertionError(f"unclosed call in {source[start:start + 80]!r}")


@pytest.mark.parametrize("name", ["02_teacher_and_sampling", "03_score_distillation", "04_discriminator_r1",
                                  "05_add_training", "07_streaming", "08_latent_adversarial_distillation"])
def test_each_notebook_chooses_its_device_once_and_loads_every_model_there(name):
    cells = [cell for cell in json.loads((ROOT / "solutions" / f"{name}.ipynb").read_text())["cells"]
             if cell["cell_type"] == "code"]
    imports = "".join(cells[1]["source"])
    assert "\ndevice = resolve_device()" in imports, "the imports cell chooses the device"
    for cell in cells[2:]:
        source = "".join(cell["source"])
        assert "resolve_device(" not in source, "one choice, in the imports cell"
        for match in LOADERS.finditer(source):
            call = _call(source, match.end() - 1)
            wanted = 'cpu=device.type == "cpu"' if match.group(1) == "Accelerator" else "device=device"
            assert wanted in call, f"{match.group(1)}{call} does not use the notebook's device"
