"""Loading and saving: round trips, folders every transformers release reads, and one-line errors."""

import json

import pytest
import torch
from safetensors import safe_open
from transformers import CLIPTextModel

from addlib import loading
from addlib.loading import (
    LADD_STUDENT_DIR,
    STUDENT_DIR,
    TEACHER_DIR,
    load_pipeline,
    load_tiny_vae,
    pipeline_available,
    save_pipeline,
)
from addlib.miniature import MAX_PROMPT_TOKENS, build_pipeline, learn_bpe
from addlib.shapes import VOCABULARY


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline")
    pipe = build_pipeline(seed=0)
    save_pipeline(pipe, folder)
    return pipe, folder


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


@pytest.mark.parametrize("folder", ["saved", TEACHER_DIR, STUDENT_DIR, LADD_STUDENT_DIR],
                         ids=["saved", "teacher", "student", "LADD student"])
def test_text_encoders_are_saved_in_the_form_transformers_4_and_5_both_read(saved_pipeline, folder):
    """transformers 5 drops the text_model. prefix when it saves; transformers 4 then loads nothing, silently,
    and starts the text encoder from random weights. Every folder here must load with no weight missing."""
    folder = saved_pipeline[1] if folder == "saved" else folder
    with safe_open(folder / "text_encoder" / "model.safetensors", "pt") as f:
        assert all(key.startswith("text_model.") for key in f.keys())
    _, info = CLIPTextModel.from_pretrained(folder / "text_encoder", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert (folder / "tokenizer" / "vocab.json").exists() and (folder / "tokenizer" / "merges.txt").exists()


def _corrupt_copy(folder, target):
    """``folder`` copied to ``target`` with every weights file cut to its first 100 bytes."""
    target.mkdir()
    for item in folder.iterdir():
        if item.is_dir():
            _corrupt_copy(item, target / item.name)
        else:
            data = item.read_bytes()
            (target / item.name).write_bytes(data[:100] if item.suffix == ".safetensors" else data)


def test_load_errors_are_one_line_and_say_what_to_do(saved_pipeline, tmp_path, monkeypatch):
    _, folder = saved_pipeline
    cases = [
        (tmp_path / "missing", FileNotFoundError, "no diffusers pipeline folder at .*missing; check the path"),
        (tmp_path, FileNotFoundError, "is not a diffusers pipeline folder \\(no model_index.json\\)"),
        ("nota-ai/bk-sdm-tiny", OSError, "could not load diffusers pipeline 'nota-ai/bk-sdm-tiny': there is no "
                                         "folder nota-ai/bk-sdm-tiny here, and the Hugging Face hub .*cannot be "
                                         "reached \\(HF_HUB_OFFLINE is set\\); offline, use the shipped miniature"),
        ("runs/add", OSError, "there is no folder runs/add here"),  # a relative folder that is not there
        ("../runs/add", FileNotFoundError, "no diffusers pipeline folder at ../runs/add"),  # not a hub id at all
    ]
    _corrupt_copy(folder, tmp_path / "corrupt")
    cases.append((tmp_path / "corrupt", OSError, "could not load the diffusers pipeline in .*corrupt .*incomplete "
                                                 "or corrupt"))
    monkeypatch.setitem(loading.REBUILD, (tmp_path / "corrupt").resolve(), "python -m addlib.train_add")
    for path, kind, message in cases:
        with pytest.raises(kind, match=message) as error:
            load_pipeline(path)
        assert "\n" not in str(error.value)
    assert "rebuild it with `python -m addlib.train_add`" in str(error.value)


def test_a_cuda_device_without_cuda_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda' asked for, but torch sees no CUDA GPU here .*device='cpu'"):
        load_pipeline(device="cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        load_tiny_vae(device="gpu")


def test_tiny_vae_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a tiny VAE folder \\(no config.json\\)"):
        load_tiny_vae(tmp_path)
    with pytest.raises(OSError, match="could not load tiny VAE 'madebyollin/taesd': .* offline, decode with the "
                                      "pipeline's own VAE"):
        load_tiny_vae("madebyollin/taesd")


def test_pipeline_available_checks_a_folder_or_the_hub_without_loading(tmp_path):
    assert pipeline_available(TEACHER_DIR)
    assert not pipeline_available(tmp_path)  # a folder, but no pipeline in it
    assert not pipeline_available("nota-ai/bk-sdm-tiny")  # the tests run offline (conftest)


def test_a_download_shows_its_progress_and_a_local_load_does_not(tmp_path):
    from huggingface_hub.utils import are_progress_bars_disabled

    (tmp_path / "model_index.json").write_text("{}")
    bars_hidden = lambda path: are_progress_bars_disabled()  # noqa: E731 (the load stands in for from_pretrained)
    assert loading.from_folder_or_hub(bars_hidden, tmp_path, "pipeline", "model_index.json", "", "")
    assert not loading.from_folder_or_hub(bars_hidden, "some-org/some-model", "pipeline", "model_index.json", "", "")
    assert not are_progress_bars_disabled(), "the bars are on again after a local load"
