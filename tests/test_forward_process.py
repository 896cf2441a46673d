"""The forward process against diffusers' DDPMScheduler on the same configuration."""

import pytest
import torch
from diffusers import DDPMScheduler

from addlib.forward_process import add_noise, get_velocity, per_sample, predict_x0_and_epsilon
from addlib.schedules import (
    alphas_cumprod_from_betas,
    make_alphas_cumprod,
    make_betas,
    rescale_zero_terminal_snr,
    snr,
)

CONFIGS = [
    dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True),
    dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, num_train_timesteps=250),
]


def scheduler(config, **extra):
    return DDPMScheduler(**config, **extra)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_betas_and_alphas_cumprod_match_diffusers(config):
    betas = make_betas(**config)
    reference = scheduler(config)
    torch.testing.assert_close(betas, reference.betas, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(alphas_cumprod_from_betas(betas), reference.alphas_cumprod, rtol=1e-5, atol=1e-7)


def test_cosine_is_an_alias_of_squaredcos_cap_v2():
    torch.testing.assert_close(make_betas("cosine"), make_betas("squaredcos_cap_v2"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_add_noise_and_velocity_match_diffusers(config):
    reference = scheduler(config)
    alphas_cumprod = make_alphas_cumprod(**config)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 5, 3, 8, 8, generator=gen)
    timesteps = torch.tensor([0, 1, len(alphas_cumprod) // 2, len(alphas_cumprod) - 2, len(alphas_cumprod) - 1])
    torch.testing.assert_close(
        add_noise(x0, noise, timesteps, alphas_cumprod), reference.add_noise(x0, noise, timesteps)
    )
    torch.testing.assert_close(
        get_velocity(x0, noise, timesteps, alphas_cumprod), reference.get_velocity(x0, noise, timesteps)
    )


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_x0_prediction_matches_ddpm_step(prediction_type):
    config = CONFIGS[1]
    reference = scheduler(config, prediction_type=prediction_type, clip_sample=False)
    reference.set_timesteps(1000)
    alphas_cumprod = make_alphas_cumprod(**config)
    gen = torch.Generator().manual_seed(1)
    sample, model_output = torch.randn(2, 1, 4, 8, 8, generator=gen)
    for t in [999, 500, 3]:
        expected = reference.step(model_output, t, sample, generator=gen).pred_original_sample
        x0, _ = predict_x0_and_epsilon(model_output, sample, t, alphas_cumprod, prediction_type)
        torch.testing.assert_close(x0, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_conversions_recover_x0_and_noise(prediction_type):
    alphas_cumprod = make_alphas_cumprod("scaled_linear")
    gen = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(2, 4, 3, 16, 16, generator=gen, dtype=torch.float64)
    timesteps = torch.tensor([10, 300, 700, 990])
    x_t = add_noise(x0, noise, timesteps, alphas_cumprod)
    output = {"epsilon": noise, "sample": x0, "v_prediction": get_velocity(x0, noise, timesteps, alphas_cumprod)}
    pred_x0, pred_eps = predict_x0_and_epsilon(output[prediction_type], x_t, timesteps, alphas_cumprod, prediction_type)
    torch.testing.assert_close(pred_x0, x0)
    torch.testing.assert_close(pred_eps, noise)


def test_zero_terminal_snr():
    betas = make_betas("scaled_linear")
    rescaled = rescale_zero_terminal_snr(betas)
    before, after = alphas_cumprod_from_betas(betas), alphas_cumprod_from_betas(rescaled)
    assert before[-1] > 0.004  # SD's schedule leaks signal at its last step
    assert after[-1] == 0 and snr(after)[-1] == 0
    torch.testing.assert_close(after[0], before[0])  # the first step is kept
    assert torch.all(after[1:] < after[:-1])  # still a schedule: signal strictly decreases
    # At the last step x_T is pure noise: nothing of x0 survives.
    x0 = torch.ones(1, 3, 4, 4)
    assert torch.equal(add_noise(x0, torch.zeros_like(x0), 999, after), torch.zeros_like(x0))


def test_snr_is_decreasing_and_matches_definition():
    alphas_cumprod = make_alphas_cumprod("linear", beta_start=0.0001, beta_end=0.02)
    values = snr(alphas_cumprod)
    assert torch.all(values[1:] < values[:-1])
    torch.testing.assert_close(values[500], alphas_cumprod[500] / (1 - alphas_cumprod[500]))


def test_scalar_timestep_broadcasts_over_the_batch():
    alphas_cumprod = make_alphas_cumprod()
    x0, noise = torch.randn(2, 3, 3, 4, 4)
    torch.testing.assert_close(
        add_noise(x0, noise, 250, alphas_cumprod), add_noise(x0, noise, torch.tensor([250] * 3), alphas_cumprod)
    )


@pytest.mark.parametrize(
    "timesteps, match",
    [
        (torch.tensor([1, 2]), r"timesteps has shape \(2,\) but the batch has 3 samples"),
        (torch.tensor([0, 10, 1000]), r"timestep 1000 is out of range; this schedule has timesteps 0 to 999"),
        (torch.tensor([-1, 10, 20]), r"timestep -1 is out of range"),
        (torch.tensor([0.5, 1.0, 2.0]), r"timesteps must be integers, got dtype torch.float32"),
    ],
)
def test_bad_timesteps_give_one_line_errors(timesteps, match):
    x0 = torch.zeros(3, 3, 4, 4)
    with pytest.raises(ValueError, match=match) as error:
        add_noise(x0, x0, timesteps, make_alphas_cumprod())
    assert "\n" not in str(error.value)


def test_other_bad_input():
    x0 = torch.zeros(3, 3, 4, 4)
    with pytest.raises(ValueError, match=r"x0 and noise must have the same shape, got \(3, 3, 4, 4\) and \(3, 3, 4, 5\)"):
        add_noise(x0, torch.zeros(3, 3, 4, 5), 0, make_alphas_cumprod())
    with pytest.raises(ValueError, match=r"unknown beta_schedule 'cosin'; choose one of linear, scaled_linear"):
        make_betas("cosin")
    with pytest.raises(ValueError, match=r"unknown prediction_type 'eps'; choose one of epsilon, sample, v_prediction"):
        predict_x0_and_epsilon(x0, x0, 0, make_alphas_cumprod(), "eps")


def test_per_sample_shapes_for_broadcasting():
    coefficient = per_sample(torch.arange(10.0), torch.tensor([1, 9]), torch.zeros(2, 4, 8, 8))
    assert coefficient.shape == (2, 1, 1, 1)
    assert coefficient.flatten().tolist() == [1.0, 9.0]
