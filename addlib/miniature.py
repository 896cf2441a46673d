"""The miniature Stable Diffusion: the real diffusers architecture, small enough to train and run on a CPU.

Every part is the class a real Stable Diffusion uses, only with tiny configurations, so every line of
``addlib`` that runs on the miniature runs unchanged on a hub model:

- ``CLIPTokenizer``: a byte-pair encoding learned here over the shapes vocabulary (no download);
- ``CLIPTextModel``: 2 layers, width 64;
- ``AutoencoderKL``: 32x32x3 images <-> 8x8x4 latents (Rombach et al., 2022, "High-Resolution Image
  Synthesis with Latent Diffusion Models": diffuse in a VAE's latent space, not in pixels);
- ``UNet2DConditionModel``: cross-attention to the text, on 8x8 latents;
- ``DDIMScheduler`` with v-prediction and a zero-terminal-SNR schedule (Lin et al., 2024), so the teacher
  can start from pure noise, as notebook 01 explains and as ADD's student must.

``build_pipeline()`` makes an untrained pipeline from these configurations; ``python -m addlib.course.train_teacher``
trains it and saves it to ``data/teacher``; :func:`addlib.loading.load_pipeline` loads it.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from addlib.loading import pipeline_class, write_bpe_files
from addlib.shapes import VOCABULARY, parse_caption

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

MAX_PROMPT_TOKENS = 16  # the longest caption is 12 words; with start and end tokens, 14

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
END_OF_WORD = "</w>"

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64),  # two downsamplings: 32x32 -> 8x8
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=32,
)
# TAESD's architecture (Bohan, 2023; diffusers' AutoencoderTiny) at the miniature's size: plain convolutions,
# no attention, no sampling; it reads and writes the *scaled* latents the UNet works in (scaling_factor 1).
TINY_VAE_CONFIG = dict(
    encoder_block_out_channels=(32, 32, 32),  # two downsamplings, as the VAE's: 32x32 -> 8x8
    decoder_block_out_channels=(32, 32, 32),
    num_encoder_blocks=(1, 2, 2),
    num_decoder_blocks=(2, 2, 1),
    latent_channels=4,
)
TEXT_ENCODER_CONFIG = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=MAX_PROMPT_TOKENS,
    projection_dim=64,
)
UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(64, 128, 192),
    layers_per_block=1,
    cross_attention_dim=TEXT_ENCODER_CONFIG["hidden_size"],
    attention_head_dim=8,
    norm_num_groups=32,
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    timestep_spacing="trailing",  # with zero terminal SNR, the first sampling step must be t = 999 (Lin et al.)
    clip_sample=False,
    set_alpha_to_one=True,  # the last DDIM step lands on the predicted x0 itself
    steps_offset=1,  # unused by "trailing" spacing; set to silence diffusers' deprecation warning
)


def learn_bpe(words: tuple[str, ...]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-pair encoding (Sennrich et al., 2016) learned until every word of ``words`` is a single token.

    Starts from characters (the last one of a word marked with ``</w>``, as in CLIP) and merges the most
    frequent adjacent pair, ties broken alphabetically so the result never changes. Returns the vocabulary
    (special tokens, characters, then merged tokens, each mapped to its id) and the merges in rank order.
    Characters stay in the vocabulary, so an unknown word still tokenizes, one piece per letter.
    """
    letters = sorted({c for word in words for c in word})
    vocab = [*SPECIAL_TOKENS, *letters, *(c + END_OF_WORD for c in letters)]
    segmented = [[*word[:-1], word[-1] + END_OF_WORD] for word in words]
    merges = []
    while any(len(symbols) > 1 for symbols in segmented):
        pairs = Counter(pair for symbols in segmented for pair in zip(symbols, symbols[1:]))
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        vocab.append("".join(best))
        for symbols in segmented:
            i = 0
            while i < len(symbols) - 1:
                if (symbols[i], symbols[i + 1]) == best:
                    symbols[i : i + 2] = ["".join(best)]
                i += 1
    return {token: i for i, token in enumerate(vocab)}, merges


def build_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is the shapes world's words, one token per word.

    It is read back from the ``vocab.json`` and ``merges.txt`` files CLIP ships, the one form every
    transformers release from 4.x to 5.x constructs a ``CLIPTokenizer`` from.
    """
    with tempfile.TemporaryDirectory() as folder:
        write_bpe_files(Path(folder), *learn_bpe(VOCABULARY))
        return CLIPTokenizer.from_pretrained(folder, model_max_length=MAX_PROMPT_TOKENS)


def build_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """An untrained miniature Stable Diffusion pipeline, its weights initialised from ``seed``."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TEXT_ENCODER_CONFIG,
    )
    return pipeline_class()(
        vae=AutoencoderKL(**VAE_CONFIG),
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**UNET_CONFIG),
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def parameter_counts(pipe: StableDiffusionPipeline) -> dict[str, int]:
    """Number of parameters of each trainable part."""
    return {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("vae", "text_encoder", "unet")}


def is_shapes_tokenizer(tokenizer) -> bool:
    """Whether ``tokenizer`` is the miniature's (a word-level vocabulary), not a hub model's open one."""
    return len(tokenizer) < 1000 and all(word + END_OF_WORD in tokenizer.get_vocab() for word in VOCABULARY)


def check_prompts(tokenizer, prompts: list[str]) -> None:
    """Raise a one-line ValueError for a prompt the text encoder cannot read as it was trained to.

    Any tokenizer: a prompt longer than ``model_max_length`` tokens (diffusers would silently cut it). The
    miniature's tokenizer: also a word outside the shapes vocabulary (it would be spelt out letter by letter,
    which the text encoder never saw); the empty prompt is fine, it is the unconditional one.
    """
    shapes_world = is_shapes_tokenizer(tokenizer)
    for prompt in prompts:
        if not isinstance(prompt, str):
            raise TypeError(f"prompts must be strings, got {prompt!r} among them; use \"\" for no prompt")
        if shapes_world and prompt.strip():
            parse_caption(prompt)  # raises for unknown words, naming them and the vocabulary
        length = len(tokenizer(prompt).input_ids)
        if length > tokenizer.model_max_length:
            raise ValueError(
                f"prompt {prompt!r} is {length} tokens but the tokenizer allows {tokenizer.model_max_length}; "
                f"shorten it"
            )
