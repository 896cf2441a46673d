"""Rehearsal models: the hub models' own architectures, built from their published configs with random weights.

The real half of the course (notebook 06) loads Stable Diffusion, DINOv2 and TAESD from the Hugging Face hub,
which neither the tests nor a GPU machine without internet can reach. A rehearsal folder is what the hub would
have sent, less the training: the same files in the same layout (``model_index.json``, ``unet/config.json``,
``tokenizer/vocab.json``, ...), the published configs verbatim, weights drawn at random. So
``load_pipeline(folder)``, ``load_dinov2(folder)`` and ``load_tiny_vae(folder)`` take exactly the code path a
hub id takes, and a run on rehearsal folders measures what a real run costs in time and memory. Never what it
is worth: the weights are random, and so is every image they make.

    python -m addlib.course.rehearsal                                    # every model below, into runs/rehearsal/
    python -m addlib.course.rehearsal --models nota-ai/bk-sdm-tiny facebook/dinov2-small --out /tmp/rehearsal

``data/rehearsal/<org>--<name>/`` holds each model's published config files (``data/rehearsal/SOURCES.md``
says where each came from), ``data/rehearsal/clip-bpe/`` the byte-pair vocabulary that the CLIP tokenizers of
all three pipelines share (OpenAI's, as the hub ships it).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from addlib.discriminator import DINOV2_ID
from addlib.loading import (
    BK_SDM_TINY_ID,
    DATA_DIR,
    SD21_BASE_ID,
    SD_TURBO_ID,
    TAESD_ID,
    pipeline_class,
    quiet_diffusers,
    save_pipeline,
)
from addlib.utils.commands import OneLineParser, run_command
from addlib.utils.errors import check_folder

REHEARSAL_DIR = DATA_DIR / "rehearsal"
CLIP_BPE_DIR = REHEARSAL_DIR / "clip-bpe"
OUT_DIR = Path("runs/rehearsal")
# Each hub id the course names, and what it is.
MODELS = {
    SD_TURBO_ID: "pipeline",  # ADD's own student of SD 2.1: notebook 06's student and stream
    SD21_BASE_ID: "pipeline",  # its teacher, at 512 pixels
    BK_SDM_TINY_ID: "pipeline",  # a small SD 1.x (a UNet without its lowest stage): notebook 06's teacher
    DINOV2_ID: "dinov2",  # ViT-S/14, ADD's discriminator features
    TAESD_ID: "tiny_vae",  # TAESD, the tiny VAE for SD 1.x and 2.x latents
    "laion/CLIP-ViT-g-14-laion2B-s12B-b42K": "clip",  # the ADD paper's CLIP score model (1.4B parameters)
    "openai/clip-vit-base-patch32": "clip",  # a small CLIP, for the CLIP metrics on a CPU
}
MARKER = "rehearsal.json"  # in every folder built here: what it rehearses, and that its weights are random


def folder_name(model_id: str) -> str:
    """The hub cache's name for a repository: ``org/name`` -> ``org--name``."""
    return model_id.replace("/", "--")


def _copy_published_files(source: Path, target: Path) -> None:
    """The published config files over those the libraries wrote: the same values, in the hub's own form."""
    for path in source.rglob("*.json"):
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)


def _clip_tokenizer(source: Path):
    """The pipeline's CLIP tokenizer: its published configs with the shared byte-pair vocabulary."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        for path in [*(source / "tokenizer").glob("*.json"), *CLIP_BPE_DIR.iterdir()]:
            shutil.copyfile(path, Path(folder) / path.name)
        return CLIPTokenizer.from_pretrained(folder)


def build_pipeline(source: Path, dtype: torch.dtype = torch.float16):
    """A ``StableDiffusionPipeline`` with the architecture of ``source``'s configs and random weights."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    def config(part: str) -> dict:
        return json.loads((source / part / "config.json").read_text())

    scheduler_class = getattr(diffusers, json.loads((source / "model_index.json").read_text())["scheduler"][1])
    pipe = pipeline_class()(
        vae=AutoencoderKL.from_config(config("vae")),
        text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(source / "text_encoder")),
        tokenizer=_clip_tokenizer(source),
        unet=UNet2DConditionModel.from_config(config("unet")),
        scheduler=scheduler_class.from_pretrained(source / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe.to(dtype)


def build(model_id: str, out: Path = OUT_DIR, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """Build ``model_id``'s rehearsal folder at ``out / folder_name(model_id)`` and return it.

    A folder already there is kept (building the largest takes a minute and gigabytes); a build is written to a
    temporary folder and renamed when whole, so an interrupted one leaves nothing half-made. Pipelines are saved
    in ``dtype`` (half the disk in float16; :func:`addlib.loading.load_pipeline` loads them in any dtype).
    """
    if model_id not in MODELS:
        raise ValueError(f"no rehearsal configs for {model_id!r}; choose from {', '.join(MODELS)}")
    source, target = REHEARSAL_DIR / folder_name(model_id), Path(out) / folder_name(model_id)
    if target.exists():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    torch.manual_seed(seed)
    kind = MODELS[model_id]
    with quiet_diffusers():  # no saving bars; the published configs name keys of older diffusers releases
        if kind == "pipeline":
            save_pipeline(build_pipeline(source, dtype), partial)
            for name in ("vocab.json", "merges.txt"):
                shutil.copyfile(CLIP_BPE_DIR / name, partial / "tokenizer" / name)
        elif kind == "dinov2":
            from transformers import Dinov2Config, Dinov2Model

            Dinov2Model(Dinov2Config.from_pretrained(source)).save_pretrained(partial, safe_serialization=True)
        elif kind == "clip":
            from transformers import CLIPConfig, CLIPModel

            CLIPModel(CLIPConfig.from_pretrained(source)).to(dtype).save_pretrained(partial, safe_serialization=True)
            for path in CLIP_BPE_DIR.iterdir():
                shutil.copyfile(path, partial / path.name)
        else:
            from diffusers import AutoencoderTiny

            AutoencoderTiny.from_config(json.loads((source / "config.json").read_text())).save_pretrained(partial)
    _copy_published_files(source, partial)
    (partial / MARKER).write_text(json.dumps({"rehearses": model_id, "weights": "random"}, indent=2) + "\n")
    os.replace(partial, target)
    return target


def random_weights(path: str | Path) -> bool:
    """Whether ``path`` is a rehearsal folder, or a student trained from one (its ``recipe.json`` says so)."""
    path = Path(path)
    if (path / MARKER).exists():
        return True
    recipe = path / "recipe.json"  # an ADD student's names its teacher; other trainers' recipes name none
    teacher = json.loads(recipe.read_text()).get("config", {}).get("teacher") if recipe.exists() else None
    return teacher is not None and random_weights(teacher)


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m addlib.course.rehearsal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), metavar="HUB_ID",
                        help=f"which to build (default: all of {', '.join(MODELS)})")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="the folders go to OUT/<org>--<name>")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="of pipeline weights")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        check_folder("--out", args.out)
    except ValueError as error:
        parser.error(str(error))
    for model_id in args.models:
        folder = build(model_id, args.out, args.seed, getattr(torch, args.dtype))
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        print(f"{model_id}: {folder} ({size / 1e9:.2f} GB; random weights, the published architecture)")


if __name__ == "__main__":
    run_command(main)
