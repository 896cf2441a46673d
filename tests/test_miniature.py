"""The miniature Stable Diffusion: its tokenizer, its parts, and the prompts it reads."""

import pytest
import torch
from diffusers import StableDiffusionPipeline

from addlib.miniature import MAX_PROMPT_TOKENS, build_pipeline, build_tokenizer, check_prompts, learn_bpe
from addlib.pipeline import decode_latents, encode_latents
from addlib.shapes import VOCABULARY, make_shapes


def test_bpe_makes_every_word_one_token_and_is_deterministic():
    vocab, merges = learn_bpe(VOCABULARY)
    assert (vocab, merges) == learn_bpe(VOCABULARY)
    tokenizer = build_tokenizer()
    for word in VOCABULARY:
        assert tokenizer.convert_ids_to_tokens(tokenizer(word).input_ids) == ["<|startoftext|>", word + "</w>",
                                                                               "<|endoftext|>"]


def test_captions_fit_the_text_encoder():
    tokenizer = build_tokenizer()
    _, captions, _ = make_shapes(500, seed=3)
    lengths = [len(tokenizer(c).input_ids) for c in captions]
    assert max(lengths) <= MAX_PROMPT_TOKENS
    assert all(n == len(c.split()) + 2 for n, c in zip(lengths, captions))  # one token per word


def test_pipeline_parts_and_latent_shape():
    pipe = build_pipeline()
    assert isinstance(pipe, StableDiffusionPipeline)
    images, _, _ = make_shapes(2)
    with torch.no_grad():
        latents = pipe.vae.encode(images).latent_dist.mean
    assert latents.shape == (2, 4, 8, 8)
    assert pipe.unet.config.sample_size == 8 and pipe.scheduler.config.prediction_type == "v_prediction"


def test_the_pipeline_steps_refuse_what_the_vae_cannot_take():
    pipe, images = build_pipeline(), make_shapes(2)[0]
    with pytest.raises(ValueError, match=r"^images must lie in \[-1, 1\], got values from"):
        encode_latents(pipe.vae, images * 127.5 + 127.5)
    with pytest.raises(ValueError, match=r"^images must have shape \(N, 3, H, W\)"):
        encode_latents(pipe.vae, images[0])
    with pytest.raises(ValueError, match=r"^latents must have shape \(B, 4, h, w\) for this VAE, got \(2, 3, 8, 8\)$"):
        decode_latents(pipe, torch.zeros(2, 3, 8, 8))


def test_check_prompts():
    tokenizer = build_tokenizer()
    check_prompts(tokenizer, ["a small red circle at the top left on a blue background", ""])
    with pytest.raises(ValueError, match="unknown word 'pink'"):
        check_prompts(tokenizer, ["a pink circle"])
    long = "a " * 15 + "red circle"  # every word known, but 19 tokens
    with pytest.raises(ValueError, match=r"is 19 tokens but the tokenizer allows 16; shorten it"):
        check_prompts(tokenizer, [long])
    with pytest.raises(TypeError, match=r"prompts must be strings, got None among them; use \"\" for no prompt"):
        check_prompts(tokenizer, ["a red circle", None])
