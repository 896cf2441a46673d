"""Quality at real scale: CLIP score and FID, the two axes of the ADD paper's evaluation, from maintained libraries.

- **CLIP score** (Hessel et al., 2021): 100 max(cos(E_image(x), E_text(prompt)), 0), averaged over prompts, with
  the image and text embeddings of transformers' ``CLIPModel``. The ADD paper reports it with CLIP ViT-g/14
  (``CLIP_MODEL``); a smaller CLIP gives other numbers, comparable only among themselves.
- **FID** (Heusel et al., 2017): the Frechet distance between Gaussians fitted to Inception-v3 pool features of
  generated and reference images, by torchmetrics' ``FrechetInceptionDistance``. torchmetrics computes the
  features with torch-fidelity's port of the TensorFlow Inception that FID was defined with, so its figures
  compare with published ones, accumulates them batch by batch (no image set held in memory), and is kept by the
  Lightning team with the rest of torchmetrics. It needs ``pip install torch-fidelity`` (and with it
  torchvision, which Colab has) and fetches the Inception weights (about 100 MB) from GitHub once; where either
  is missing, the table says FID was skipped, and why.
- **FD_CLIP**: the same Frechet distance in CLIP's image embeddings (torchmetrics' FID with CLIP's image tower as
  its feature network). Inception's features lean on ImageNet's classes (Kynkaanniemi et al., 2023); CLIP's do
  not, and FD_CLIP needs nothing the CLIP score does not, so it runs wherever that does.

Like the miniature's shapes-FID, both distances are biased upward for small sets: compare only figures computed
from equally many images. :func:`evaluate` scores the teacher (1 step, and 25 guided steps) and the student (1, 2
and 4 ADD steps) on held-out prompts, with seconds per image.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm  # a text bar: in a notebook its last state stays in the saved output

from addlib.datasets import to_uint8
from addlib.loading import from_folder_or_hub, model_device
from addlib.utils.errors import check_images

CLIP_MODEL = "laion/CLIP-ViT-g-14-laion2B-s12B-b42K"  # the ADD paper's CLIP score model
FID_FEATURES = 2048  # Inception-v3's pool features, FID's own


def load_clip(path: str | Path = CLIP_MODEL, device: str | torch.device = "cpu"):
    """A frozen transformers ``CLIPModel`` and its ``CLIPProcessor``, from a folder or hub id; in half precision
    on a GPU (ViT-g/14 has 1.4B parameters), in float32 on a CPU, whatever the dtype it was saved in."""
    from transformers import CLIPModel, CLIPProcessor

    def load(path):
        return CLIPModel.from_pretrained(path), CLIPProcessor.from_pretrained(path)

    model, processor = from_folder_or_hub(load, path, "CLIP model", "config.json",
                                          "build a rehearsal one with `python -m addlib.course.rehearsal --models "
                                          "openai/clip-vit-base-patch32`", "the CLIP metrics are skipped")
    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    return model.to(device, dtype).eval().requires_grad_(False), processor


def _embeddings(output) -> torch.Tensor:
    """transformers 4 returns the projected embeddings, 5 an output whose ``pooler_output`` they are."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class CLIPImageFeatures(torch.nn.Module):
    """CLIP's projected image embedding of uint8 images (N, 3, H, W): the feature network of FD_CLIP."""

    def __init__(self, model, processor):
        super().__init__()
        self.model, self.processor = model, processor
        self.num_features = model.config.projection_dim  # read by torchmetrics' FID

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.processor(images=list(images.cpu()), return_tensors="pt")["pixel_values"]
        device = model_device(self.model)
        return _embeddings(self.model.get_image_features(pixel_values=pixels.to(device))).float()


@torch.no_grad()
def clip_score(images: torch.Tensor, prompts: list[str], model, processor, batch_size: int = 32) -> float:
    """The mean over images (N, 3, H, W) in [-1, 1] of 100 max(cos(image embedding, prompt embedding), 0)."""
    check_images("images", images)
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts; give one prompt per image")
    device, scores = model_device(model), []
    for start in range(0, len(prompts), batch_size):
        inputs = processor(text=prompts[start:start + batch_size], images=list(to_uint8(
            images[start:start + batch_size]).cpu()), return_tensors="pt", padding=True).to(device)
        image = _embeddings(model.get_image_features(pixel_values=inputs["pixel_values"]))
        text = _embeddings(model.get_text_features(input_ids=inputs["input_ids"],
                                                   attention_mask=inputs["attention_mask"]))
        scores.append(100 * torch.nn.functional.cosine_similarity(image.float(), text.float(), dim=-1).clamp(min=0))
    return torch.cat(scores).mean().item()


def check_inception_weights(path: str | None) -> None:
    """A weights file named for FID must be there: one that is not would otherwise skip FID, as an unreachable
    download does, after everything else has run."""
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"no Inception weights file at {path}; give the .pth file torch-fidelity downloads, "
                                f"or leave it out to fetch it")


def frechet_distances(clip=None, inception_weights: str | None = None) -> tuple[dict, dict[str, str]]:
    """torchmetrics' Frechet distances that can run here, each told its reference set once (``update(x, real=
    True)``) and keeping it across ``reset()``: ``"FD_CLIP"`` with ``clip`` (a ``(model, processor)``) and ``"FID"``
    with Inception (weights from ``inception_weights`` or GitHub). Returns them and, for each one skipped, why."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    check_inception_weights(inception_weights)
    metrics, skipped = {}, {}
    if clip is not None:
        metrics["FD_CLIP"] = FrechetInceptionDistance(feature=CLIPImageFeatures(*clip), reset_real_features=False)
    try:
        metrics["FID"] = FrechetInceptionDistance(feature=FID_FEATURES, reset_real_features=False,
                                                  feature_extractor_weights_path=inception_weights)
    except ModuleNotFoundError:
        skipped["FID"] = "torch-fidelity is not installed (pip install torch-fidelity)"
    except Exception as error:  # the weights' download: no connection, a proxy, a cut file
        skipped["FID"] = f"the Inception weights could not be fetched ({error.__class__.__name__})"
    return metrics, skipped


def evaluate(teacher, student, prompts: list[str], reference: torch.Tensor, *, clip_model: str | Path = CLIP_MODEL,
             inception_weights: str | None = None, resolution: int | None = None, guidance_scale: float = 7.5,
             seed: int = 0, batch_size: int = 8) -> tuple[list[dict], dict[str, torch.Tensor], list[str]]:
    """Score the teacher (DDIM, 1 step unguided and 25 steps at ``guidance_scale``) and the student (1, 2 and 4
    ADD steps) on ``prompts``: CLIP score with ``clip_model`` (a folder or hub id), FD_CLIP and FID against
    ``reference`` images (M, 3, H, W) in [-1, 1], and seconds per image.

    Returns the table's rows, each row's images (for a grid), and one line per metric skipped, saying why.
    """
    from addlib.bench.timing import timed_sample

    try:
        clip, skipped = load_clip(clip_model, teacher.device), {}
    except OSError as error:  # no such folder, or a hub out of reach: the other metrics still run
        clip, skipped = None, {"CLIP score and FD_CLIP": str(error)}
    metrics, fid_skipped = frechet_distances(clip, inception_weights)
    skipped |= fid_skipped
    device = teacher.device
    for metric in metrics.values():
        metric.to(device)
        for chunk in reference.split(batch_size):
            metric.update(to_uint8(chunk).to(device), real=True)
    runs = [("teacher", 1, 1.0, "ddim"), ("teacher", 25, guidance_scale, "ddim"),
            ("student", 1, 1.0, "add"), ("student", 2, 1.0, "add"), ("student", 4, 1.0, "add")]
    rows, images = [], {}
    for model, steps, guidance, sampler in tqdm(runs, desc="sampling and scoring", unit="row"):
        pipe = teacher if model == "teacher" else student
        with torch.autocast("cuda", enabled=pipe.device.type == "cuda"):  # fp16 on a GPU, as a user would sample
            generated, seconds = timed_sample(pipe, prompts, steps, guidance, seed=seed, sampler=sampler,
                                              height=resolution, width=resolution, batch_size=batch_size)
        generated = generated.float()
        name = f"{model}, {steps} step{'s' * (steps > 1)}" + (f", guidance {guidance:g}" if guidance > 1 else "")
        row = {"model": name, "CLIP score": "-", "FD_CLIP": "-", "FID": "-", "s/image": f"{seconds:.3f}"}
        if clip is not None:
            row["CLIP score"] = f"{clip_score(generated, prompts, *clip, batch_size):.2f}"
        for metric_name, metric in metrics.items():
            metric.reset()  # the fakes only: the reference stays
            for chunk in generated.split(batch_size):
                metric.update(to_uint8(chunk).to(device), real=False)
            row[metric_name] = f"{metric.compute().item():.1f}"
        rows.append(row)
        images[name] = generated.cpu()
    return rows, images, [f"{name} skipped: {why}" for name, why in skipped.items()]
