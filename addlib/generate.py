"""Teacher-generated training data: ADD without a dataset of one's own (LADD, Sauer et al., 2024, section 3).

ADD trains on real images x0 with their captions. LADD (arXiv 2403.12015) showed that the teacher's own samples
serve as well: generate x0 = teacher(prompt) with many guided steps once, then distil on those. It needs nothing
but the teacher and a list of prompts, so it is the course's default at real scale, where a learner has the
model hub but no captioned image set.

    python -m addlib.generate --prompts everyday --teacher nota-ai/bk-sdm-tiny \
        --guidance-scale 7.5 --out runs/data/bk-sdm-tiny          # a hub teacher, SD's guidance, fp16 on a GPU
    python -m addlib.generate --shapes 2048 --out runs/data/shapes-2048     # the miniature's teacher

The output is an ordinary image-caption folder (:class:`addlib.datasets.ImageCaptionFolder`), plus
``generation.json``: the teacher and every setting that made the images. Image ``i`` starts from its own
initial noise, drawn from ``(seed, i)``, and DDIM adds none along the way, so it depends on nothing else: an
interrupted generation (Ctrl-C, a full disk) run again continues where it stopped and makes exactly the images an
uninterrupted one would. A folder made by another teacher or other settings is refused, never mixed in.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
from pathlib import Path

import torch
from tqdm import tqdm  # a text bar: in a notebook its last state stays in the saved output

from addlib.datasets import to_uint8
from addlib.loading import DATA_DIR, load_pipeline
from addlib.miniature import check_prompts
from addlib.pipeline import check_image_size, image_size, vae_factor
from addlib.sampling import sample
from addlib.utils.commands import OneLineParser, at_least, run_command
from addlib.utils.errors import check_folder, check_integer
from addlib.utils.runs import step_generator

SETTINGS_FILE = "generation.json"
METADATA_FILE = "metadata.jsonl"
PROMPTS_DIR = DATA_DIR / "prompts"
# The course's prompts, written for it, by name: "everyday" to train at real scale, "held_out" to evaluate it
# (no training image is made from those).
SHIPPED_PROMPTS = {name: PROMPTS_DIR / f"{name}.txt" for name in ("everyday", "held_out")}
GENERATED_DIR = Path("runs/generated")  # where training runs cache their generated data


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a text file, one per line, or of a shipped one by name (``SHIPPED_PROMPTS``); blank lines
    and lines starting with ``#`` are skipped."""
    path = SHIPPED_PROMPTS.get(str(path), Path(path))
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist; write one prompt per line")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"prompt file {path} is not UTF-8 text; write one prompt per line") from None
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise ValueError(f"prompt file {path} holds no prompts; write one prompt per line")
    return prompts


def shapes_prompts(num_prompts: int, seed: int, omit_prob: float = 0.5) -> list[str]:
    """The miniature's prompts: the captions of ``num_prompts`` shapes images of ``seed``, attributes left out
    with ``omit_prob`` as in the teacher's training."""
    from addlib.shapes import make_shapes

    return make_shapes(num_prompts, seed, omit_prob=omit_prob)[1]


def settings_of(teacher: str, prompts: list[str], num_inference_steps: int, guidance_scale: float, seed: int,
                resolution: int) -> dict:
    """What makes the images: recorded in ``generation.json`` and compared when a folder is reused."""
    digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]
    return {"teacher": str(teacher), "prompts": len(prompts), "prompts_sha256": digest, "sampler": "ddim",
            "num_inference_steps": num_inference_steps, "guidance_scale": float(guidance_scale), "seed": seed,
            "resolution": resolution}


def cache_folder(root: str | Path, settings: dict) -> Path:
    """A folder under ``root`` named for ``settings``: the teacher's name and a digest of the rest."""
    name = Path(settings["teacher"]).name or "teacher"
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return Path(root) / f"{name}-{digest}"


def _claim(out: Path, settings: dict) -> int:
    """Record ``settings`` in a new folder, or check them against an old one; return how many images it holds
    whole (lines of its metadata: a line is written only after its image)."""
    out.mkdir(parents=True, exist_ok=True)
    recorded = out / SETTINGS_FILE
    if recorded.exists():
        old = json.loads(recorded.read_text())
        changed = [f"{key} {old.get(key)!r} there, {value!r} now" for key, value in settings.items()
                   if old.get(key) != value]
        if changed:
            raise ValueError(f"{out} holds images generated with other settings ({'; '.join(changed)}); "
                             f"choose another folder, or delete it to start again")
    elif any(out.iterdir()):
        raise ValueError(f"{out} is not empty and has no {SETTINGS_FILE}; generate into an empty folder")
    else:
        recorded.write_text(json.dumps(settings, indent=2) + "\n")
    metadata = out / METADATA_FILE
    if not metadata.exists():
        return 0
    text = metadata.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    whole = [line for line in lines if line.endswith("\n")]  # a line cut by a full disk is dropped
    if len(whole) != len(lines):
        metadata.write_text("".join(whole), encoding="utf-8")
    return len(whole)


def _save(image: torch.Tensor, path: Path) -> None:
    """An image (3, H, W) in [-1, 1] as a PNG, written to a temporary name and renamed when whole."""
    from PIL import Image

    pixels = to_uint8(image[None])[0].permute(1, 2, 0).cpu().numpy()
    partial = path.with_name(path.name + ".partial")
    Image.fromarray(pixels).save(partial, format="PNG")
    os.replace(partial, path)


@torch.no_grad()
def generate(pipe, prompts: list[str], out: str | Path | None = None, *, teacher: str,
             num_inference_steps: int = 25, guidance_scale: float = 3.0, seed: int = 0,
             resolution: int | None = None, batch_size: int = 16, root: str | Path = GENERATED_DIR,
             progress: bool = True) -> Path:
    """Sample one image per prompt with ``pipe`` (DDIM, ``num_inference_steps``, guided) into the image-caption
    folder ``out``, continuing a folder made with the same settings; ``teacher`` names ``pipe`` in the record.
    Without ``out``, the folder is one of ``root`` named for the settings (:func:`cache_folder`), so runs that
    agree on them share one generation and runs that do not never meet. Returns the folder."""
    # Everything is checked before the folder is claimed: a refused run leaves nothing behind.
    if isinstance(prompts, str):
        raise TypeError(f"prompts must be a list of prompts, got the string {prompts!r}; pass [{prompts!r}]")
    check_integer("num_inference_steps", num_inference_steps, 1)
    check_integer("batch_size", batch_size, 1)
    if not 1 <= guidance_scale < math.inf:  # NaN too: sample's own check would come after the folder is made
        raise ValueError(f"guidance_scale must be a finite number of at least 1 (1 for none, the course uses 3), "
                         f"got {guidance_scale}")
    check_prompts(pipe.tokenizer, prompts)  # every prompt, before the first image
    factor = vae_factor(pipe.vae)
    resolution = image_size(pipe) if resolution is None else resolution
    check_image_size("resolution", resolution, factor)
    settings = settings_of(teacher, prompts, num_inference_steps, guidance_scale, seed, resolution)
    out = cache_folder(root, settings) if out is None else Path(out)
    check_folder("out", out)
    done = _claim(out, settings)
    shape = (pipe.unet.config.in_channels, resolution // factor, resolution // factor)
    bar = tqdm(total=len(prompts), initial=done, desc="teacher images", unit="image", disable=not progress)
    for start in range(done, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        latents = torch.stack([torch.randn(shape, generator=step_generator(seed, start + k, 4))
                               for k in range(len(batch))])
        images = sample(pipe, batch, num_inference_steps, guidance_scale, seed=seed, height=resolution,
                        width=resolution, latents=latents)
        lines = []
        try:
            for k, (image, prompt) in enumerate(zip(images, batch)):
                name = f"{start + k:06d}.png"
                _save(image, out / name)
                lines.append(json.dumps({"file_name": name, "text": prompt}) + "\n")
            with open(out / METADATA_FILE, "a", encoding="utf-8") as metadata:
                metadata.write("".join(lines))
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            raise OSError(errno.ENOSPC, f"the disk is full: {start} of {len(prompts)} images are kept in {out}; "
                                        f"free some space and run the same command again to go on") from None
        bar.update(len(batch))
    bar.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m addlib.generate", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompts", help="a text file, one prompt per line, or a shipped one: "
                                          + ", ".join(SHIPPED_PROMPTS))
    source.add_argument("--shapes", type=at_least(1), metavar="N",
                        help="the captions of N shapes images (the miniature)")
    parser.add_argument("--teacher", default="miniature", help="the shipped teacher, a pipeline folder or a hub id")
    parser.add_argument("--out", type=Path, required=True, help="the image-caption folder to write or continue")
    parser.add_argument("--steps", type=at_least(1), default=25, help="DDIM steps per image")
    parser.add_argument("--guidance-scale", type=float, default=3.0, help="the teacher's guidance (SD: 7.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=at_least(8), help="image size (default: the UNet's own)")
    parser.add_argument("--batch-size", type=at_least(1), default=16)
    args = parser.parse_args(argv)
    prompts = read_prompts(args.prompts) if args.prompts else shapes_prompts(args.shapes, args.seed)
    pipe = load_pipeline(args.teacher)
    with torch.autocast("cuda", enabled=pipe.device.type == "cuda"):
        out = generate(pipe, prompts, args.out, teacher=args.teacher, num_inference_steps=args.steps,
                       guidance_scale=args.guidance_scale, seed=args.seed, resolution=args.resolution,
                       batch_size=args.batch_size)
    print(f"{len(prompts)} images of {args.teacher} in {out}")


if __name__ == "__main__":
    run_command(main)
