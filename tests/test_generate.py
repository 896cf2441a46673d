"""Teacher-generated training data: recorded, resumable exactly, refused when made otherwise; and 🤗 datasets."""

import errno
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator

from addlib import generate as generation
from addlib.course.rehearsal import REHEARSAL_DIR, _clip_tokenizer
from addlib.datasets import HubImageCaptions, ImageCaptionFolder, open_dataset
from addlib.generate import generate, read_prompts, shapes_prompts
from addlib.loading import load_pipeline
from addlib.miniature import build_tokenizer
from addlib.add_trainer import ADDTrainer
from addlib.train_add import Config

SETTINGS = dict(teacher="miniature", num_inference_steps=2, guidance_scale=3.0, seed=5, batch_size=4,
                progress=False)


@pytest.fixture(scope="module")
def teacher():
    return load_pipeline(device="cpu")


def test_the_shipped_prompt_files_are_distinct_everyday_prompts_that_fit_clip():
    everyday, held_out = read_prompts("everyday"), read_prompts("held_out")
    assert len(everyday) >= 200 and len(held_out) >= 40
    assert len(set(everyday)) == len(everyday) and not set(everyday) & set(held_out)  # evaluation never trained on
    tokenizer = _clip_tokenizer(REHEARSAL_DIR / "nota-ai--bk-sdm-tiny")
    assert max(len(tokenizer(p).input_ids) for p in everyday + held_out) <= tokenizer.model_max_length


def test_read_prompts_skips_blanks_and_comments_and_refuses_an_empty_file(tmp_path):
    (tmp_path / "p.txt").write_text("# course prompts\na red circle\n\n  a blue square  \n")
    assert read_prompts(tmp_path / "p.txt") == ["a red circle", "a blue square"]
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="empty.txt holds no prompts; write one prompt per line"):
        read_prompts(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="prompt file .*missing.txt does not exist"):
        read_prompts(tmp_path / "missing.txt")


def test_generation_writes_an_image_caption_folder_with_its_settings(tmp_path, teacher):
    prompts = shapes_prompts(6, seed=5)
    folder = generate(teacher, prompts, tmp_path / "data", **SETTINGS)
    recorded = json.loads((folder / "generation.json").read_text())
    assert recorded["teacher"] == "miniature" and recorded["num_inference_steps"] == 2 and recorded["seed"] == 5
    assert recorded["prompts"] == 6 and recorded["resolution"] == 32
    data = ImageCaptionFolder(folder, 32, teacher.tokenizer)
    assert [caption for _, caption in data.items] == prompts
    images, captions = data.batch(0, 6, seed=0)
    assert images.shape == (6, 3, 32, 32) and sorted(captions) == sorted(prompts)


def test_an_interrupted_generation_resumes_to_exactly_the_uninterrupted_images(tmp_path, teacher, monkeypatch):
    prompts = shapes_prompts(10, seed=5)
    whole = generate(teacher, prompts, tmp_path / "whole", **SETTINGS)
    original, saved = generation._save, []

    def disk_fills_at_the_seventh_image(image, path):
        if len(saved) == 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(path)
        original(image, path)

    monkeypatch.setattr(generation, "_save", disk_fills_at_the_seventh_image)
    with pytest.raises(OSError, match="the disk is full: 4 of 10 images are kept in .*; free some space and run "
                                      "the same command again"):
        generate(teacher, prompts, tmp_path / "cut", **SETTINGS)
    assert len((tmp_path / "cut" / "metadata.jsonl").read_text().splitlines()) == 4  # whole batches only
    with open(tmp_path / "cut" / "metadata.jsonl", "a") as metadata:
        metadata.write('{"file_name": "000004.png", "te')  # a line the full disk cut short
    monkeypatch.setattr(generation, "_save", original)
    cut = generate(teacher, prompts, tmp_path / "cut", **SETTINGS)
    assert (cut / "metadata.jsonl").read_text() == (whole / "metadata.jsonl").read_text()
    for i in range(10):  # image i depends on (seed, i) alone: a resumed run repeats the uninterrupted one
        assert (cut / f"{i:06d}.png").read_bytes() == (whole / f"{i:06d}.png").read_bytes(), i
    assert not list(cut.glob("*.partial"))


def test_a_folder_made_by_another_teacher_or_settings_is_refused(tmp_path, teacher):
    prompts = shapes_prompts(2, seed=5)
    generate(teacher, prompts, tmp_path / "data", **SETTINGS)
    with pytest.raises(ValueError, match="holds images generated with other settings \\(teacher 'miniature' there, "
                                         "'runs/other' now; num_inference_steps 2 there, 4 now\\); choose another"):
        generate(teacher, prompts, tmp_path / "data", **(SETTINGS | {"teacher": "runs/other", "num_inference_steps": 4}))
    with pytest.raises(ValueError, match="prompts_sha256"):
        generate(teacher, shapes_prompts(2, seed=6), tmp_path / "data", **SETTINGS)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.png").write_bytes(b"")
    with pytest.raises(ValueError, match="mine is not empty and has no generation.json; generate into an empty"):
        generate(teacher, prompts, tmp_path / "mine", **SETTINGS)


def test_a_prompt_longer_than_the_tokenizer_allows_is_refused_before_any_image():
    tokenizer = _clip_tokenizer(REHEARSAL_DIR / "nota-ai--bk-sdm-tiny")
    pipe = SimpleNamespace(tokenizer=tokenizer)  # refused before the pipeline is used at all
    with pytest.raises(ValueError, match="is 81 tokens but the tokenizer allows 77; shorten it"):
        generate(pipe, ["a photo", "very " * 79], "unused", teacher="t")


@pytest.mark.parametrize("prompts, change, message", [
    ("a red circle", {}, r"prompts must be a list of prompts, got the string 'a red circle'; pass \['a red circle'\]"),
    (["a red circle"], {"guidance_scale": float("nan")}, "guidance_scale must be a finite number .* got nan"),
    (["a red circle"], {"guidance_scale": 0.5}, "guidance_scale must be a finite number of at least 1 .* got 0.5"),
    (["a red circle"], {"resolution": 30}, "resolution 30 is not a positive multiple of the VAE's downsampling"),
    (["a red circle"], {"resolution": 0}, "resolution 0 is not a positive multiple"),
])
def test_a_refused_generation_leaves_its_folder_untouched(tmp_path, teacher, prompts, change, message):
    with pytest.raises((TypeError, ValueError), match=message):
        generate(teacher, prompts, tmp_path / "data", **(SETTINGS | change))
    assert not (tmp_path / "data").exists(), "nothing is written before the run is known to be valid"


def test_the_command_line_refuses_an_empty_prompt_file_in_one_line(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    result = subprocess.run([sys.executable, "-m", "addlib.generate", "--prompts", str(tmp_path / "empty.txt"),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: prompt file {tmp_path / 'empty.txt'} holds no prompts; write one "
        f"prompt per line"]


def test_a_binary_prompt_file_and_a_file_for_a_folder_are_refused_in_one_line(tmp_path, teacher):
    (tmp_path / "prompts.bin").write_bytes(bytes(range(128, 256)))
    with pytest.raises(ValueError, match="prompt file .*prompts.bin is not UTF-8 text; write one prompt per line"):
        read_prompts(tmp_path / "prompts.bin")
    (tmp_path / "taken").write_text("")
    with pytest.raises(ValueError, match="out .*taken is a file; give a folder"):
        generate(teacher, ["a red circle"], tmp_path / "taken", **SETTINGS)


def test_add_trains_on_the_teachers_images_generated_once_and_shared(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the cache goes to ./runs/generated
    config = Config(steps=1, batch_size=4, dataset="teacher", num_prompts=8, generation_steps=2)
    trainer = ADDTrainer.from_config(config, Accelerator())
    [folder] = (tmp_path / "runs" / "generated").iterdir()
    assert folder.name.startswith("miniature-") and len(list(folder.glob("*.png"))) == 8
    assert json.loads((folder / "generation.json").read_text())["guidance_scale"] == config.teacher_guidance_scale
    trainer.step(0)
    ADDTrainer.from_config(Config(steps=1, batch_size=4, dataset="teacher", num_prompts=8, generation_steps=2,
                      distillation_weight=0), Accelerator())  # another loss, the same data: no second folder
    assert len(list((tmp_path / "runs" / "generated").iterdir())) == 1


def _hub_dataset(folder, images, captions, image_column="image", caption_column="text"):
    """A 🤗 dataset saved with save_to_disk, as a learner's own data would be."""
    import datasets
    from PIL import Image

    pillow = [Image.fromarray(((image.permute(1, 2, 0) + 1) * 127.5).byte().numpy()) for image in images]
    data = datasets.Dataset.from_dict({image_column: pillow, caption_column: captions, "id": list(range(len(captions)))},
                                      features=datasets.Features({image_column: datasets.Image(),
                                                                  caption_column: datasets.Value("string"),
                                                                  "id": datasets.Value("int64")}))
    data.save_to_disk(str(folder))
    return folder


def test_a_hub_dataset_with_named_columns_trains_like_an_image_folder(tmp_path):
    from addlib.shapes import make_shapes

    images, captions, _ = make_shapes(5, seed=4, resolution=48)
    _hub_dataset(tmp_path / "hf", images, captions, "picture", "caption")
    data = HubImageCaptions(str(tmp_path / "hf"), 32, build_tokenizer(), "picture", "caption")
    assert len(data) == 5 and data[2]["caption"] == captions[2]
    assert data[2]["pixel_values"].shape == (3, 32, 32)
    torch.testing.assert_close(data[2]["pixel_values"], torch.nn.functional.interpolate(
        images[2:3], size=32, mode="bicubic", antialias=True)[0], atol=0.1, rtol=0)  # the same picture, resized
    config = Config(steps=1, batch_size=2, dataset=f"hf:{tmp_path / 'hf'}", image_column="picture",
                    caption_column="caption")
    trainer = ADDTrainer.from_config(config, Accelerator())
    batch, batch_captions = trainer.batch(0)
    assert batch.shape == (2, 3, 32, 32) and set(batch_captions) <= set(captions)
    trainer.step(0)


def test_a_hub_dataset_without_the_named_column_or_with_a_bad_image_is_refused(tmp_path):
    from addlib.shapes import make_shapes

    images, captions, _ = make_shapes(2, seed=4)
    folder = _hub_dataset(tmp_path / "hf", images, captions)
    with pytest.raises(ValueError, match="has no column 'caption'; its columns are image, text, id: name its "
                                         "caption column with --caption-column"):
        open_dataset(f"hf:{folder}", 32, build_tokenizer(), caption_column="caption")
    import datasets

    broken = datasets.load_from_disk(str(folder)).cast_column("image", datasets.Image(decode=False))
    broken = broken.map(lambda row, i: {"image": {"bytes": b"not an image" if i == 1 else row["image"]["bytes"],
                                                  "path": None}}, with_indices=True)
    broken.cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "broken"))
    data = open_dataset(f"hf:{tmp_path / 'broken'}", 32, build_tokenizer())
    assert data[0]["pixel_values"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="row 1: its 'image' is not an image Pillow can read .*; remove the row"):
        data[1]


def test_a_hub_dataset_id_offline_is_one_line():
    with pytest.raises(ValueError, match="could not load the dataset 'someone/no-such-dataset' .*check the id and "
                                         "the connection, or give a folder saved with save_to_disk"):
        open_dataset("hf:someone/no-such-dataset", 32, build_tokenizer())
