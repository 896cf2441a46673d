"""L_distill against a hand computation, where its gradient goes, and its SDS and NFSD special cases."""

import pytest
import torch

from addlib.distillation import distillation_loss, sample_teacher_timesteps, teacher_target, weighting_function
from addlib.miniature import build_pipeline
from addlib.pipeline import encode_prompts

PROMPTS = ["a red circle", "a large blue square at the top left on a white background", "a green triangle",
           "a small yellow circle"]


@pytest.fixture(scope="module")
def teacher():
    pipe = build_pipeline(seed=0).to(torch.float64)
    pipe.vae.requires_grad_(False)
    return pipe


@pytest.fixture(scope="module")
def inputs(teacher):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        embeds, uncond = encode_prompts(teacher, PROMPTS), encode_prompts(teacher, [""])
    latents = torch.randn(4, 4, 8, 8, generator=generator, dtype=torch.float64)
    noise = torch.randn(4, 4, 8, 8, generator=generator, dtype=torch.float64)
    return dict(latents=latents, noise=noise, embeds=embeds, uncond=uncond, timesteps=torch.tensor([50, 300, 620, 998]))


def teacher_v(teacher, noisy, timesteps, embeds):
    with torch.no_grad():
        return teacher.unet(noisy, timesteps, encoder_hidden_states=embeds).sample


def alpha_sigma(teacher, timesteps):
    alpha_bar = teacher.scheduler.alphas_cumprod.double()[timesteps].view(-1, 1, 1, 1)
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def test_loss_equals_hand_computation_in_pixel_space(teacher, inputs):
    x, noise, t = inputs["latents"], inputs["noise"], inputs["timesteps"]
    alpha, sigma = alpha_sigma(teacher, t)
    noisy = alpha * x + sigma * noise
    x_psi = alpha * noisy - sigma * teacher_v(teacher, noisy, t, inputs["embeds"])  # v-prediction -> x0
    scale = teacher.vae.config.scaling_factor
    with torch.no_grad():
        images, target = (teacher.vae.decode(z / scale).sample for z in (x, x_psi))
    expected = (alpha.flatten() * ((images - target) ** 2).mean(dim=(1, 2, 3))).mean()
    loss = distillation_loss(teacher, x, inputs["embeds"], t, noise, weighting="exponential")
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=0)


def test_student_gets_a_gradient_and_the_teacher_none(teacher, inputs):
    student = torch.nn.Conv2d(4, 4, 1).double()
    latents = student(inputs["latents"])
    loss = distillation_loss(teacher, latents, inputs["embeds"], inputs["timesteps"], inputs["noise"],
                             guidance_scale=2.0, uncond_embeds=inputs["uncond"])
    loss.backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.unet.parameters())
    assert all(p.grad is None for p in teacher.vae.parameters())


def expected_sds_like_gradient(teacher, inputs, direction):
    """w(t) * direction / (elements per sample * batch), w(t) = sigma_t^2: the SDS gradient of the mean loss."""
    _, sigma = alpha_sigma(teacher, inputs["timesteps"])
    x = inputs["latents"]
    return sigma**2 * direction / x[0].numel() / len(x)


def latent_gradient(teacher, inputs, weighting, guidance_scale, timesteps=None):
    x = inputs["latents"].clone().requires_grad_()
    loss = distillation_loss(teacher, x, inputs["embeds"], inputs["timesteps"] if timesteps is None else timesteps,
                             inputs["noise"], weighting=weighting, guidance_scale=guidance_scale,
                             uncond_embeds=inputs["uncond"], pixel_space=False)
    loss.backward()
    return x.grad


def eps_predictions(teacher, inputs, timesteps):
    """The teacher's conditional and unconditional epsilon at the noised student sample (from v)."""
    alpha, sigma = alpha_sigma(teacher, timesteps)
    noisy = alpha * inputs["latents"] + sigma * inputs["noise"]
    uncond = inputs["uncond"].expand(len(noisy), -1, -1)
    return [sigma * noisy + alpha * teacher_v(teacher, noisy, timesteps, e) for e in (inputs["embeds"], uncond)]


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_sds_weighting_gives_the_sds_gradient(teacher, inputs, guidance_scale):
    eps_cond, eps_uncond = eps_predictions(teacher, inputs, inputs["timesteps"])
    eps_psi = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
    expected = expected_sds_like_gradient(teacher, inputs, eps_psi - inputs["noise"])
    torch.testing.assert_close(latent_gradient(teacher, inputs, "sds", guidance_scale), expected,
                               rtol=1e-8, atol=1e-14)


def test_nfsd_gradient_drops_the_injected_noise(teacher, inputs):
    timesteps = torch.tensor([50, 150, 620, 998])  # two below NFSD's switch at 200, two above
    eps_cond, eps_uncond = eps_predictions(teacher, inputs, timesteps)
    below = (timesteps < 200).double().view(-1, 1, 1, 1)
    delta_d = below * eps_uncond  # above the switch: eps(empty) - eps(negative = empty) = 0
    expected = expected_sds_like_gradient(teacher, inputs | {"timesteps": timesteps},
                                          delta_d + 2.0 * (eps_cond - eps_uncond))
    torch.testing.assert_close(latent_gradient(teacher, inputs, "nfsd", 2.0, timesteps), expected,
                               rtol=1e-8, atol=1e-14)


def test_weightings(teacher):
    alphas_cumprod = teacher.scheduler.alphas_cumprod
    t = torch.arange(1000)
    exponential = weighting_function("exponential", t, alphas_cumprod)
    sds = weighting_function("sds", t, alphas_cumprod)
    abar = alphas_cumprod.double()
    torch.testing.assert_close(exponential, abar.sqrt())
    torch.testing.assert_close(sds, abar.sqrt() * (1 - abar).sqrt() / 2)
    assert exponential[999] == 0 and sds[999] == 0  # zero terminal SNR: no signal, no weight
    torch.testing.assert_close(weighting_function("nfsd", t, alphas_cumprod), sds)


def test_timesteps_are_seeded_and_avoid_the_terminal_step():
    draw = sample_teacher_timesteps(4096, torch.Generator().manual_seed(3))
    assert draw.min() >= 0 and draw.max() == 998
    torch.testing.assert_close(draw, sample_teacher_timesteps(4096, torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="low <= high"):
        sample_teacher_timesteps(4, low=500, high=100)


def test_bad_input_is_explained(teacher, inputs):
    x, embeds, noise = inputs["latents"], inputs["embeds"], inputs["noise"]
    with pytest.raises(ValueError, match="unknown weighting 'l2'"):
        distillation_loss(teacher, x, embeds, inputs["timesteps"], noise, weighting="l2")
    with pytest.raises(ValueError, match="needs uncond_embeds"):
        distillation_loss(teacher, x, embeds, inputs["timesteps"], noise, guidance_scale=3.0)
    with pytest.raises(ValueError, match="alpha_t, which is 0"):
        teacher_target(teacher, x, embeds, torch.tensor([1, 2, 3, 999]), noise, "nfsd",
                       uncond_embeds=inputs["uncond"])
    with pytest.raises(ValueError, match="timestep 1000 is out of range"):
        distillation_loss(teacher, x, embeds, torch.tensor([1, 2, 3, 1000]), noise)
    unfrozen = build_pipeline(seed=0)
    with pytest.raises(ValueError, match=r"requires_grad_\(False\)"):
        distillation_loss(unfrozen, x.float(), embeds.float(), inputs["timesteps"], noise.float())


def test_already_decoded_student_images_give_the_same_loss(teacher, inputs):
    from addlib.pipeline import decode_latents

    args = (teacher, inputs["latents"], inputs["embeds"], inputs["timesteps"], inputs["noise"])
    images = decode_latents(teacher, inputs["latents"])
    torch.testing.assert_close(distillation_loss(*args, student_images=images), distillation_loss(*args),
                               rtol=0, atol=0)
