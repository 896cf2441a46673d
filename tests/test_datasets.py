"""Your own images in: pixels in [-1, 1] from files and back to 0-255, frames of a clip, refusals in one line.
(Image-caption folders and Hugging Face datasets are tested where they train: test_train_add, test_generate.)"""

import numpy as np
import pytest
import torch
from PIL import Image

from addlib.datasets import image_sequence, load_image, to_pixels, to_uint8


def test_pixels_and_uint8_are_each_others_inverse():
    array = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    pixels = to_pixels(Image.fromarray(array), 8)
    assert pixels.shape == (3, 8, 8) and -1 <= pixels.min() and pixels.max() <= 1
    assert torch.equal(to_uint8(pixels[None])[0].permute(1, 2, 0), torch.from_numpy(array))


def test_the_short_side_is_resized_and_the_centre_cropped():
    wide = np.zeros((4, 12, 3), dtype=np.uint8)
    wide[:, 4:8] = 255  # a white band in the middle third
    pixels = to_pixels(Image.fromarray(wide), 4)
    assert pixels.shape == (3, 4, 4) and pixels.min() > 0.9, "the crop keeps the centre, all white"


def test_a_clips_frames_load_in_file_name_order(tmp_path):
    for index, value in [(2, 200), (0, 0), (1, 100)]:
        Image.new("RGB", (6, 6), (value,) * 3).save(tmp_path / f"{index:05d}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    frames = image_sequence(tmp_path, 4)
    assert frames.shape == (3, 3, 4, 4)
    assert to_uint8(frames)[:, 0, 0, 0].tolist() == [0, 100, 200]


def test_bad_files_and_folders_are_refused_in_one_line(tmp_path):
    (tmp_path / "broken.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"broken.png is not an image Pillow can read \(.*\); remove it"):
        load_image(tmp_path / "broken.png", 8)
    with pytest.raises(FileNotFoundError, match="is not a folder; export a clip's frames into one first"):
        image_sequence(tmp_path / "broken.png", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no images \(.*\) in .*empty"):
        image_sequence(tmp_path / "empty", 8)
