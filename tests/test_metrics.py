"""The Frechet distance matches closed forms; prompt accuracy counts exactly what the prompts named."""

import numpy as np
import pytest
import torch

from addlib.bench.metrics import (
    REFERENCE_SEED,
    count_shapes,
    feature_statistics,
    frechet_distance,
    prompt_accuracy,
    prompt_correct,
    real_images,
    shapes_fid,
)
from addlib.shapes import ATTRIBUTES, make_shapes


def random_psd(dim: int, generator: torch.Generator, rank: int | None = None) -> torch.Tensor:
    factor = torch.randn(dim, rank or dim, generator=generator, dtype=torch.float64)
    return factor @ factor.T


# --- frechet_distance ---------------------------------------------------------------------------------------


def test_identical_statistics_give_zero():
    generator = torch.Generator().manual_seed(0)
    mu, sigma = torch.randn(16, generator=generator), random_psd(16, generator)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-8)
    singular = random_psd(16, generator, rank=4)  # covariances of fewer samples than dimensions are singular
    assert frechet_distance(mu, singular, mu, singular) == pytest.approx(0, abs=1e-6)


def test_one_dimensional_gaussians_match_the_closed_form():
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2.
    for m1, s1, m2, s2 in [(0.0, 1.0, 0.0, 1.0), (1.0, 2.0, -0.5, 0.5), (3.0, 0.1, 3.0, 4.0)]:
        got = frechet_distance(np.array([m1]), np.array([[s1**2]]), np.array([m2]), np.array([[s2**2]]))
        assert got == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2, rel=1e-10, abs=1e-12)


def test_diagonal_covariances_match_the_closed_form():
    generator = torch.Generator().manual_seed(1)
    mu1, mu2 = (torch.randn(8, generator=generator, dtype=torch.float64) for _ in range(2))
    std1, std2 = (torch.rand(8, generator=generator, dtype=torch.float64) + 0.1 for _ in range(2))
    expected = ((mu1 - mu2) ** 2).sum() + ((std1 - std2) ** 2).sum()
    got = frechet_distance(mu1, torch.diag(std1**2), mu2, torch.diag(std2**2))
    assert got == pytest.approx(expected.item(), rel=1e-8)


def test_symmetric_and_non_negative_on_random_psd_matrices():
    generator = torch.Generator().manual_seed(2)
    for dim, rank in [(2, None), (10, None), (32, None), (32, 5)]:
        mu1, mu2 = torch.randn(dim, generator=generator), torch.randn(dim, generator=generator)
        s1, s2 = random_psd(dim, generator, rank), random_psd(dim, generator, rank)
        forward, backward = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
        assert forward >= 0 and forward == pytest.approx(backward, rel=1e-8)
        assert frechet_distance(mu1, s1, mu1, s2) >= 0  # the covariance term alone


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"sigma2 must have shape \(3, 3\)"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.eye(4))
    with pytest.raises(ValueError, match="mu1 is empty: statistics of 0-dimensional features"):  # not a 0.0
        frechet_distance(torch.zeros(0), torch.zeros(0, 0), torch.zeros(0), torch.zeros(0, 0))


def test_feature_statistics_and_fid_of_samples():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(5000, 4, generator=generator) * torch.tensor([1.0, 2.0, 3.0, 4.0]) + 1
    mu, sigma = feature_statistics(features)
    assert mu.dtype == sigma.dtype == torch.float64 and mu.shape == (4,) and sigma.shape == (4, 4)
    assert torch.allclose(mu, torch.ones(4, dtype=torch.float64), atol=0.1)
    assert torch.allclose(sigma.diagonal().sqrt(), torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64), rtol=0.05)
    with pytest.raises(ValueError, match=r"\(N, D\) with N >= 2"):
        feature_statistics(torch.zeros(1, 4))


# --- Metrics with a classifier ------------------------------------------------------------------------------


class FakeClassifier(torch.nn.Module):
    """Reads labels and features from the images: pixel [0, 0, k] holds attribute k's label / 10 (images stay in
    [-1, 1], as the metrics require), and pixel [1, -1, -1] at 0.5 says "none of these"."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a device to put inputs on

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return (images[:, 0, 0, : len(ATTRIBUTES)] * 10).round().long()

    def rejects(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, 1, -1, -1] == 0.5

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, 0, 0, :] * 10


def images_reading(labels: list[list[int]], shapes: list[int] | None = None,
                   refused: list[bool] | None = None) -> torch.Tensor:
    """Images the fake classifier reads as ``labels``, holding ``shapes`` white squares (1 each unless told) on
    black, and refused where ``refused`` says so."""
    images = torch.full((len(labels), 3, 32, 32), -1.0)
    images[:, 0, 0, : len(ATTRIBUTES)] = torch.tensor(labels, dtype=torch.float32) / 10
    for image, count in zip(images, shapes or [1] * len(labels)):
        for k in range(count):
            image[:, 4 + 10 * k: 10 + 10 * k, 12:18] = 1.0
    images[:, 1, -1, -1] = torch.tensor(refused or [False] * len(labels), dtype=torch.float32) * 0.5
    return images


def test_prompt_accuracy_counts_each_attribute_over_the_prompts_that_name_it():
    # Labels: shape (circle square triangle), color (red green blue yellow purple orange), size (small large),
    # position (top left, top right, bottom left, bottom right, center), background (black gray white + colors).
    read = [
        [0, 0, 0, 0, 0],  # small red circle at the top left on black
        [1, 1, 1, 4, 1],  # large green square in the center on gray
        [2, 2, 0, 1, 2],  # small blue triangle at the top right on white
        [0, 3, 1, 2, 3],  # large yellow circle at the bottom left on a red background
    ]
    prompts = [
        "a small red circle at the top left on a black background",  # all 5 right
        "a large green triangle in the center on a white background",  # shape and background wrong
        "a blue triangle",  # partial: shape and colour, both right
        "a small circle",  # partial: shape right, size wrong
    ]
    accuracy = prompt_accuracy(images_reading(read), prompts, FakeClassifier(), batch_size=3)
    assert accuracy == {
        "shape": 3 / 4,  # named by all four; wrong for the second
        "color": 3 / 3,  # named by the first three
        "size": 2 / 3,  # named by 1, 2 and 4; wrong for the fourth
        "position": 2 / 2,
        "background": 1 / 2,
        "joint": 2 / 4,  # the first and the third
        "closed-world joint": 2 / 4,
        "none of these": 0.0,
        "several shapes": 0.0,
    }


def test_prompt_correct_marks_the_images_the_joint_accuracy_counts():
    read = [[0, 0, 0, 0, 0], [1, 1, 1, 4, 1], [2, 2, 0, 1, 2], [0, 3, 1, 2, 3]]
    prompts = ["a small red circle at the top left on a black background",
               "a large green triangle in the center on a white background", "a blue triangle", "a small circle"]
    correct = prompt_correct(images_reading(read), prompts, FakeClassifier())
    assert correct.tolist() == [True, False, True, False]
    beside_a_second = prompt_correct(images_reading([[0, 0, 0, 0, 0]] * 2, shapes=[1, 2]), ["a red circle"] * 2,
                                     FakeClassifier())
    assert beside_a_second.tolist() == [True, False]


def test_prompt_accuracy_leaves_out_attributes_no_prompt_names():
    accuracy = prompt_accuracy(images_reading([[0, 0, 0, 0, 0], [1, 0, 0, 0, 0]]), ["a circle", "a circle"],
                               FakeClassifier())
    assert accuracy == {"shape": 0.5, "joint": 0.5, "closed-world joint": 0.5, "none of these": 0.0,
                        "several shapes": 0.0}


def test_prompt_accuracy_counts_a_shape_only_where_the_image_holds_exactly_one():
    """Four red circles the classifier reads right: one alone, one beside a second shape, one it calls "none of
    these" (a star, say), one too faint to stand out. Only the first shows what was asked."""
    images = images_reading([[0, 0, 0, 0, 0]] * 4, shapes=[1, 2, 1, 0], refused=[False, False, True, False])
    accuracy = prompt_accuracy(images, ["a red circle"] * 4, FakeClassifier())
    assert accuracy == {"shape": 1 / 4, "color": 1.0, "joint": 1 / 4, "closed-world joint": 1.0,
                        "none of these": 1 / 4, "several shapes": 1 / 4}


def test_prompt_accuracy_rejects_a_length_mismatch_and_bad_prompts():
    with pytest.raises(ValueError, match="got 2 images but 3 prompts"):
        prompt_accuracy(images_reading([[0] * 5] * 2), ["a circle"] * 3, FakeClassifier())
    with pytest.raises(ValueError, match="unknown word 'hexagon'"):
        prompt_accuracy(images_reading([[0] * 5]), ["a red hexagon"], FakeClassifier())


def test_metrics_refuse_images_outside_minus_one_to_one():
    """Images in 0-255 would be read as saturated colours and scored, silently (0.75 on a real set)."""
    images = (make_shapes(4)[0] + 1) * 127.5
    with pytest.raises(ValueError, match=r"images must lie in \[-1, 1\], got values from 33 to 252; for 0-255 "
                                         r"values use images / 127.5 - 1"):
        prompt_accuracy(images, ["a circle"] * 4, FakeClassifier())
    with pytest.raises(ValueError, match=r"images must lie in \[-1, 1\]"):
        shapes_fid(images, images, FakeClassifier())
    with pytest.raises(ValueError, match=r"floating point in \[-1, 1\], got torch.uint8"):
        count_shapes(images.to(torch.uint8))
    with pytest.raises(ValueError, match=r"images is empty \(shape \(0, 3, 32, 32\)\); pass at least one image"):
        count_shapes(images[:0])


def test_shapes_fid_compares_feature_distributions():
    generator = torch.Generator().manual_seed(4)
    a = torch.randn(2000, 3, 32, 32, generator=generator) / 10  # images in [-1, 1]; features (x 10) unit normal
    b = torch.randn(2000, 3, 32, 32, generator=generator) / 10
    shifted = b.clone()
    shifted[:, 0, 0, :] += 0.2  # every feature's mean moves by 2: 32 dimensions -> about 32 * 4
    near, far = shapes_fid(a, b, FakeClassifier(), batch_size=700), shapes_fid(a, shifted, FakeClassifier())
    assert near < 1 and far == pytest.approx(128, rel=0.05)


def test_real_images_is_the_held_out_reference_seed():
    images, captions, labels = real_images(8, start=3)
    expected = make_shapes(8, REFERENCE_SEED, start=3)
    assert REFERENCE_SEED not in (0, 1)  # the teacher's and the evaluators' training seeds
    assert torch.equal(images, expected[0]) and captions == expected[1] and torch.equal(labels, expected[2])


def test_count_shapes_finds_one_shape_in_every_real_image_and_counts_blobs():
    real, _, _ = make_shapes(256, seed=11)
    assert count_shapes(real).tolist() == [1] * 256
    canvas = torch.full((4, 3, 32, 32), -1.0)  # black backgrounds
    canvas[1, :, 4:10, 4:10] = 1.0  # one white square
    canvas[2, :, 4:10, 4:10] = 1.0
    canvas[2, 0, 20:28, 18:30] = 1.0  # and a red bar apart from it
    canvas[3, :, 4:10, 4:10] = 1.0
    canvas[3, :, 20:22, 20:22] = 1.0  # a 4-pixel speck, below min_area
    assert count_shapes(canvas).tolist() == [0, 1, 2, 1]
    with pytest.raises(ValueError, match=r"must have shape \(N, 3, H, W\)"):
        count_shapes(canvas[0])
