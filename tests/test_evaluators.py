"""The evaluator networks: shapes and dtypes, one-line errors, exact save/load, and a smoke run of their training."""

import json

import pytest
import torch
from safetensors.torch import load_file

from addlib.bench.metrics import count_shapes
from addlib.course import train_evaluators
from addlib.course.train_evaluators import MALFORMED, make_malformed
from addlib.evaluators import (
    AttributeClassifier,
    TinyViT,
    load_attribute_classifier,
    load_evaluator,
    load_feature_network,
    save_evaluator,
)
from addlib.shapes import ATTRIBUTES, make_shapes

B = 4


@pytest.fixture(scope="module")
def images():
    return make_shapes(B, seed=7)[0]


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return AttributeClassifier().eval()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return TinyViT().eval()


def check_logits(logits: dict) -> None:
    assert list(logits) == list(ATTRIBUTES)
    for name, values in ATTRIBUTES.items():
        assert logits[name].shape == (B, len(values)) and logits[name].dtype == torch.float32


def check_predictions(predicted: torch.Tensor) -> None:
    assert predicted.shape == (B, len(ATTRIBUTES)) and predicted.dtype == torch.int64
    for i, values in enumerate(ATTRIBUTES.values()):
        assert ((predicted[:, i] >= 0) & (predicted[:, i] < len(values))).all()


def test_classifier_outputs(classifier, images):
    check_logits(classifier(images))
    features = classifier.features(images)
    assert features.shape == (B, 128) and features.dtype == torch.float32
    check_predictions(classifier.predict(images))
    logits = classifier.none_logit(images)
    assert logits.shape == (B,) and torch.equal(classifier.rejects(images), logits > 0)


def test_the_shipped_classifier_says_none_of_these_to_not_shapes_only():
    """Shapes-world seed 9 is held out from every training run: 1,000 real images, 1,000 malformed ones."""
    classifier = load_attribute_classifier()
    real, _, _ = make_shapes(1000, seed=9)
    malformed, kinds = make_malformed(1000, seed=9)
    with torch.no_grad():
        assert classifier.rejects(real).float().mean() <= 0.005
        refused = classifier.rejects(malformed)
    for k, kind in enumerate(MALFORMED):
        assert refused[kinds == k].float().mean() >= 0.97, kind


def test_the_reject_network_leaves_shapes_fid_features_alone(classifier, images):
    """"None of these" has its own CNN: training it cannot move the features shapes-FID compares."""
    assert not set(map(id, classifier.reject.parameters())) & set(map(id, classifier.backbone.parameters()))
    images = images.clone().requires_grad_(True)
    classifier.none_logit(images).sum().backward()
    assert all(p.grad is None for p in [*classifier.backbone.parameters(), *classifier.heads.parameters()])


def test_vit_outputs(vit, images):
    assert (vit.num_layers, vit.embed_dim, vit.num_patches) == (6, 96, 64)
    check_logits(vit(images))
    check_predictions(vit.predict(images))
    states = vit.hidden_states(images)
    assert isinstance(states, tuple) and len(states) == vit.num_layers
    assert all(state.shape == (B, 1 + 64, 96) and state.dtype == torch.float32 for state in states)
    chosen = vit.features(images, [5, 1, 3])
    assert [torch.equal(a, b) for a, b in zip(chosen, (states[5], states[1], states[3]))] == [True] * 3
    embedding = vit.cls_embedding(images)
    assert embedding.shape == (B, 96)
    assert torch.allclose(embedding, vit.norm(states[-1][:, 0]))


def test_gradients_reach_the_images(vit, images):
    # ADD's generator learns through the frozen discriminator's features, so the features must not detach.
    images = images.clone().requires_grad_(True)
    vit.features(images, [2])[0].square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_bad_layer_and_image_errors(vit, classifier, images):
    for bad in (6, -1):
        with pytest.raises(ValueError, match=rf"layer {bad} does not exist; this TinyViT has layers 0 to 5$"):
            vit.features(images, [0, bad])
    for bad in (torch.zeros(B, 3, 64, 64), torch.zeros(B, 1, 32, 32), torch.zeros(3, 32, 32)):
        for call in (vit, vit.hidden_states, classifier, classifier.features):
            with pytest.raises(ValueError, match=r"expects images of shape \(B, 3, 32, 32\) .*got \(") as error:
                call(bad)
            assert "\n" not in str(error.value)


@pytest.mark.parametrize("network", ["classifier", "vit"])
def test_save_load_round_trip(network, request, images, tmp_path):
    model = request.getfixturevalue(network)
    save_evaluator(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_evaluator(tmp_path)
    assert type(loaded) is type(model) and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        for name, logits in model(images).items():
            assert torch.equal(loaded(images)[name], logits)
    load_as = load_attribute_classifier if network == "classifier" else load_feature_network
    assert type(load_as(tmp_path)) is type(model)
    other = load_feature_network if network == "classifier" else load_attribute_classifier
    with pytest.raises(TypeError, match="python -m addlib.course.train_evaluators"):
        other(tmp_path)


def test_missing_or_corrupt_folder_errors(classifier, tmp_path):
    rebuild = r"rebuild it with `python -m addlib.course.train_evaluators`$"
    with pytest.raises(FileNotFoundError, match=r"^no evaluator in .*; " + rebuild):
        load_attribute_classifier(tmp_path / "nowhere")
    save_evaluator(classifier, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(OSError, match=r"^could not load the evaluator in .*; " + rebuild) as error:
        load_evaluator(tmp_path)
    assert "\n" not in str(error.value)


def test_training_smoke_run(tmp_path, capsys):
    train_evaluators.main(["--steps", "5", "--batch-size", "8", "--eval-images", "50", "--out", str(tmp_path),
                           "--run-dir", str(tmp_path / "run")])
    for name, cls in [("classifier", AttributeClassifier), ("vit", TinyViT)]:
        folder = tmp_path / name
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "loss_log.json", "model.safetensors",
                                                            "recipe.json"]
        recipe = json.loads((folder / "recipe.json").read_text())
        assert recipe["command"].startswith(f"python -m addlib.course.train_evaluators --which {name} ")
        assert recipe["config"]["seed"] == 1 and recipe["config"][f"{name}_steps"] == 5
        assert set(recipe["held_out_accuracy"]) == set(ATTRIBUTES) and recipe["minutes"] >= 0
        if name == "classifier":
            assert set(recipe["held_out_none_of_these"]) == {"real images", *MALFORMED}
        assert type(load_evaluator(folder)) is cls
    assert "held-out accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("network, loss, call", [("vit", "attribute_loss", 3), ("classifier", "reject_loss", 2)])
def test_resume_repeats_an_uninterrupted_run_exactly(network, loss, call, tmp_path, interrupt_at_call, capsys):
    """The classifier's run is stopped in its second stage (step 6 of 4 + 4), after the step-4 checkpoint."""
    args = ["--which", network, "--steps", "4", "--batch-size", "4", "--eval-images", "20", "--checkpoint-every", "2"]
    train_evaluators.main(args + ["--out", str(tmp_path / "straight"), "--run-dir", str(tmp_path / "run_straight")])
    resumed = args + ["--out", str(tmp_path / "resumed"), "--run-dir", str(tmp_path / "run_resumed")]
    restore = interrupt_at_call(train_evaluators, loss, call)  # the vit's third step, after the step-2 checkpoint
    with pytest.raises(KeyboardInterrupt):
        train_evaluators.main(resumed)
    restore()
    with pytest.raises(SystemExit):  # an existing run is never overwritten by accident
        train_evaluators.main(resumed)
    assert "pass --resume" in capsys.readouterr().err
    train_evaluators.main(resumed + ["--resume"])
    straight = load_file(tmp_path / "straight" / network / "model.safetensors")
    again = load_file(tmp_path / "resumed" / network / "model.safetensors")
    assert straight.keys() == again.keys() and all(torch.equal(straight[k], again[k]) for k in straight)


# --- make_malformed -----------------------------------------------------------------------------------------


def test_make_malformed_is_counter_based_and_draws_every_kind():
    images, kinds = make_malformed(800, seed=5)
    assert images.shape == (800, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    tail, tail_kinds = make_malformed(300, seed=5, start=500)
    assert torch.equal(tail, images[500:]) and torch.equal(tail_kinds, kinds[500:])
    assert torch.bincount(kinds, minlength=len(MALFORMED)).min() >= 70  # 100 each on average


def test_make_malformed_kinds_are_what_they_say():
    """Pairs hold two blobs, empty images none, the drawn outlines one each (a bow-tie's tips may part), faint
    shapes at most 30% of the genuine shape's contrast, all on the backgrounds of the seed's own scenes."""
    images, kinds = make_malformed(800, seed=5)
    counts = count_shapes(images)
    real, _, _ = make_shapes(800, seed=5)
    for name, expected, share in [("two shapes", 2, 0.95), ("empty", 0, 1.0), ("star", 1, 0.9), ("cross", 1, 0.9),
                                  ("bow-tie", 1, 0.7), ("blob", 1, 0.9), ("ellipse", 1, 0.9)]:
        mine = kinds == MALFORMED.index(name)
        assert (counts[mine] == expected).float().mean() >= share, name
    background = real[:, :, :1, :1]  # no shape reaches the top left pixel
    faint = kinds == MALFORMED.index("faint")
    contrast = (images[faint] - background[faint]).abs().amax(dim=(1, 2, 3))
    assert (contrast <= 0.3 * (real[faint] - background[faint]).abs().amax(dim=(1, 2, 3)) + 1e-6).all()
    empty = kinds == MALFORMED.index("empty")
    assert torch.equal(images[empty], background[empty].expand(-1, -1, 32, 32))
    with pytest.raises(ValueError, match="num_images must be a non-negative int"):
        make_malformed(-1)
