"""The captioned-shapes world: determinism, rendering that shows the attributes, captions that parse back."""

import pytest
import torch

from addlib.shapes import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLORS,
    OMIT_PROB,
    POSITION_CENTERS,
    VOCABULARY,
    ShapesDataset,
    caption,
    labels_to_attributes,
    make_shapes,
    parse_caption,
)

N = 2000  # enough for every attribute value to appear; renders in well under a second


@pytest.fixture(scope="module")
def world():
    return make_shapes(N, seed=7)


def to_rgb(pixel_values: torch.Tensor) -> torch.Tensor:
    """[-1, 1] back to 0..255."""
    return (pixel_values + 1) * 127.5


# --- Determinism ---------------------------------------------------------------------------------------------


def test_same_seed_same_images_and_different_seed_different(world):
    images, captions, labels = world
    again, again_captions, again_labels = make_shapes(N, seed=7)
    assert torch.equal(images, again) and captions == again_captions and torch.equal(labels, again_labels)
    other, other_captions, _ = make_shapes(N, seed=8)
    assert (other != images).flatten(1).any(1).float().mean() > 0.99
    assert sum(a != b for a, b in zip(captions, other_captions)) > 0.9 * N


def test_prefix_stable_and_start_picks_out_a_range(world):
    images, captions, labels = world
    prefix, prefix_captions, prefix_labels = make_shapes(100, seed=7)
    assert torch.equal(prefix, images[:100]) and prefix_captions == captions[:100]
    assert torch.equal(prefix_labels, labels[:100])
    middle, middle_captions, middle_labels = make_shapes(50, seed=7, start=1234)
    assert torch.equal(middle, images[1234:1284]) and middle_captions == captions[1234:1284]
    assert torch.equal(middle_labels, labels[1234:1284])


def test_dataset_items_are_make_shapes_images(world):
    images, captions, labels = world
    dataset = ShapesDataset(N, seed=7)
    assert len(dataset) == N
    for i in (0, 1, 999, N - 1):
        item = dataset[i]
        assert set(item) == {"pixel_values", "caption", "labels"}
        assert torch.equal(item["pixel_values"], images[i])
        assert item["caption"] == captions[i] and torch.equal(item["labels"], labels[i])
    assert torch.equal(dataset[-1]["pixel_values"], images[-1])
    held_out = ShapesDataset(10, seed=7, start=1500)
    assert torch.equal(held_out[3]["pixel_values"], images[1503])
    for bad in (N, -N - 1):
        with pytest.raises(IndexError, match=str(bad)):
            dataset[bad]


def test_dataset_works_with_a_dataloader():
    batch = next(iter(torch.utils.data.DataLoader(ShapesDataset(10, seed=1), batch_size=4)))
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and len(batch["caption"]) == 4
    assert batch["labels"].shape == (4, 5)


# --- Images ----------------------------------------------------------------------------------------------------


def test_shape_dtype_and_range(world):
    images, captions, labels = world
    assert images.shape == (N, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert len(captions) == N
    assert labels.shape == (N, 5) and labels.dtype == torch.int64


def test_64_pixels_draws_the_same_scenes():
    images, captions, labels = make_shapes(20, seed=3, resolution=64)
    assert images.shape == (20, 3, 64, 64) and images.min() >= -1 and images.max() <= 1
    _, captions_32, labels_32 = make_shapes(20, seed=3)
    assert captions == captions_32 and torch.equal(labels, labels_32)


def test_empty_batch():
    images, captions, labels = make_shapes(0)
    assert images.shape == (0, 3, 32, 32) and captions == [] and labels.shape == (0, 5)


def test_every_attribute_value_appears(world):
    _, _, labels = world
    for column, values in enumerate(ATTRIBUTES.values()):
        counts = torch.bincount(labels[:, column], minlength=len(values))
        assert len(counts) == len(values) and (counts > 0).all()
        assert counts.min() > 0.5 * N / len(values), "draws should be roughly uniform"


def test_background_is_never_the_shape_colour(world):
    _, _, labels = world
    shape_color_names = [list(COLORS)[i] for i in labels[:, 1]]
    background_names = [list(BACKGROUNDS)[i] for i in labels[:, 4]]
    assert all(c != b for c, b in zip(shape_color_names, background_names))


def test_pixels_show_the_attributes(world):
    images, _, labels = world
    jitter = 12 + 0.5  # the colour jitter, plus float rounding
    for image, label in zip(images[:300], labels[:300]):
        attributes = labels_to_attributes(label)
        x, y = POSITION_CENTERS[attributes["position"]]
        inside = to_rgb(image[:, int(y * 32), int(x * 32)])
        assert (inside - torch.tensor(COLORS[attributes["color"]])).abs().max() <= jitter, attributes
        # The corner farthest from the shape (bottom right for a centred one) shows only the background.
        far_corner = to_rgb(image[:, 0 if y > 0.5 else -1, 0 if x > 0.5 else -1])
        assert (far_corner - torch.tensor(BACKGROUNDS[attributes["background"]])).abs().max() <= jitter, attributes


def test_large_shapes_cover_more_pixels(world):
    images, _, labels = world
    shape_rgb = torch.tensor(list(COLORS.values()), dtype=torch.float32)[labels[:, 1]]  # (N, 3)
    background_rgb = torch.tensor(list(BACKGROUNDS.values()), dtype=torch.float32)[labels[:, 4]]
    pixels = to_rgb(images)
    nearer_shape = (pixels - shape_rgb[:, :, None, None]).norm(dim=1) < (
        pixels - background_rgb[:, :, None, None]
    ).norm(dim=1)
    covered = nearer_shape.float().mean((1, 2))  # (N,)
    small, large = covered[labels[:, 2] == 0].mean(), covered[labels[:, 2] == 1].mean()
    assert 0.01 < small and 2 * small < large < 0.3


def test_triangles_point_up():
    images, _, labels = make_shapes(100, seed=11, resolution=64)
    image, label = images[labels[:, 0] == 2][0], labels[labels[:, 0] == 2][0]
    background = torch.tensor(BACKGROUNDS[labels_to_attributes(label)["background"]]) / 127.5 - 1
    shape_mask = (image - background[:, None, None]).abs().amax(0) > 0.2  # (H, W)
    widths = shape_mask.sum(1)[shape_mask.any(1)]  # shape pixels per row, top to bottom
    assert widths[0] < widths[-1] / 3, "an upward triangle is narrow at the top and wide at its base"


def test_pixels_blend_two_colours_and_edges_are_anti_aliased(world):
    images, _, labels = world
    for image, label in zip(images[:20], labels[:20]):
        x, y = POSITION_CENTERS[labels_to_attributes(label)["position"]]
        color = image[:, int(y * 32), int(x * 32), None, None]  # (3, 1, 1), fully covered
        background = image[:, 0 if y > 0.5 else -1, 0 if x > 0.5 else -1, None, None]
        # Project every pixel onto the segment background -> colour: the coordinate is the coverage.
        coverage = ((image - background) * (color - background)).sum(0) / (color - background).square().sum()
        blend = background + coverage * (color - background)
        assert torch.allclose(blend, image, atol=1e-5) and coverage.min() > -1e-5 and coverage.max() < 1 + 1e-5
        assert ((coverage > 0.05) & (coverage < 0.95)).any(), "edge pixels are partly covered"


# --- Captions ------------------------------------------------------------------------------------------------


def test_caption_template():
    attributes = dict(shape="square", color="green", size="large", position="center", background="black")
    assert caption(attributes) == "a large green square in the center on a black background"
    attributes = dict(shape="circle", color="red", size="small", position="top left", background="blue")
    assert caption(attributes) == "a small red circle at the top left on a blue background"
    with pytest.raises(ValueError, match="'pink'"):
        caption(attributes | {"color": "pink"})
    assert caption({"shape": "circle", "color": "orange"}) == "an orange circle"
    assert caption({"shape": "triangle", "background": "orange"}) == "a triangle on an orange background"
    with pytest.raises(ValueError, match="needs a shape"):
        caption({"color": "red"})


def test_captions_round_trip_through_parse_caption(world):
    _, captions, labels = world
    for text, label in zip(captions[:300], labels[:300]):
        named = parse_caption(text)
        assert "shape" in named and named.items() <= labels_to_attributes(label).items()
        assert caption(named) == text
        assert set(text.split()) <= set(VOCABULARY)


def test_captions_leave_attributes_out_at_omit_prob(world):
    images, captions, labels = world
    full_images, full_captions, full_labels = make_shapes(len(captions), seed=7, omit_prob=0)
    assert torch.equal(images, full_images) and torch.equal(labels, full_labels)  # only the captions change
    assert all(parse_caption(t) == labels_to_attributes(l) for t, l in zip(full_captions[:300], full_labels))
    named = [parse_caption(text) for text in captions]
    for name in ATTRIBUTES:
        share = sum(name in attributes for attributes in named) / len(named)
        assert share == 1 if name == "shape" else abs(share - (1 - OMIT_PROB)) < 0.03, (name, share)
    with pytest.raises(ValueError, match="omit_prob"):
        make_shapes(2, omit_prob=1.5)


def test_vocabulary_is_sorted_and_complete():
    assert list(VOCABULARY) == sorted(set(VOCABULARY))
    assert {"a", "an", "at", "the", "in", "on", "background", "top", "left", "center", "gray"} <= set(VOCABULARY)
    assert all(word in VOCABULARY for values in ATTRIBUTES.values() for value in values for word in value.split())


def test_partial_and_untidy_captions_parse():
    assert parse_caption("a red circle") == {"color": "red", "shape": "circle"}
    assert parse_caption("  A LARGE   Triangle.  ") == {"shape": "triangle", "size": "large"}
    expected = {"shape": "square", "color": "blue", "background": "red"}
    assert parse_caption("a blue square on a red background") == expected
    assert parse_caption("on a black background") == {"background": "black"}
    assert parse_caption("a circle at the bottom right") == {"shape": "circle", "position": "bottom right"}
    assert parse_caption("in the center") == {"position": "center"}
    assert parse_caption("") == {}


@pytest.mark.parametrize(
    "text, match",
    [
        ("a pink circle", r"unknown word 'pink' in caption 'a pink circle'; .*shape colours are red, green"),
        ("a red hexagon", r"unknown word 'hexagon'.*shapes are circle, square, triangle"),
        ("a red circle on a cyan background", r"unknown word 'cyan'.*backgrounds are black, gray, white"),
        ("a circle at the middle", r"unknown word 'middle'.*positions are top left"),
        ("a black circle", r"'black' is only a background colour in 'a black circle'; shape colours are red"),
        ("a circle and a square", r"unknown word 'and'"),
        ("a circle square", r"two shapes \('circle', 'square'\) in caption 'a circle square'"),
        ("a red blue circle", r"two shape colours \('red', 'blue'\)"),
        ("a small large circle", r"two sizes \('small', 'large'\)"),
        ("a circle at the top left in the center", r"two positions \('top left', 'center'\)"),
        ("on a red background on a blue background", r"two backgrounds \('red', 'blue'\)"),
        ("a circle at the top", r"'top' needs 'left' or 'right'.*positions are top left"),
        ("a circle at the left", r"'left' needs 'top' or 'bottom'"),
        ("a circle on a background", r"'background' needs a colour"),
    ],
)
def test_caption_errors_name_the_offending_word(text, match):
    with pytest.raises(ValueError, match=match) as error:
        parse_caption(text)
    assert "\n" not in str(error.value)


def test_a_caption_that_is_not_a_string_is_refused():
    with pytest.raises(TypeError, match=r"^a caption must be a string, got 3$"):
        parse_caption(3)


# --- Argument errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [8, 15, 513, 32.0, "32"])
def test_bad_resolution(resolution):
    with pytest.raises(ValueError, match=rf"resolution must be an int from 16 to 512.*{resolution!r}"):
        make_shapes(1, resolution=resolution)
    with pytest.raises(ValueError, match="resolution"):
        ShapesDataset(1, resolution=resolution)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, None, True])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match=rf"seed must be a non-negative int.*{seed!r}"):
        make_shapes(1, seed=seed)
    with pytest.raises(ValueError, match="seed"):
        ShapesDataset(1, seed=seed)


def test_bad_labels():
    with pytest.raises(ValueError, match="5 indices"):
        labels_to_attributes([0, 1, 2])


def test_captions_use_an_before_a_vowel():
    attributes = {"shape": "circle", "color": "red", "size": "small", "position": "center", "background": "orange"}
    assert caption(attributes) == "a small red circle in the center on an orange background"
    assert parse_caption(caption(attributes)) == attributes
