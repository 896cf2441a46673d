"""Loading and saving models: the shipped assets' paths, diffusers folders or hub ids, and one-line errors.

Every model the course uses comes in through this module: a pipeline (:func:`load_pipeline`), a tiny VAE
(:func:`load_tiny_vae`) or any other ``from_pretrained`` class (:func:`from_folder_or_hub`, which DINOv2's loader
uses too). Each takes a folder or a Hugging Face hub id alike, and turns the ways that fails into one sentence
that says which it was (no such folder, a folder missing its files, a corrupt file, a hub out of reach) and what
to do. :func:`save_pipeline` writes a pipeline that every supported transformers release reads back.
:func:`resolve_device` picks the device the models load on (CUDA when present), and :func:`to_model` brings a
tensor to the device and dtype of a model it meets, so seeded draws made on the CPU reach a model on a GPU.
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import AutoencoderTiny
from diffusers.utils import logging as diffusers_logging
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers.utils import logging as transformers_logging

from addlib.utils.errors import check_dtype_runs, resolve_device

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
TEACHER_DIR = DATA_DIR / "teacher"  # the miniature teacher, python -m addlib.course.train_teacher
STUDENT_DIR = DATA_DIR / "student"  # the student: python -m addlib.train_add --discriminator add+ladd
LADD_STUDENT_DIR = DATA_DIR / "ladd_student"  # LADD's heads alone: python -m addlib.train_add --discriminator ladd
TINY_VAE_DIR = DATA_DIR / "tiny_vae"  # the miniature's TAESD, python -m addlib.course.train_tiny_vae
HEALTH_DIR = DATA_DIR / "health"  # loss logs of short ADD runs that show a GAN's health (notebook 05)
# The hub's Stable Diffusion models the course names (notebook 06); the rehearsal builds each from its configs.
SD_TURBO_ID = "stabilityai/sd-turbo"  # ADD's own student of SD 2.1
SD21_BASE_ID = "stabilityai/stable-diffusion-2-1-base"  # its teacher, at 512 pixels
BK_SDM_TINY_ID = "nota-ai/bk-sdm-tiny"  # a small SD 1.x: notebook 06's teacher
TAESD_ID = "madebyollin/taesd"  # TAESD, the tiny VAE for SD 1.x and 2.x latents
REBUILD = {TEACHER_DIR: "python -m addlib.course.train_teacher",
           STUDENT_DIR: "python -m addlib.train_add --discriminator add+ladd",
           LADD_STUDENT_DIR: f"python -m addlib.train_add --discriminator ladd --out {LADD_STUDENT_DIR}",
           TINY_VAE_DIR: "python -m addlib.course.train_tiny_vae"}

def pipeline_class(name: str = "StableDiffusionPipeline") -> type:
    """diffusers' pipeline class ``name``, imported with transformers quiet. Without torchvision, transformers 5
    warns once, as diffusers' pipelines first import, that CLIPImageProcessor falls back to its PIL version; no
    pipeline here uses an image processor, so the notice would only clutter a notebook. Imported when first
    needed, not when addlib is: importing the library changes no library's settings, in whatever order."""
    import diffusers

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        return getattr(diffusers, name)  # diffusers imports its pipelines lazily, here
    finally:
        transformers_logging.set_verbosity(verbosity)


def is_hub_id(path: str | Path) -> bool:
    """Whether ``path`` could name a hub repository, by huggingface_hub's own rule ("name" or "namespace/name")."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(str(path))
    except ValueError:
        return False
    return True


@contextmanager
def _no_loading_bars():
    """Hide diffusers' and transformers' loading progress bars: a tiny model loads in a blink, and the bars'
    timing-dependent updates would make notebook outputs differ run to run."""
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()


@contextmanager
def quiet_diffusers():
    """diffusers' notices and progress bars off for one load or save, back to what they were after."""
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with _no_loading_bars():
            yield
    finally:
        diffusers_logging.set_verbosity(verbosity)


def _rebuild_hint(path: Path, rebuild: str) -> str:
    command = REBUILD.get(path.resolve(), rebuild)
    return f"rebuild it with `{command}`" if command.startswith("python -m") else command


def from_folder_or_hub(load, path: str | Path, what: str, marker: str, rebuild: str, offline: str):
    """``load(path)`` (a ``from_pretrained``), its failures turned into one sentence.

    ``what`` names the model in messages, ``marker`` is the file a folder of it must hold (``model_index.json``,
    ``config.json``), ``rebuild`` says how to make the folder again (a shipped asset's own command is looked up),
    ``offline`` what to use when the hub cannot be reached. A path that exists is a folder; one that does not is
    a hub id if it can be one, and otherwise a folder that is not there (say ``runs/add`` is both: the message
    then says so).
    """
    folder = Path(path)
    if folder.exists():
        if not (folder / marker).exists():
            raise FileNotFoundError(f"{path} is not a {what} folder (no {marker}); point to one, or "
                                    f"{_rebuild_hint(folder, rebuild)}")
    elif not is_hub_id(path):
        raise FileNotFoundError(f"no {what} folder at {path}; check the path, or {_rebuild_hint(folder, rebuild)}")
    try:
        # A download from the hub keeps its progress bars: gigabytes without them look like a hung cell.
        with _no_loading_bars() if folder.exists() else nullcontext():
            return load(path)
    except (OSError, ValueError, SafetensorError) as error:  # huggingface_hub's errors are OSError or ValueError
        if folder.exists():
            first = str(error).splitlines()[0] if str(error) else ""
            raise OSError(f"could not load the {what} in {path} ({error.__class__.__name__}: {first}); its files "
                          f"may be incomplete or corrupt: {_rebuild_hint(folder, rebuild)}") from None
        local = f"there is no folder {path} here, and " if "/" in str(path) else ""
        offline_now = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0") else ""
        raise OSError(f"could not load {what} {str(path)!r}: {local}the Hugging Face hub has no such model or "
                      f"cannot be reached{offline_now}; offline, {offline}") from None


MINIATURE = "miniature"  # names the shipped model wherever a folder or hub id is asked for


def load_pipeline(path: str | Path = TEACHER_DIR, device: str | torch.device | None = None,
                  dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    """Load a diffusers Stable Diffusion folder or hub id, with one-line errors for the common failures.

    Defaults to the shipped miniature teacher (also ``"miniature"``), in float32 on CUDA when present, else on
    the CPU. Weights are read from safetensors only (``use_safetensors=True``), so loading never unpickles
    anything.
    """
    path = TEACHER_DIR if str(path) == MINIATURE else path
    device = resolve_device(device)
    check_dtype_runs(dtype, device)

    def load(path):
        # quiet: diffusers' own notices (a hub it cannot reach, config keys of another release) would come
        # before, and repeat less clearly, the one sentence from_folder_or_hub gives when loading fails.
        with warnings.catch_warnings(), quiet_diffusers():
            # diffusers >= 0.36 renamed torch_dtype to dtype; the old name still works and older releases need it.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            return pipeline_class().from_pretrained(path, torch_dtype=dtype, use_safetensors=True,
                                                    safety_checker=None, requires_safety_checker=False)

    pipe = from_folder_or_hub(load, path, "diffusers pipeline", "model_index.json",
                              "save one with addlib.loading.save_pipeline",
                              "use the shipped miniature: load_pipeline() with no argument")
    pipe.set_progress_bar_config(disable=True)
    with quiet_diffusers():  # diffusers warns that float16 cannot run on a CPU; check_dtype_runs has asked torch
        return pipe.to(device)


def pipeline_available(path: str | Path) -> bool:
    """Whether ``path`` is a pipeline folder, or a hub id whose ``model_index.json`` can be fetched (or is in the
    cache): a check that costs one small file, not the model."""
    if Path(path).exists():
        return (Path(path) / "model_index.json").exists()
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(str(path), "model_index.json")
        return True
    except Exception:  # offline, no such repository, a gated one, an invalid id: all mean "not here"
        return False


def load_tiny_vae(path: str | Path = TINY_VAE_DIR, device: str | torch.device | None = None,
                  dtype: torch.dtype = torch.float32) -> AutoencoderTiny:
    """A frozen ``AutoencoderTiny``: the miniature's (the default, or ``"miniature"``; ``python -m
    addlib.course.train_tiny_vae``) or a folder or hub id, e.g. madebyollin/taesd for SD 1.x and 2.x latents. It decodes
    the scaled latents the UNet works in; give it the UNet's ``dtype`` (a stream in float16, say)."""
    path = TINY_VAE_DIR if str(path) == MINIATURE else path
    device = resolve_device(device)
    check_dtype_runs(dtype, device)

    def load(path):
        # diffusers' AutoencoderTiny writes block_out_channels into its own config, then warns on reading it back.
        with quiet_diffusers():
            return AutoencoderTiny.from_pretrained(path, use_safetensors=True, torch_dtype=dtype)

    vae = from_folder_or_hub(load, path, "tiny VAE", "config.json",
                             "train one with `python -m addlib.course.train_tiny_vae --out FOLDER`",
                             "decode with the pipeline's own VAE")
    return vae.to(device).eval().requires_grad_(False)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s weights are, read from the first: diffusers' ``.device`` walks every module."""
    return next(model.parameters()).device


def to_model(x: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """``x`` where ``model`` computes: on its device and, if floating point, in its dtype (timesteps stay
    integers). Gradients flow back through the move to ``x`` where it was."""
    weight = next(model.parameters())
    return x.to(weight.device, weight.dtype) if x.is_floating_point() else x.to(weight.device)


def write_bpe_files(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    """Write a byte-pair encoding as CLIP ships it: ``vocab.json`` and ``merges.txt``."""
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=1) + "\n")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


TEXT_MODEL_PREFIX = "text_model."


def _prefixed(key: str) -> str:
    return key if key.startswith(TEXT_MODEL_PREFIX) else TEXT_MODEL_PREFIX + key


def save_pipeline(pipe: StableDiffusionPipeline, folder: str | Path) -> None:
    """``pipe.save_pretrained(folder)`` in safetensors, in the form every supported transformers release reads.

    transformers 5 saves a ``CLIPTextModel``'s weights without their ``text_model.`` prefix and a
    ``CLIPTokenizer`` as ``tokenizer.json`` alone; transformers 4 (still common in Colab) would load neither, and
    would start the text encoder from random weights with only a warning. Both releases read the form written
    here, the one hub Stable Diffusion checkpoints have: prefixed weight names, and ``vocab.json`` with
    ``merges.txt`` beside ``tokenizer.json``.
    """
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    encoder = folder / "text_encoder"
    for weights in encoder.glob("*.safetensors"):
        with safe_open(weights, "pt") as f:
            if all(key.startswith(TEXT_MODEL_PREFIX) for key in f.keys()):
                continue  # transformers 4 wrote it: nothing to read or rewrite
            metadata, state = f.metadata(), {key: f.get_tensor(key) for key in f.keys()}
        save_file({_prefixed(key): value for key, value in state.items()}, weights, metadata=metadata)
    index = encoder / "model.safetensors.index.json"
    if index.exists():  # a sharded save names each weight's file
        contents = json.loads(index.read_text())
        contents["weight_map"] = {_prefixed(key): file for key, file in contents["weight_map"].items()}
        index.write_text(json.dumps(contents, indent=2) + "\n")
    tokenizer = folder / "tokenizer"
    if not (tokenizer / "vocab.json").exists() or not (tokenizer / "merges.txt").exists():
        bpe = json.loads(pipe.tokenizer.backend_tokenizer.to_str())["model"]
        write_bpe_files(tokenizer, bpe["vocab"], [m.split() if isinstance(m, str) else m for m in bpe["merges"]])
