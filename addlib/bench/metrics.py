"""Offline quality metrics for generated shapes images, on the two axes of the ADD paper's evaluation.

Sauer et al. (2023, "Adversarial Diffusion Distillation") judge a text-to-image model by image quality (FID)
and prompt alignment (CLIP score). In the shapes world both are measured with the attribute classifier of
:mod:`addlib.evaluators` (never used in training, so a model cannot have learned to fool it):

- **prompt accuracy**: the classifier reads the five attributes of each generated image; the score is the
  fraction that match what the prompt named, a shape counting only where the image holds exactly one of the
  world's shapes (:func:`prompt_accuracy`);
- **shapes-FID**: the Frechet distance (Heusel et al., 2017, "GANs Trained by a Two Time-Scale Update Rule
  Converge to a Local Nash Equilibrium") between Gaussians fitted to generated and real images' features,
  taken in the classifier's penultimate layer instead of Inception-v3's, as FID on MNIST uses a LeNet
  (:func:`shapes_fid`). Like FID it is biased upward for small sets: compare numbers computed with equally
  many images (a few thousand per side for the 128-d features).

A third check needs no classifier: every real shapes image holds exactly one shape, so
:func:`count_shapes` counts the blobs that stand out from an image's background. A generator that draws a
second shape beside the one asked for would fool a classifier that reads one shape per image; prompt accuracy
counts such an image wrong.

Shapes-world seeds are given out once for the whole course (``addlib.shapes.SEEDS``), so no evaluation image
was ever trained on: evaluation references use seed 7 (``REFERENCE_SEED``, :func:`real_images`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from addlib.evaluators import AttributeClassifier
from addlib.loading import model_device
from addlib.shapes import ATTRIBUTES, SEEDS, labels_to_attributes, make_shapes, parse_caption
from addlib.utils.errors import check_images

REFERENCE_SEED = SEEDS["reference"]  # held-out real images: no training run draws from this seed


def _as_float64(value: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(value).detach().cpu().to(torch.float64)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix, from its eigendecomposition."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    # Roundoff can make eigenvalues of a singular covariance slightly negative; they are 0.
    return eigenvectors @ torch.diag(eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance(mu1: torch.Tensor | np.ndarray, sigma1: torch.Tensor | np.ndarray,
                     mu2: torch.Tensor | np.ndarray, sigma2: torch.Tensor | np.ndarray) -> float:
    """The Frechet (2-Wasserstein) distance squared between N(mu1, sigma1) and N(mu2, sigma2): the FID formula.

    d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64 and without scipy. (S1 S2)^(1/2) is not
    computed: S1 S2 is similar to the symmetric PSD matrix sqrt(S1) S2 sqrt(S1), so Tr((S1 S2)^(1/2)) is the
    sum of the square roots of that matrix's eigenvalues, which ``eigvalsh`` finds stably and real, where
    scipy's ``sqrtm`` of the non-symmetric S1 S2 can return complex noise for near-singular covariances.
    """
    mu1, sigma1, mu2, sigma2 = map(_as_float64, (mu1, sigma1, mu2, sigma2))
    dim = len(mu1)
    if dim == 0:
        raise ValueError("mu1 is empty: statistics of 0-dimensional features; compute them with "
                         "feature_statistics on features (N, D) with D >= 1")
    for name, value, shape in (("mu1", mu1, (dim,)), ("sigma1", sigma1, (dim, dim)),
                               ("mu2", mu2, (dim,)), ("sigma2", sigma2, (dim, dim))):
        if value.shape != shape:
            raise ValueError(f"{name} must have shape {shape} for {dim}-d features, got {tuple(value.shape)}")
    root1 = _psd_sqrt(sigma1)
    eigenvalues = torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp(min=0)  # (D,)
    distance = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * eigenvalues.sqrt().sum()
    return max(distance.item(), 0.0)  # a squared distance: below 0 only by roundoff


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean (D,) and covariance (D, D) of features (N, D), in float64, the covariance unbiased (N - 1)."""
    features = _as_float64(features)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"features must have shape (N, D) with N >= 2, got {tuple(features.shape)}")
    return features.mean(dim=0), torch.cov(features.T)


@torch.no_grad()
def _classifier_features(images: torch.Tensor, classifier: AttributeClassifier, batch_size: int) -> torch.Tensor:
    """The classifier's penultimate features (N, D) of images (N, 3, 32, 32), computed batch by batch."""
    check_images("images", images)
    device = model_device(classifier)
    return torch.cat([classifier.features(batch.to(device)).cpu() for batch in images.split(batch_size)])


def shapes_fid(images_a: torch.Tensor, images_b: torch.Tensor, classifier: AttributeClassifier,
               batch_size: int = 512) -> float:
    """The Frechet distance between two image sets (N, 3, 32, 32) in [-1, 1] in the classifier's features.

    Typically ``images_a`` are generated and ``images_b`` are ``real_images(n)[0]``; the sets may differ in
    size but each needs at least 2 images (in practice thousands: see the module docstring).
    """
    statistics = [feature_statistics(_classifier_features(images, classifier, batch_size))
                  for images in (images_a, images_b)]
    return frechet_distance(*statistics[0], *statistics[1])


class Reading(NamedTuple):
    """What the classifier and the blob count read in images (N, 3, H, W): :func:`read_images`."""

    labels: torch.Tensor  # (N, 5) int64: the attribute labels, in ATTRIBUTES order, as make_shapes gives them
    refused: torch.Tensor  # (N,) bool: "none of these" (classifier.rejects)
    counts: torch.Tensor  # (N,) int64: blobs that stand out (count_shapes)

    @property
    def one_shape(self) -> torch.Tensor:
        """(N,) bool: exactly one of the world's shapes, not refused and one blob."""
        return ~self.refused & (self.counts == 1)


@torch.no_grad()
def read_images(images: torch.Tensor, classifier: AttributeClassifier, batch_size: int = 512) -> Reading:
    """The classifier's attribute labels and "none of these", and the blob count, of images (N, 3, H, W)."""
    device = model_device(classifier)
    batches = [batch.to(device) for batch in images.split(batch_size)]
    return Reading(torch.cat([classifier.predict(batch).cpu() for batch in batches]),
                   torch.cat([classifier.rejects(batch).cpu() for batch in batches]), count_shapes(images))


@torch.no_grad()
def prompt_accuracy(images: torch.Tensor, prompts: list[str], classifier: AttributeClassifier,
                    batch_size: int = 512) -> dict[str, float]:
    """How often generated images (N, 3, 32, 32) show what their prompts asked for, as read by the classifier.

    Each image is scored only on the attributes its prompt names (``parse_caption``): "a red circle" checks
    shape and colour, whatever the size, position and background. The shape counts as right only if the image
    holds exactly one shape: the classifier does not call it "none of these" (``classifier.rejects``: a star, a
    cross, a smudge) and :func:`count_shapes` finds one blob. A closed-world reading would call any blob a
    circle, square or triangle, and miss a second shape entirely.

    Returns, for each attribute named by at least one prompt, the accuracy over the prompts that name it;
    ``"joint"``, the fraction of images whose every named attribute is right; ``"closed-world joint"``, the same
    with the classifier's three shapes taken at their word (the figure before "none of these" existed); and the
    fractions of images the classifier refuses (``"none of these"``) and that hold two or more shapes
    (``"several shapes"``).
    """
    requests, reading, verdicts = _attribute_verdicts(images, prompts, classifier, batch_size)
    named = {name: 0 for name in ATTRIBUTES}  # how many prompts name each attribute
    right = {name: 0 for name in ATTRIBUTES}  # and how many of those images show it
    all_right = closed_world = 0
    for asked, labels, correct in zip(requests, reading.labels.tolist(), verdicts):
        read = labels_to_attributes(labels)
        for name in asked:
            named[name] += 1
            right[name] += correct[name]
        all_right += all(correct.values())
        closed_world += all(read[name] == value for name, value in asked.items())
    accuracy = {name: right[name] / named[name] for name in ATTRIBUTES if named[name]}
    return accuracy | {"joint": all_right / len(prompts), "closed-world joint": closed_world / len(prompts),
                       "none of these": reading.refused.float().mean().item(),
                       "several shapes": (reading.counts >= 2).float().mean().item()}


def prompt_correct(images: torch.Tensor, prompts: list[str], classifier: AttributeClassifier,
                   batch_size: int = 512) -> torch.Tensor:
    """For each image (N,), whether it shows everything its prompt names, as :func:`prompt_accuracy`'s
    ``"joint"`` counts it (a single shape included): the per-image reading behind that figure."""
    return torch.tensor([all(correct.values())
                         for correct in _attribute_verdicts(images, prompts, classifier, batch_size)[2]])


def _attribute_verdicts(images: torch.Tensor, prompts: list[str], classifier: AttributeClassifier,
                        batch_size: int) -> tuple[list[dict], Reading, list[dict[str, bool]]]:
    """The prompts' requests, the classifier's reading, and per image whether each named attribute is right."""
    if len(images) != len(prompts) or not prompts:
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts; give one prompt per image, "
                         f"at least one")
    check_images("images", images)
    requests = [parse_caption(prompt) for prompt in prompts]  # before the classifier runs: bad prompts fail fast
    reading = read_images(images, classifier, batch_size)
    verdicts = []
    for asked, labels, single in zip(requests, reading.labels.tolist(), reading.one_shape.tolist()):
        read = labels_to_attributes(labels)
        verdicts.append({name: read[name] == value and (single or name != "shape") for name, value in asked.items()})
    return requests, reading, verdicts


def count_shapes(images: torch.Tensor, threshold: float = 0.4, min_area: int = 6) -> torch.Tensor:
    """How many shapes each image (N, 3, H, W, values in [-1, 1]) holds: the 4-connected blobs of at least
    ``min_area`` pixels whose colour is more than ``threshold`` (Euclidean, RGB) from the background's.

    The background's colour is the median of the border pixels, since a shape never covers the whole border.
    Real shapes images all count 1 (``tests/test_metrics.py``); a 0 is a shape too faint to stand out.
    """
    check_images("images", images)
    images = images.detach().float().cpu()
    n, _, h, w = images.shape
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., 0], images[..., -1]], dim=-1)
    background = border.median(dim=-1).values[..., None, None]
    foreground = (images - background).norm(dim=1) > threshold
    # Connected components by label propagation: every foreground pixel starts with its own label and takes
    # the largest among its 4 neighbours' until nothing changes; each blob then carries one label.
    labels = torch.where(foreground, torch.arange(1, h * w + 1).view(1, h, w).expand(n, h, w), 0)
    while True:
        padded = torch.nn.functional.pad(labels, (1, 1, 1, 1))
        neighbours = torch.stack([labels, padded[:, :-2, 1:-1], padded[:, 2:, 1:-1], padded[:, 1:-1, :-2],
                                  padded[:, 1:-1, 2:]]).amax(dim=0)
        spread = torch.where(foreground, neighbours, 0)
        if torch.equal(spread, labels):
            break
        labels = spread
    counts = []
    for image_labels in labels:
        _, areas = image_labels[image_labels > 0].unique(return_counts=True)
        counts.append(int((areas >= min_area).sum()))
    return torch.tensor(counts)


def real_images(num_images: int, seed: int = REFERENCE_SEED, *, start: int = 0
                ) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """The held-out real set: ``make_shapes(num_images, seed, start=start)``, seed 7 unless told otherwise.

    Returns make_shapes' ``(images, captions, labels)``: the images are shapes-FID's reference, and the
    captions make matching prompts, so generated and real sets share one attribute distribution.
    """
    return make_shapes(num_images, seed, start=start)
