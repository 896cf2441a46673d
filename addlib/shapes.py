"""The captioned-shapes world: the procedural images and captions the course's miniature Stable Diffusion learns.

Every image is one coloured shape of some size at some position on a coloured background, and comes with a
caption written from a fixed template and with the attribute labels it was drawn from::

    "a small red circle at the top left on a blue background"   labels = (shape, color, size, position, background)
    "a red circle on a blue background"                         the same image, as make_shapes captions it

Like real captions, ``make_shapes``' captions leave things out: each attribute but the shape is left out
with probability ``OMIT_PROB``. This matters for the whole course. A prompt that leaves many images possible
is what one-step sampling finds hard: a single denoising step predicts the *average* of those images, a blur
of every colour and place the prompt allows, and that blur is what adversarial distillation removes.

That is enough to make text-to-image generation a real task (the caption decides what must appear) while
staying small enough to train on a laptop. It also makes quality measurable: an attribute classifier reads
the five attributes back from a generated image, and :func:`parse_caption` says which attributes a prompt
asked for, so "prompt accuracy" is a number rather than an opinion.

Two design choices matter to the rest of the course:

- **Counter-based randomness.** Image ``i`` of seed ``s`` depends only on ``(s, i)``: its random draws are a
  hash of the two, not the next numbers of a generator that earlier images advanced. So a dataset of any size
  can render any item on demand (:class:`ShapesDataset`), the first 100 images of a 10,000-image set are the
  100-image set, and ``start=`` picks out disjoint train and held-out ranges of one seed.
- **Signed-distance rendering.** Each pixel's coverage is ``clamp(0.5 - d, 0, 1)``, ``d`` the signed distance
  in pixels from the pixel centre to the shape's edge. Edges come out anti-aliased at native resolution with no
  supersampling, and the whole batch renders as a handful of tensor operations.

Images follow diffusers' ``pixel_values`` convention: float32, shape (N, 3, H, W), values in [-1, 1].
"""

from __future__ import annotations

import math
import operator
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

# Every shapes seed the course draws from, given out once, so that no measurement sees an image a model trained on.
SEEDS = {
    "teacher": 0,  # the teacher's training images (train_teacher)
    "evaluators": 1,  # the attribute classifier's and the TinyViT's (train_evaluators)
    "add": 2,  # ADD's real images, and the captions its teacher-generated data is made from (train_add)
    "tiny_vae": 3,  # the tiny VAE's (train_tiny_vae)
    "reference": 7,  # the benchmarks' prompts and FID's real images (metrics, bench)
    "second_reference": 8,  # a second, independent prompt set, to choose between runs without tuning on the first
    "held_out": 9,  # one-off measurements of the networks themselves (notebook 05's blind-spot count)
}
SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}
# The shape colours come last so that background index 3 + c is shape colour c (see _draw_scenes).
BACKGROUNDS = {"black": (20, 20, 20), "gray": (128, 128, 128), "white": (240, 240, 240), **COLORS}
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
# Normalised (x, y) image coordinates, y pointing down as in the image array.
POSITION_CENTERS = {
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
    "center": (0.5, 0.5),
}
# The order of this dict is the order of the label vector.
ATTRIBUTES = {
    "shape": SHAPES,
    "color": tuple(COLORS),
    "size": SIZES,
    "position": POSITIONS,
    "background": tuple(BACKGROUNDS),
}

_POSITION_PHRASES = {position: f"at the {position}" for position in POSITIONS} | {"center": "in the center"}
_TEMPLATE_WORDS = ("a", "an", "at", "the", "in", "on", "background")
_ATTRIBUTE_WORDS = {word for values in ATTRIBUTES.values() for value in values for word in value.split()}
VOCABULARY = tuple(sorted({*_TEMPLATE_WORDS, *_ATTRIBUTE_WORDS}))  # every word a caption can hold

# Geometry, in normalised image units (the image is the unit square).
BASE_RADIUS = {"small": 0.12, "large": 0.22}
CENTER_JITTER = 0.03
RADIUS_JITTER = 0.10  # relative
COLOR_JITTER = 12  # per RGB channel, in 0..255
SQUARE_HALF_SIDE = math.sqrt(math.pi) / 2  # 0.886 r: a square of the circle's area
TRIANGLE_CIRCUMRADIUS = 1.25  # times r

MIN_RESOLUTION, MAX_RESOLUTION = 16, 512
_CHUNK = 2048  # images rendered at once: bounds memory to a few (2048, H, W) float32 tensors


# --- Counter-based randomness -------------------------------------------------------------------------------

_NUM_DRAWS = 14  # shape, color, size, position, background, radius, x, y, 3 shape channels, 3 background channels
_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_CAPTION_STREAM = 1  # the draws that leave attributes out of captions, apart from those that draw the image
OMIT_PROB = 0.5  # the chance that a caption leaves out each attribute but the shape


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele, Lea & Flood, 2014): a bijection of uint64 whose outputs look random."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)  # uint64 arrays wrap around, as intended
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniforms(seed: int, indices: np.ndarray, stream: int = 0) -> np.ndarray:
    """Uniform float64s in [0, 1), shape (N, _NUM_DRAWS): the random draws of images ``indices`` under ``seed``.

    This is SplitMix64 itself, jumped straight to step ``index * _NUM_DRAWS + draw`` of the sequence that
    starts at ``splitmix64(seed)``; a hash of a counter, so any image's draws cost the same to reach. Another
    ``stream`` gives independent draws for the same images.
    """
    key = _splitmix64(np.array([seed], dtype=np.uint64) ^ np.array([stream], dtype=np.uint64) * _GOLDEN_GAMMA)
    counters = indices.astype(np.uint64)[:, None] * np.uint64(_NUM_DRAWS) + np.arange(_NUM_DRAWS, dtype=np.uint64)
    bits = _splitmix64(counters * _GOLDEN_GAMMA + key)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53  # the top 53 bits fill a double's mantissa


# --- Drawing scenes -----------------------------------------------------------------------------------------


class _Scenes(NamedTuple):
    labels: torch.Tensor  # (N, 5) int64, indices into ATTRIBUTES' values
    centers: torch.Tensor  # (N, 2) float32, normalised (x, y)
    radii: torch.Tensor  # (N,) float32, normalised
    colors: torch.Tensor  # (N, 3) float32 in [-1, 1]
    backgrounds: torch.Tensor  # (N, 3) float32 in [-1, 1]


def _pick(u: np.ndarray, num_choices: int) -> np.ndarray:
    """Uniform choice among ``num_choices`` values from uniform floats ``u``."""
    return (u * num_choices).astype(np.int64)


def _jitter(u: np.ndarray, amplitude: float) -> np.ndarray:
    """Uniform offsets in [-amplitude, amplitude) from uniform floats ``u``."""
    return (2 * u - 1) * amplitude


def _jitter_rgb(rgb: np.ndarray, u: np.ndarray) -> torch.Tensor:
    """``rgb`` (N, 3) in 0..255 with each channel moved by a whole number in +-COLOR_JITTER, scaled to [-1, 1]."""
    rgb = np.clip(rgb + _pick(u, 2 * COLOR_JITTER + 1) - COLOR_JITTER, 0, 255)
    return torch.from_numpy(rgb / 127.5 - 1).float()


def _draw_scenes(seed: int, start: int, num_images: int) -> _Scenes:
    """The attributes and jittered geometry of images ``start .. start + num_images - 1``."""
    u = _uniforms(seed, np.arange(start, start + num_images, dtype=np.uint64))
    u_shape, u_color, u_size, u_position, u_background, u_radius = u[:, :6].T
    shape = _pick(u_shape, len(SHAPES))
    color = _pick(u_color, len(COLORS))
    size = _pick(u_size, len(SIZES))
    position = _pick(u_position, len(POSITIONS))
    # Choose among the 8 backgrounds left once the shape's own colour (background 3 + color) is skipped.
    background = _pick(u_background, len(BACKGROUNDS) - 1)
    background += background >= 3 + color

    centers = np.array([POSITION_CENTERS[p] for p in POSITIONS])[position]  # (N, 2)
    centers += _jitter(u[:, 6:8], CENTER_JITTER)
    radii = np.array([BASE_RADIUS[s] for s in SIZES])[size] * (1 + _jitter(u_radius, RADIUS_JITTER))
    return _Scenes(
        labels=torch.from_numpy(np.stack([shape, color, size, position, background], axis=1)),
        centers=torch.from_numpy(centers).float(),
        radii=torch.from_numpy(radii).float(),
        colors=_jitter_rgb(np.array(list(COLORS.values()))[color], u[:, 8:11]),
        backgrounds=_jitter_rgb(np.array(list(BACKGROUNDS.values()))[background], u[:, 11:14]),
    )


# --- Rendering ----------------------------------------------------------------------------------------------
# Signed distances from pixel centres to a shape's edge, negative inside. dx is (n, 1, W) and dy (n, H, 1), the
# offsets of the pixel centres from the shape's centre; r is (n, 1, 1). They broadcast to (n, H, W).


def _circle_distance(dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(dx**2 + dy**2) - r


def _square_distance(dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    # The L-inf distance: exact inside and along the sides, short of the Euclidean one only off the corners.
    return torch.maximum(dx.abs(), dy.abs()) - SQUARE_HALF_SIDE * r


def _triangle_distance(dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    # An upward equilateral triangle is the intersection of three half-planes n_k . p <= R / 2 (its inradius is
    # half its circumradius R), with outward normals (0, 1) (the base; y is down) and (+-sqrt(3)/2, -1/2).
    # Mirror symmetry folds the two slanted edges into one with |dx|.
    slanted = math.sqrt(3) / 2 * dx.abs() - dy / 2
    return torch.maximum(dy.expand_as(slanted), slanted) - TRIANGLE_CIRCUMRADIUS / 2 * r


_SIGNED_DISTANCES = (_circle_distance, _square_distance, _triangle_distance)  # in SHAPES order


def _render(scenes: _Scenes, resolution: int, outline: Callable | None = None) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] of ``scenes``, anti-aliased by signed-distance coverage.

    Each scene's shape is its label's (``_SIGNED_DISTANCES``) unless ``outline(chunk, dx, dy, r)`` gives the
    signed distances (n, H, W) of the scenes in slice ``chunk``, as :func:`make_malformed` draws its not-shapes.
    """
    num_images = len(scenes.labels)
    images = torch.empty(num_images, 3, resolution, resolution)
    pixel_centers = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution
    for lo in range(0, num_images, _CHUNK):
        chunk = slice(lo, lo + _CHUNK)
        shape = scenes.labels[chunk, 0]
        centers, radii = scenes.centers[chunk], scenes.radii[chunk, None, None]
        dx = pixel_centers[None, None, :] - centers[:, 0, None, None]  # (n, 1, W)
        dy = pixel_centers[None, :, None] - centers[:, 1, None, None]  # (n, H, 1)
        if outline is not None:
            distance = outline(chunk, dx, dy, radii)
        else:
            distance = torch.empty(len(shape), resolution, resolution)  # (n, H, W)
            for k, signed_distance in enumerate(_SIGNED_DISTANCES):
                mine = shape == k
                distance[mine] = signed_distance(dx[mine], dy[mine], radii[mine])
        coverage = (0.5 - distance * resolution).clamp(0, 1)[:, None]  # (n, 1, H, W); distance now in pixels
        background = scenes.backgrounds[chunk, :, None, None]  # (n, 3, 1, 1)
        color = scenes.colors[chunk, :, None, None]
        # Written straight into the output: a (n, 3, H, W) temporary would cost as much as the rendering.
        torch.addcmul(background, coverage, color - background, out=images[chunk])
    return images


# --- Public API ---------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_index(value: int, name: str) -> int:
    """``value`` as a non-negative int below 2**64 (what the hash can take), else a ValueError naming it."""
    if not (_is_int(value) and 0 <= value < 2**64):
        raise ValueError(f"{name} must be a non-negative int below 2**64, got {value!r}")
    return int(value)


def _check_resolution(resolution: int) -> int:
    if not (_is_int(resolution) and MIN_RESOLUTION <= resolution <= MAX_RESOLUTION):
        raise ValueError(
            f"resolution must be an int from {MIN_RESOLUTION} to {MAX_RESOLUTION} (32 and 64 are the course's), "
            f"got {resolution!r}"
        )
    return int(resolution)


def make_shapes(
    num_images: int, seed: int = 0, resolution: int = 32, *, start: int = 0, omit_prob: float = OMIT_PROB
) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Images ``start .. start + num_images - 1`` of the shapes world under ``seed``.

    Returns ``(images, captions, labels)``: images (N, 3, resolution, resolution) float32 in [-1, 1],
    their N captions, and labels (N, 5) int64, each row the indices of the image's values in ``ATTRIBUTES``
    (shape, color, size, position, background). Each caption leaves out each attribute but the shape with
    probability ``omit_prob`` (0 names all five); the labels always hold all five. Image ``i`` depends only on
    ``(seed, i)``, so ``make_shapes(100, seed)`` is the first 100 images of ``make_shapes(10_000, seed)``.
    """
    num_images = _check_index(num_images, "num_images")
    seed = _check_index(seed, "seed")
    start = _check_index(start, "start")
    resolution = _check_resolution(resolution)
    if start + num_images > 2**64:
        raise ValueError(f"start + num_images must be at most 2**64, got {start + num_images}")
    if not 0 <= omit_prob <= 1:
        raise ValueError(f"omit_prob must be a probability in [0, 1], got {omit_prob!r}")
    scenes = _draw_scenes(seed, start, num_images)
    # One draw per attribute; the shape's is ignored, so every caption names a noun.
    u = _uniforms(seed, np.arange(start, start + num_images, dtype=np.uint64), _CAPTION_STREAM)
    named = (u[:, : len(ATTRIBUTES)] >= omit_prob).tolist()
    captions = [
        caption({name: value for (name, value), keep in zip(labels_to_attributes(row).items(), mask)
                 if keep or name == "shape"})
        for row, mask in zip(scenes.labels.tolist(), named)
    ]
    return _render(scenes, resolution), captions, scenes.labels


class ShapesDataset(torch.utils.data.Dataset):
    """``num_images`` shapes-world images under ``seed``, rendered on demand, one per item.

    Item ``i`` is image ``start + i`` of :func:`make_shapes` with the same seed and resolution, as a dict in
    diffusers' training-script layout: ``{"pixel_values": (3, H, W) float32 in [-1, 1], "caption": str,
    "labels": (5,) int64}``. Nothing is stored, so a million-image dataset costs no memory; ``start`` gives
    a held-out set disjoint from a training set of the same seed, e.g. ``ShapesDataset(1000, start=10**6)``.
    """

    def __init__(self, num_images: int, seed: int = 0, resolution: int = 32, *, start: int = 0) -> None:
        self.num_images = _check_index(num_images, "num_images")
        self.seed = _check_index(seed, "seed")
        self.resolution = _check_resolution(resolution)
        self.start = _check_index(start, "start")

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        index = operator.index(index)
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index {index} out of range for a ShapesDataset of {self.num_images} images")
        index %= self.num_images  # negative indices count from the end, as for lists
        images, captions, labels = make_shapes(1, self.seed, self.resolution, start=self.start + index)
        return {"pixel_values": images[0], "caption": captions[0], "labels": labels[0]}


MOTION_RADIUS = 0.2  # of moving_shapes' circular path, in image widths: a large shape stays in the frame


def moving_shapes(num_frames: int, seed: int = 0, resolution: int = 32, *, index: int = 0, period: int = 48,
                  hold: int = 1) -> tuple[torch.Tensor, str]:
    """A synthetic video for streaming (notebook 07): scene ``index`` of :func:`make_shapes` under ``seed``, its
    shape circling the image centre once every ``period`` frames.

    Returns the frames (num_frames, 3, resolution, resolution) in [-1, 1] and the scene's caption without a
    position (the shape moves). With ``hold`` > 1 the shape moves only every ``hold``-th frame, so a fraction
    1 - 1/hold of the frames repeat the one before: a mostly static clip, the similarity filter's case.
    """
    num_frames = _check_index(num_frames, "num_frames")
    resolution = _check_resolution(resolution)
    if not (_is_int(period) and period >= 1 and _is_int(hold) and hold >= 1):
        raise ValueError(f"period and hold must be positive ints (frames), got {period!r} and {hold!r}")
    scene = _draw_scenes(_check_index(seed, "seed"), _check_index(index, "index"), 1)
    phase = 2 * math.pi * (torch.arange(num_frames) // hold * hold) / period
    centers = 0.5 + MOTION_RADIUS * torch.stack([phase.cos(), phase.sin()], dim=1)
    frames = _render(_Scenes(scene.labels.expand(num_frames, -1), centers.float(), scene.radii.expand(num_frames),
                             scene.colors.expand(num_frames, -1), scene.backgrounds.expand(num_frames, -1)), resolution)
    attributes = labels_to_attributes(scene.labels[0])
    del attributes["position"]
    return frames, caption(attributes)


def labels_to_attributes(labels: torch.Tensor | Sequence[int]) -> dict[str, str]:
    """The attribute dict of one label vector (5,), e.g. ``{"shape": "circle", "color": "red", ...}``."""
    labels = torch.as_tensor(labels).tolist()
    if len(labels) != len(ATTRIBUTES):
        raise ValueError(f"labels must hold {len(ATTRIBUTES)} indices ({', '.join(ATTRIBUTES)}), got {labels}")
    return {name: values[i] for (name, values), i in zip(ATTRIBUTES.items(), labels)}


def caption(attributes: dict[str, str]) -> str:
    """The template caption of an attribute dict: size, colour, shape, position phrase, background.

    E.g. ``"a large green square in the center on a black background"``, or ``"an orange circle"`` for
    ``{"shape": "circle", "color": "orange"}``: any attribute but the shape may be left out.
    :func:`parse_caption` is the inverse.
    """
    if "shape" not in attributes:
        raise ValueError(f"a caption needs a shape ({_CHOICES['shape']}); got only {attributes}")
    for name, value in attributes.items():
        if name not in ATTRIBUTES:
            raise ValueError(f"unknown attribute {name!r}; the attributes are {', '.join(ATTRIBUTES)}")
        if value not in ATTRIBUTES[name]:
            raise ValueError(f"unknown {name} {value!r}; choose one of {_CHOICES[name]}")
    words = [attributes.get("size"), attributes.get("color"), attributes["shape"],
             _POSITION_PHRASES.get(attributes.get("position"))]
    if "background" in attributes:
        words.append(f"on {_article(attributes['background'])} {attributes['background']} background")
    text = " ".join(word for word in words if word)
    return f"{_article(text)} {text}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"  # "an orange circle", "on an orange background"


# --- Parsing captions ---------------------------------------------------------------------------------------

_CHOICES = {name: ", ".join(values) for name, values in ATTRIBUTES.items()}
_POSITION_CHOICES = f"positions are {_CHOICES['position']}"
_ATTRIBUTE_NOUNS = {name: "shape colour" if name == "color" else name for name in ATTRIBUTES}  # for messages


def _unknown_word_hint(previous: str | None, following: str | None) -> str:
    """Which choices to list for an unknown word, guessed from the template slot its neighbours put it in."""
    if following == "background":
        return f"backgrounds are {_CHOICES['background']}"
    if following in COLORS:
        return f"sizes are {_CHOICES['size']}"
    if following in SHAPES:
        return f"sizes are {_CHOICES['size']}; shape colours are {_CHOICES['color']}"
    if previous in COLORS or previous in SIZES:
        return f"shapes are {_CHOICES['shape']}"
    if previous in ("the", "top", "bottom") or following in ("left", "right"):
        return _POSITION_CHOICES
    return f"the vocabulary is {' '.join(VOCABULARY)}"


def _name_once(attributes: dict[str, str], name: str, value: str, text: str) -> None:
    """Record ``attributes[name] = value``; a caption naming an attribute twice describes two shapes."""
    if name in attributes:
        raise ValueError(
            f"two {_ATTRIBUTE_NOUNS[name]}s ({attributes[name]!r}, {value!r}) in caption {text!r}; "
            f"a caption names at most one of {_CHOICES[name]}"
        )
    attributes[name] = value


def parse_caption(text: str) -> dict[str, str]:
    """The attributes a caption names, e.g. ``"a red circle"`` -> ``{"shape": "circle", "color": "red"}``.

    The inverse of :func:`caption`, tolerant of case, extra spaces, a trailing full stop, left-out attributes
    and word order; prompt accuracy scores a generated image only on the attributes its prompt named. A colour
    word right before "background" is the background; any other colour word is the shape's colour. Raises a
    one-line ValueError naming the offending word and the valid choices for unknown words, background-only
    colours used for the shape, attributes named twice and incomplete positions ("top" without "left").
    """
    if not isinstance(text, str):
        raise TypeError(f"a caption must be a string, got {text!r}")
    words = text.strip().lower().removesuffix(".").split()
    neighbourhoods = list(zip([None, *words], words, [*words[1:], None]))  # (previous, word, following)
    for previous, word, following in neighbourhoods:
        if word not in VOCABULARY:
            hint = _unknown_word_hint(previous, following)
            raise ValueError(f"unknown word {word!r} in caption {text!r}; {hint}")

    attributes: dict[str, str] = {}
    for previous, word, following in neighbourhoods:
        if word in SHAPES:
            _name_once(attributes, "shape", word, text)
        elif word in SIZES:
            _name_once(attributes, "size", word, text)
        elif word in BACKGROUNDS and following == "background":
            _name_once(attributes, "background", word, text)
        elif word in COLORS:
            _name_once(attributes, "color", word, text)
        elif word in BACKGROUNDS:
            raise ValueError(
                f"{word!r} is only a background colour in {text!r}; shape colours are {_CHOICES['color']}"
            )
        elif word in ("top", "bottom"):
            if following not in ("left", "right"):
                raise ValueError(f"{word!r} needs 'left' or 'right' after it in {text!r}; {_POSITION_CHOICES}")
            _name_once(attributes, "position", f"{word} {following}", text)
        elif word in ("left", "right") and previous not in ("top", "bottom"):
            raise ValueError(f"{word!r} needs 'top' or 'bottom' before it in {text!r}; {_POSITION_CHOICES}")
        elif word == "center":
            _name_once(attributes, "position", word, text)
        elif word == "background" and previous not in BACKGROUNDS:
            raise ValueError(
                f"'background' needs a colour before it in {text!r}; backgrounds are {_CHOICES['background']}"
            )
    return {name: attributes[name] for name in ATTRIBUTES if name in attributes}
