"""The projected discriminator: heads, DiffAugment, hinge losses, and R1 taken with respect to the features."""

import pytest
import torch
from transformers import Dinov2Config, Dinov2Model

from addlib.discriminator import (
    DINOv2Features,
    ProjectedDiscriminator,
    diff_augment,
    hinge_discriminator_loss,
    hinge_generator_loss,
    load_dinov2,
    r1_penalty,
    score,
)
from addlib.evaluators import TinyViT
from addlib.shapes import make_shapes

TEXT_DIM = 8


def small_discriminator(seed: int = 0, **kwargs) -> ProjectedDiscriminator:
    torch.manual_seed(seed)
    network = TinyViT(image_size=32, patch_size=8, embed_dim=16, num_layers=3, num_heads=2)
    return ProjectedDiscriminator(network, layers=[0, 2], text_dim=TEXT_DIM, cmap_dim=8, **kwargs)


def conditions(batch: int, discriminator, images):
    text = torch.randn(batch, TEXT_DIM, generator=torch.Generator().manual_seed(1))
    return text, discriminator.image_embedding(images)


def test_r1_is_the_gradient_norm_with_respect_to_the_features_by_finite_differences():
    discriminator = small_discriminator(augment=()).double().eval()  # eval: spectral norm stops iterating
    images = make_shapes(2, seed=0)[0].double()
    text, image = conditions(2, discriminator, images)
    features = [f.detach().requires_grad_() for f in discriminator.features(images)]
    r1 = r1_penalty(discriminator.heads_logits(features, text, image), features)

    def head_output(k: int, tokens: torch.Tensor) -> torch.Tensor:
        return discriminator.heads[k](tokens, torch.cat([text, image], dim=1)).mean(dim=1)  # (B,)

    expected = 0.0
    step = 1e-6
    for k, f in enumerate(features):
        f = f.detach()
        gradient = torch.zeros_like(f)
        for index in range(f[0].numel()):  # each feature element, for all images at once
            bump = torch.zeros_like(f).view(2, -1)
            bump[:, index] = step
            bump = bump.view_as(f)
            gradient.view(2, -1)[:, index] = (head_output(k, f + bump) - head_output(k, f - bump)) / (2 * step)
        expected += gradient.pow(2).flatten(1).sum(1).mean()
    torch.testing.assert_close(r1, expected, rtol=1e-6, atol=0)


def test_r1_trains_the_heads_not_the_feature_network():
    discriminator = small_discriminator()
    images = make_shapes(4, seed=0)[0]
    text, image = conditions(4, discriminator, images)
    loss, stats = discriminator.loss(images, images.flip(0), r1_weight=1.0, generator=torch.Generator().manual_seed(0),
                                     **discriminator.condition(images, None, text))
    loss.backward()
    assert stats["r1"] > 0
    assert all(p.grad is not None for p in discriminator.heads.parameters())
    assert all(p.grad is None for p in discriminator.feature_network.parameters())


def test_hinge_losses_by_hand():
    real = [torch.tensor([[2.0, 0.5]]), torch.tensor([[-1.0, 0.0]])]
    fake = [torch.tensor([[-3.0, 0.0]]), torch.tensor([[1.0, -0.5]])]
    # real: mean(max(0, 1 - [2, .5])) = .25, mean(max(0, 1 - [-1, 0])) = 1.5; fake: mean(max(0, 1 + ...))
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.25 + 1.5 + 0.5 + 1.25)
    assert hinge_generator_loss(fake).item() == pytest.approx(-(-1.5 + 0.25))
    torch.testing.assert_close(score(real), torch.tensor([1.25 - 0.5]))


def test_an_image_verdict_does_not_depend_on_its_batch():
    discriminator = small_discriminator(augment=()).eval()
    images = make_shapes(6, seed=0)[0]
    text, image = conditions(6, discriminator, images)
    together = score(discriminator(images, text, image))
    alone = torch.cat([score(discriminator(images[i:i + 1], text[i:i + 1], image[i:i + 1])) for i in range(6)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chosen", [("text", "image"), ("text",), ("image",), ()])
def test_heads_read_exactly_the_chosen_conditions(chosen):
    discriminator = small_discriminator(augment=(), conditions=chosen).eval()
    images = make_shapes(2, seed=0)[0]
    assert (discriminator.image_embedding(images) is None) == ("image" not in chosen)
    text, image = torch.randn(2, TEXT_DIM), discriminator.feature_network.cls_embedding(images)
    features = discriminator.features(images)
    before = discriminator.heads_logits(features, text, image)
    for name, moved in {"text": (text + 1, image), "image": (text, image + 1)}.items():
        after = discriminator.heads_logits(features, *moved)
        reads = any(not torch.allclose(a, b) for a, b in zip(before, after))
        assert reads == (name in chosen), f"with conditions {chosen} the heads {'read' if reads else 'ignore'} {name}"
    with pytest.raises(ValueError, match="distinct names from"):
        small_discriminator(conditions=("caption",))


def test_generator_gradient_reaches_the_images_through_the_frozen_network():
    discriminator = small_discriminator()
    fake = make_shapes(3, seed=2)[0].requires_grad_()
    text, image = conditions(3, discriminator, fake.detach())
    hinge_generator_loss(discriminator(fake, text, image, torch.Generator().manual_seed(0))).backward()
    assert fake.grad.abs().sum() > 0


def test_diff_augment():
    images = make_shapes(8, seed=0)[0].requires_grad_()
    a = diff_augment(images, generator=torch.Generator().manual_seed(0))
    b = diff_augment(images, generator=torch.Generator().manual_seed(0))
    assert a.shape == images.shape and torch.equal(a, b)
    assert not torch.equal(a, diff_augment(images, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(diff_augment(images, policy=()), images)
    cut = diff_augment(torch.ones(64, 3, 32, 32), policy=("cutout",), generator=torch.Generator().manual_seed(0))
    zeros = (cut == 0).all(dim=1).flatten(1).sum(1).float()
    assert zeros.max() == 16 * 16 and zeros.min() > 0  # a 16x16 square, clipped at the border
    moved = diff_augment(images.detach(), policy=("translation",), generator=torch.Generator().manual_seed(0))
    assert ((moved == 0).all(dim=1).flatten(1).sum(1) <= 32 * 4 * 2 + 16).all()  # at most 4 rows and 4 columns
    a.sum().backward()
    assert images.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown augmentation"):
        diff_augment(images, policy=("rotate",))


def test_bad_input_is_explained():
    network = TinyViT(image_size=32, patch_size=8, embed_dim=16, num_layers=3, num_heads=2)
    with pytest.raises(ValueError, match="layers 0 to 2"):
        ProjectedDiscriminator(network, layers=[1, 3], text_dim=TEXT_DIM)
    discriminator = small_discriminator()
    images = make_shapes(2, seed=0, resolution=64)[0]
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 3, 32, 32\).*got \(2, 3, 64, 64\)"):
        discriminator(images, torch.zeros(2, TEXT_DIM), torch.zeros(2, 16))
    features = [torch.full((1, 17, 16), float("nan"), requires_grad=True) for _ in range(2)]
    logits = discriminator.heads_logits(features, torch.zeros(1, TEXT_DIM), torch.zeros(1, 16))
    with pytest.raises(FloatingPointError, match="R1 penalty is nan"):
        r1_penalty(logits, features)
    with pytest.raises(ValueError, match="require gradients"):
        r1_penalty(logits, [f.detach() for f in features])


def tiny_dinov2() -> DINOv2Features:
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                          image_size=28, patch_size=14)
    return DINOv2Features(Dinov2Model(config), image_size=28)


def test_dinov2_has_the_feature_network_interface():
    network = tiny_dinov2()
    images = make_shapes(2, seed=0)[0]
    features = network.features(images, [1, 3])
    assert [tuple(f.shape) for f in features] == [(2, 5, 32)] * 2  # CLS + (28 / 14)^2 patches
    assert network.cls_embedding(images).shape == (2, 32)
    discriminator = ProjectedDiscriminator(network, layers=[1, 3], text_dim=TEXT_DIM)
    text, image = conditions(2, discriminator, images)
    assert [tuple(x.shape) for x in discriminator(images, text, image)] == [(2, 5)] * 2
    with pytest.raises(ValueError, match="expects RGB images"):
        network.features(images[:, :1], [0])


def test_dinov2_offline_says_it_needs_the_hub():
    with pytest.raises(OSError, match="could not load DINOv2 'facebook/dinov2-small': .*Hugging Face hub") as error:
        load_dinov2()
    assert "\n" not in str(error.value)
