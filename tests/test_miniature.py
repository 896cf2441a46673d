"""The miniature Stable Diffusion: tokenizer, parts, saving and loading, and its errors."""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline

from addlib.miniature import (
    MAX_PROMPT_TOKENS,
    build_pipeline,
    build_tokenizer,
    check_prompts,
    learn_bpe,
    load_pipeline,
    save_tokenizer_files,
)
from addlib.shapes import VOCABULARY, make_shapes


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline")
    pipe = build_pipeline(seed=0)
    pipe.save_pretrained(folder, safe_serialization=True)
    save_tokenizer_files(folder / "tokenizer")
    return pipe, folder


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


def test_save_and_load_round_trip(saved_pipeline):
    pipe, folder = saved_pipeline
    loaded = load_pipeline(folder, device="cpu")
    ids = pipe.tokenizer(["a red circle"], padding="max_length", max_length=MAX_PROMPT_TOKENS,
                         return_tensors="pt").input_ids
    latents, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    with torch.no_grad():
        expected = pipe.unet(latents, t, pipe.text_encoder(ids)[0]).sample
        got = loaded.unet(latents, t, loaded.text_encoder(ids)[0]).sample
    torch.testing.assert_close(got, expected)
    vocab = json.loads((folder / "tokenizer" / "vocab.json").read_text())
    assert vocab == learn_bpe(VOCABULARY)[0]


def test_load_errors_are_one_line(saved_pipeline, tmp_path):
    _, folder = saved_pipeline
    with pytest.raises(FileNotFoundError, match="no pipeline folder at .*python -m addlib.train_teacher"):
        load_pipeline(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="not a diffusers pipeline folder"):
        load_pipeline(tmp_path)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for item in folder.iterdir():
        target = corrupt / item.name
        if item.is_dir():
            target.mkdir()
            for f in item.iterdir():
                (target / f.name).write_bytes(f.read_bytes()[: 100] if f.suffix == ".safetensors" else f.read_bytes())
        else:
            target.write_bytes(item.read_bytes())
    with pytest.raises(OSError, match="incomplete or corrupt") as error:
        load_pipeline(corrupt)
    assert "\n" not in str(error.value)


def test_hub_id_offline_says_what_to_do():
    with pytest.raises(OSError, match="from the Hugging Face hub .* offline, use the shipped miniature") as error:
        load_pipeline("nota-ai/bk-sdm-tiny")
    assert "\n" not in str(error.value)


def test_check_prompts():
    tokenizer = build_tokenizer()
    check_prompts(tokenizer, ["a small red circle at the top left on a blue background", ""])
    with pytest.raises(ValueError, match="unknown word 'pink'"):
        check_prompts(tokenizer, ["a pink circle"])
    long = "a " * 15 + "red circle"  # every word known, but 19 tokens
    with pytest.raises(ValueError, match=r"is 19 tokens but the tokenizer allows 16; shorten it"):
        check_prompts(tokenizer, [long])


def test_pipeline_available_checks_a_folder_or_the_hub_without_loading(tmp_path):
    from addlib.miniature import TEACHER_DIR, pipeline_available

    assert pipeline_available(TEACHER_DIR)
    assert not pipeline_available(tmp_path)  # a folder, but no pipeline in it
    assert not pipeline_available("nota-ai/bk-sdm-tiny")  # the tests run offline (conftest)
