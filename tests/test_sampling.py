"""The sampling steps against diffusers' DDIMScheduler and DDPMScheduler, and sample() against the pipeline."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from addlib.miniature import SCHEDULER_CONFIG, build_pipeline
from addlib.pipeline import encode_prompts
from addlib.sampling import classifier_free_guidance, ddim_step, ddim_timesteps, ddpm_step, renoise_step, sample

PREDICTION_TYPES = ["epsilon", "sample", "v_prediction"]
PROMPTS = ["a red circle", "a large blue square at the top left on a white background", "a green triangle"]
BETAS_CONFIG = {key: SCHEDULER_CONFIG[key] for key in
                ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "rescale_betas_zero_snr")}


@pytest.fixture(scope="module")
def pipe():
    pipe = build_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_inputs(seed: int, shape=(3, 4, 8, 8)):
    """model_output, sample and noise for one step."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(3, *shape, generator=gen)


def initial_latents(seed: int, num_prompts: int) -> torch.Tensor:
    """The initial latents sample() draws for ``seed``."""
    return torch.randn((num_prompts, 4, 8, 8), generator=torch.Generator().manual_seed(seed))


# Steps from set_timesteps(4): the first (t = 999, where the epsilon-prediction x0 is a division by alpha = 0),
# a middle one, and the last.
def steps_for(prediction_type: str, timesteps: list[int]) -> list[int]:
    return timesteps[1:] if prediction_type == "epsilon" else timesteps


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8, 10, 25, 50, 100, 1000])
def test_ddim_timesteps_match_diffusers(n):
    reference = DDIMScheduler(**SCHEDULER_CONFIG)
    reference.set_timesteps(n)
    assert torch.equal(ddim_timesteps(n), reference.timesteps)


def test_ddim_timesteps_are_n_decreasing_steps_from_the_last_timestep():
    assert ddim_timesteps(4).tolist() == [999, 749, 499, 249]
    for n in range(1, 1001):  # diffusers' np.arange returns n + 1 timesteps, ending in -1, for n = 61 and others
        timesteps = ddim_timesteps(n)
        assert len(timesteps) == n and timesteps[0] == 999 and timesteps[-1] >= 0
        assert torch.all(timesteps[1:] < timesteps[:-1])
    assert ddim_timesteps(5, num_train_timesteps=250).tolist() == [249, 199, 149, 99, 49]


@pytest.mark.parametrize("n", [0, 1001])
def test_ddim_timesteps_rejects_impossible_counts(n):
    with pytest.raises(ValueError, match=rf"between 1 and num_train_timesteps = 1000, got {n}$"):
        ddim_timesteps(n)


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_ddim_step_matches_diffusers(prediction_type, eta):
    reference = DDIMScheduler(**{**SCHEDULER_CONFIG, "prediction_type": prediction_type})
    reference.set_timesteps(4)
    alphas_cumprod = reference.alphas_cumprod
    model_output, x, noise = random_inputs(0)
    for t in steps_for(prediction_type, [999, 499, 249]):
        expected = reference.step(model_output, t, x, eta=eta, variance_noise=noise)
        prev_sample, pred_x0 = ddim_step(model_output, t, t - 250, x, alphas_cumprod, prediction_type, eta, noise)
        torch.testing.assert_close(prev_sample, expected.prev_sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pred_x0, expected.pred_original_sample, rtol=1e-5, atol=1e-5)
    assert torch.equal(prev_sample, pred_x0)  # the last step lands on x0


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_ddpm_step_matches_diffusers(prediction_type):
    reference = DDPMScheduler(**BETAS_CONFIG, variance_type="fixed_small", prediction_type=prediction_type,
                              clip_sample=False, timestep_spacing="trailing")
    reference.set_timesteps(10)
    assert reference.timesteps[-2:].tolist() == [199, 99]
    alphas_cumprod = reference.alphas_cumprod
    model_output, x, _ = random_inputs(1)
    for t, prev_t in steps_for(prediction_type, [(999, 899), (499, 399), (99, -1)]):
        # DDPMScheduler draws its noise as torch.randn(shape, generator=generator): the same draw here.
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(t))
        expected = reference.step(model_output, t, x, generator=torch.Generator().manual_seed(t))
        prev_sample, pred_x0 = ddpm_step(model_output, t, prev_t, x, alphas_cumprod, prediction_type,
                                         noise if prev_t >= 0 else None)
        torch.testing.assert_close(prev_sample, expected.prev_sample, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pred_x0, expected.pred_original_sample, rtol=1e-5, atol=1e-5)
    assert torch.equal(prev_sample, pred_x0)  # no noise at the last step


def test_ddpm_step_is_ddim_at_eta_one():
    # In float64: at t = 999 (alpha-bar 0) DDIM's noise coefficient sqrt(1 - alpha-bar' - sigma^2) is the square
    # root of a difference that is exactly 0, so roundoff eps comes out as sqrt(eps): up to 1e-3 in float32,
    # depending on the CPU and library versions, and about 1e-8 in float64.
    alphas_cumprod = DDIMScheduler(**SCHEDULER_CONFIG).alphas_cumprod.double()
    model_output, x, noise = random_inputs(2).double()
    for t, prev_t in [(999, 899), (500, 250), (99, -1)]:
        torch.testing.assert_close(ddpm_step(model_output, t, prev_t, x, alphas_cumprod, noise=noise),
                                   ddim_step(model_output, t, prev_t, x, alphas_cumprod, eta=1.0, noise=noise),
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize("step", [ddim_step, ddpm_step])
def test_per_sample_timesteps_equal_one_step_per_sample(step):
    alphas_cumprod = DDIMScheduler(**SCHEDULER_CONFIG).alphas_cumprod
    model_output, x, noise = random_inputs(3)
    timesteps, prev_timesteps = torch.tensor([999, 499, 249]), torch.tensor([749, 249, -1])
    kwargs = dict(eta=0.5) if step is ddim_step else {}
    batched = step(model_output, timesteps, prev_timesteps, x, alphas_cumprod, noise=noise, **kwargs)
    for i, (t, prev_t) in enumerate(zip(timesteps.tolist(), prev_timesteps.tolist())):
        one = step(model_output[i:i + 1], t, prev_t, x[i:i + 1], alphas_cumprod, noise=noise[i:i + 1], **kwargs)
        for got, expected in zip(batched, one):
            torch.testing.assert_close(got[i:i + 1], expected)


def test_steps_that_add_noise_ask_for_it():
    alphas_cumprod = DDIMScheduler(**SCHEDULER_CONFIG).alphas_cumprod
    model_output, x, _ = random_inputs(4)
    with pytest.raises(ValueError, match=r"^DDPM adds noise at this step: pass noise"):
        ddpm_step(model_output, 499, 249, x, alphas_cumprod)
    with pytest.raises(ValueError, match=r"^DDIM with eta > 0 adds noise"):
        ddim_step(model_output, 499, 249, x, alphas_cumprod, eta=0.5)
    with pytest.raises(ValueError, match=r"eta must be between 0 \(DDIM\) and 1 \(DDPM\), got 1.5"):
        ddim_step(model_output, 499, 249, x, alphas_cumprod, eta=1.5)
    ddim_step(model_output, 499, 249, x, alphas_cumprod)  # eta = 0 needs none


def test_renoise_step_noises_the_predicted_x0_afresh():
    v, x, noise = random_inputs(4)
    alphas_cumprod = DDIMScheduler(**SCHEDULER_CONFIG).alphas_cumprod
    x0 = alphas_cumprod[749].sqrt() * x - (1 - alphas_cumprod[749]).sqrt() * v  # from v
    step, pred_x0 = renoise_step(v, 749, 499, x, alphas_cumprod, "v_prediction", noise)
    torch.testing.assert_close(pred_x0, x0)
    torch.testing.assert_close(step, alphas_cumprod[499].sqrt() * x0 + (1 - alphas_cumprod[499]).sqrt() * noise)
    last, _ = renoise_step(v, 249, -1, x, alphas_cumprod, "v_prediction")
    torch.testing.assert_close(last, alphas_cumprod[249].sqrt() * x - (1 - alphas_cumprod[249]).sqrt() * v)
    with pytest.raises(ValueError, match="ADD sampling adds noise at this step"):
        renoise_step(v, 749, 499, x, alphas_cumprod, "v_prediction")


def test_add_sampler_is_ddim_at_one_step_and_seeded_beyond(pipe):
    prompts = PROMPTS[:2]
    torch.testing.assert_close(sample(pipe, prompts, 1, sampler="add"), sample(pipe, prompts, 1))
    four = sample(pipe, prompts, 4, sampler="add", seed=3)
    torch.testing.assert_close(four, sample(pipe, prompts, 4, sampler="add", seed=3))
    assert not torch.allclose(four, sample(pipe, prompts, 4, sampler="add", seed=4))


def test_classifier_free_guidance():
    uncond, cond = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0])
    assert torch.equal(classifier_free_guidance(uncond, cond, 1.0), cond)
    assert torch.equal(classifier_free_guidance(uncond, cond, 0.0), uncond)
    assert torch.equal(classifier_free_guidance(uncond, cond, 3.0), torch.tensor([7.0, -4.0]))


def test_encode_prompts_matches_the_pipeline(pipe):
    with torch.no_grad():
        expected, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
        torch.testing.assert_close(encode_prompts(pipe, PROMPTS), expected)


def test_sample_keeps_no_graph(pipe):
    """Sampling builds no autograd graph: with one, 512 prompts take gigabytes, and a training loop's loss would
    reach back into the images."""
    assert pipe.unet.dtype == torch.float32 and any(p.requires_grad for p in pipe.unet.parameters())
    assert not sample(pipe, ["a red circle"], 1).requires_grad


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_sample_matches_the_pipeline(pipe, guidance_scale):
    latents = initial_latents(5, len(PROMPTS))
    expected = pipe(prompt=PROMPTS, num_inference_steps=4, guidance_scale=guidance_scale, latents=latents,
                    output_type="pt").images * 2 - 1  # diffusers returns [0, 1]
    images = sample(pipe, PROMPTS, num_inference_steps=4, guidance_scale=guidance_scale, seed=5)
    assert images.shape == (3, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    torch.testing.assert_close(images, expected, rtol=1e-4, atol=1e-4)
    # Passing the seed's own latents changes nothing.
    torch.testing.assert_close(sample(pipe, PROMPTS, num_inference_steps=4, guidance_scale=guidance_scale,
                                      seed=5, latents=latents), images)


@pytest.mark.parametrize("options", [dict(sampler="ddim"), dict(sampler="ddim", eta=0.5), dict(sampler="ddpm")],
                         ids=["ddim", "ddim-eta", "ddpm"])
def test_sample_is_determined_by_the_seed_alone(pipe, options):
    run = dict(num_inference_steps=3, guidance_scale=2.0, **options)
    images = sample(pipe, PROMPTS, seed=1, **run)
    assert torch.equal(sample(pipe, PROMPTS, seed=1, **run), images)
    assert not torch.allclose(sample(pipe, PROMPTS, seed=2, **run), images)
    torch.testing.assert_close(sample(pipe, PROMPTS, seed=1, batch_size=2, **run), images)
    if options == dict(sampler="ddim"):  # no step noise: the first image of a seed is its first prompt's
        torch.testing.assert_close(sample(pipe, PROMPTS[:1], seed=1, **run), images[:1])


def test_sampler_noise_matters(pipe):
    """DDPM and DDIM at eta > 0 draw step noise, so from the same latents they end elsewhere than DDIM."""
    ddim = sample(pipe, PROMPTS, num_inference_steps=3, seed=1)
    assert not torch.allclose(sample(pipe, PROMPTS, num_inference_steps=3, seed=1, sampler="ddpm"), ddim)
    assert not torch.allclose(sample(pipe, PROMPTS, num_inference_steps=3, seed=1, eta=0.5), ddim)


def test_sample_sizes(pipe):
    assert sample(pipe, PROMPTS[:1], num_inference_steps=1, height=16, width=24).shape == (1, 3, 16, 24)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(height=30), r"^height 30 is not a positive multiple of the VAE's downsampling factor 4; "
                          r"the nearest valid height is 32$"),
        (dict(width=37), r"^width 37 is not .* factor 4; the nearest valid width is 36$"),
        (dict(sampler="euler"), r"^unknown sampler 'euler'; choose one of ddim, ddpm, add$"),
        (dict(sampler="ddpm", eta=0.5), r"^eta is DDIM's"),
        (dict(guidance_scale=0.5), r"^guidance_scale must be at least 1 \(1 = no guidance\), got 0.5"),
        (dict(guidance_scale=float("nan")), r"^guidance_scale must be at least 1 \(1 = no guidance\), got nan"),
        (dict(prompts=["a pink circle"]), r"pink"),
        (dict(prompts="a red circle"), r"^prompts must be a non-empty list of strings, got 'a red circle'"),
        (dict(latents=torch.zeros(3, 4, 4, 4)), r"^latents must have shape \(3, 4, 8, 8\) for 3 prompts of 32x32"),
        (dict(latents=torch.full((3, 4, 8, 8), float("nan"))), r"^latents hold NaN or infinite values"),
        (dict(num_inference_steps=2.5), r"^num_inference_steps must be an integer of at least 1, got 2.5$"),
        (dict(num_inference_steps=0), r"^num_inference_steps must be an integer of at least 1, got 0$"),
        (dict(seed=[1, 2, 3]), r"^seed must be an integer of at least 0, got \[1, 2, 3\]$"),
        (dict(batch_size=0), r"^batch_size must be an integer of at least 1, got 0$"),
        (dict(prompts=[None]), r"^prompts must be strings, got None among them"),
    ],
    ids=["height", "width", "sampler", "ddpm-eta", "guidance", "nan-guidance", "unknown-word", "str-prompt", "latents",
         "nan-latents", "fractional-steps", "zero-steps", "seed-list", "batch-size", "none-prompt"],
)
def test_sample_bad_input_gives_one_line_errors(pipe, kwargs, match):
    kwargs = {"prompts": PROMPTS, "num_inference_steps": 1, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match) as error:
        sample(pipe, **kwargs)
    assert "\n" not in str(error.value)
