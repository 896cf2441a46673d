"""Your own training data for ADD: image-caption folders, in the layout diffusers' training scripts read, and
Hugging Face ``datasets`` (a hub id or a folder saved with ``save_to_disk``); and image sequences, your own
video for streaming.

    my_data/
        metadata.jsonl       one line per image: {"file_name": "0001.png", "text": "a photo of a red bicycle"}
        0001.png
        ...

This is the ``imagefolder`` layout of Hugging Face ``datasets``, read here with Pillow alone. Images are
converted to RGB, resized so the short side is ``resolution`` and centre-cropped to a square, then scaled to
[-1, 1], as Stable Diffusion's training scripts do. Every caption is checked against the tokenizer when the
folder is opened, so a caption too long for the text encoder fails before training starts, naming its line.

A 🤗 dataset is read through the ``datasets`` library (``pip install datasets``), its image and caption columns
named by you (:class:`HubImageCaptions`); :func:`open_dataset` takes either kind by name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from addlib.miniature import check_prompts
from addlib.utils.errors import check_images


class ImageCaptions(torch.utils.data.Dataset):
    """Images with captions; item ``i`` is ``{"pixel_values": (3, R, R) in [-1, 1], "caption": str}``."""

    def batch(self, start: int, size: int, seed: int) -> tuple[torch.Tensor, list[str]]:
        """Items ``start .. start + size - 1`` of an endless stream of epochs, each a fresh shuffle under ``seed``:
        (images (size, 3, R, R), captions). Like ``make_shapes``' ``start``, it makes a resumed run exact."""
        items = []
        for position in range(start, start + size):
            epoch, index = divmod(position, len(self))
            order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
            items.append(self[int(order[index])])
        return torch.stack([item["pixel_values"] for item in items]), [item["caption"] for item in items]


class ImageCaptionFolder(ImageCaptions):
    """``folder``'s images and captions (the ``imagefolder`` layout above)."""

    def __init__(self, folder: str | Path, resolution: int, tokenizer) -> None:
        self.folder, self.resolution = Path(folder), resolution
        metadata = self.folder / "metadata.jsonl"
        if not metadata.exists():
            raise FileNotFoundError(f"{self.folder} has no metadata.jsonl; write one line per image, e.g. "
                                    f'{{"file_name": "0001.png", "text": "a red circle"}}')
        self.items = []
        for number, line in enumerate(metadata.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                file_name, text = entry["file_name"], entry["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{metadata} line {number} is not a JSON object with \"file_name\" and \"text\": "
                                 f"{line[:80]!r}") from None
            if not (self.folder / file_name).exists():
                raise FileNotFoundError(f"{metadata} line {number} names {file_name!r}, which is not in {self.folder}")
            check_image_file(self.folder / file_name)  # now, not when training first reaches it
            try:
                check_prompts(tokenizer, [text])
            except ValueError as error:
                raise ValueError(f"{metadata} line {number}: {error}") from None
            self.items.append((file_name, text))
        if not self.items:
            raise ValueError(f"{metadata} lists no images")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        file_name, text = self.items[index]
        return {"pixel_values": load_image(self.folder / file_name, self.resolution), "caption": text}


def _unreadable(path: Path, error: Exception) -> ValueError:
    return ValueError(f"{path} is not an image Pillow can read ({error.__class__.__name__}); remove it or replace it")


def check_image_file(path: Path) -> None:
    """Refuse a file Pillow cannot read as an image, naming it (Pillow reads its header and checks it)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:  # Pillow raises OSError, SyntaxError or others for a damaged file
        raise _unreadable(path, error) from None


def load_image(path: str | Path, resolution: int) -> torch.Tensor:
    """The image at ``path`` as (3, R, R) in [-1, 1] (:func:`to_pixels`)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except Exception as error:  # as in check_image_file
        raise _unreadable(Path(path), error) from None
    return to_pixels(image, resolution)


def to_pixels(image, resolution: int) -> torch.Tensor:
    """A Pillow image as (3, R, R) in [-1, 1]: RGB, the short side resized to ``resolution``, the centre cropped
    to a square."""
    from PIL import Image

    image = image.convert("RGB")
    scale = resolution / min(image.size)
    width, height = max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - resolution) // 2, (height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1)
    return pixels.permute(2, 0, 1)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] as the 0-255 integers an image file holds: the inverse of
    :func:`to_pixels`, for saving images and for metrics that read them as files would."""
    check_images("images", images)
    return ((images.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


class HubImageCaptions(ImageCaptions):
    """A Hugging Face dataset's images and captions, ``split`` of a hub id (``load_dataset(name)``) or of a folder
    written by ``save_to_disk``, with the images in ``image_column`` (an ``Image`` feature or file paths) and the
    captions in ``caption_column``. Every caption is checked when it opens; an image when it is first read."""

    def __init__(self, name: str, resolution: int, tokenizer, image_column: str = "image",
                 caption_column: str = "text", split: str = "train") -> None:
        try:
            import datasets
        except ImportError as error:  # not installed, or a dependency of it broken (pyarrow without its NumPy)
            raise ImportError(f"a Hugging Face dataset needs the datasets library, which did not import ({error}); "
                              f"pip install -e \".[data]\"") from None
        self.name, self.resolution, self.image_column = name, resolution, image_column
        if Path(name, "dataset_dict.json").exists() or Path(name, "state.json").exists():
            data = datasets.load_from_disk(name)
        else:
            try:
                data = datasets.load_dataset(name)
            except Exception as error:  # offline, no such dataset, or no access: datasets raises many kinds
                raise ValueError(f"could not load the dataset {name!r} ({error.__class__.__name__}: "
                                 f"{str(error).splitlines()[0][:120]}); check the id and the connection, or give "
                                 f"a folder saved with save_to_disk") from None
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise ValueError(f"dataset {name!r} has no split {split!r}; its splits are {', '.join(data)}")
            data = data[split]
        for role, column in (("image", image_column), ("caption", caption_column)):
            if column not in data.column_names:
                raise ValueError(f"dataset {name!r} has no column {column!r}; its columns are "
                                 f"{', '.join(data.column_names)}: name its {role} column with --{role}-column")
        self.captions = data[caption_column]
        for row, caption in enumerate(self.captions):
            try:
                check_prompts(tokenizer, [caption])
            except (TypeError, ValueError) as error:
                raise ValueError(f"dataset {name!r} row {row}: {error}") from None
        if not self.captions:
            raise ValueError(f"dataset {name!r} has no rows")
        self.data = data

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict:
        caption = self.captions[index]
        try:
            image = self.data[index][self.image_column]
            if not isinstance(image, str):
                return {"pixel_values": to_pixels(image, self.resolution), "caption": caption}
        except Exception as error:  # a damaged image fails inside datasets' or Pillow's decoder
            raise ValueError(f"dataset {self.name!r} row {index}: its {self.image_column!r} is not an image Pillow "
                             f"can read ({error.__class__.__name__}); remove the row or replace the image") from None
        return {"pixel_values": load_image(image, self.resolution), "caption": caption}  # a path: it names itself


def open_dataset(name: str | Path, resolution: int, tokenizer, image_column: str = "image",
                 caption_column: str = "text") -> ImageCaptions:
    """``"hf:<id or saved folder>"`` as a :class:`HubImageCaptions`, anything else as an
    :class:`ImageCaptionFolder`."""
    name = str(name)
    if name.startswith("hf:"):
        return HubImageCaptions(name[3:], resolution, tokenizer, image_column, caption_column)
    return ImageCaptionFolder(name, resolution, tokenizer)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_sequence(folder: str | Path, resolution: int) -> torch.Tensor:
    """Every image in ``folder``, in file-name order, as video frames (N, 3, R, R) in [-1, 1] (a clip exported
    frame by frame, e.g. ``ffmpeg -i clip.mp4 frames/%05d.png``), for :class:`addlib.stream.StreamDiffusion`."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; export a clip's frames into one first")
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return torch.stack([load_image(path, resolution) for path in paths])
