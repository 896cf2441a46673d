"""Every checker accepts a right answer and rejects plausible wrong ones with a message naming the case."""

import pytest
import torch

from addlib.course import checks


def add_noise_right(x0, noise, timesteps, alphas_cumprod):
    abar = alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def x0_from_epsilon_right(x_t, epsilon, timesteps, alphas_cumprod):
    abar = alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
    return (x_t - (1 - abar).sqrt() * epsilon) / abar.sqrt()


def _abar(a, t):
    return a[t].reshape(-1, 1, 1, 1)


def not_implemented(*args):
    raise NotImplementedError()


def test_right_answers_pass(capsys):
    checks.check_add_noise(add_noise_right)
    checks.check_x0_from_epsilon(x0_from_epsilon_right)
    assert capsys.readouterr().out.splitlines() == [
        "✓ add_noise passes all 3 cases",
        "✓ x0_from_epsilon passes all 3 cases",
    ]


@pytest.mark.parametrize(
    "wrong, expected",
    [
        (lambda x, n, t, a: _abar(a, t) * x + (1 - _abar(a, t)) * n,
         ["add_noise is wrong on case 1 of 3: one 3x8x8 image at t=0", "expected: tensor of shape (1, 3, 8, 8)",
          "largest difference", "hint: this is alphas_cumprod * x0 + (1 - alphas_cumprod) * noise"]),
        (lambda x, n, t, a: (1 - _abar(a, t)).sqrt() * x + _abar(a, t).sqrt() * n,
         ["add_noise is wrong on case 1 of 3", "hint: x0 and noise are swapped"]),
        (lambda x, n, t, a: _abar(a, t).sqrt() * x + (1 - _abar(a, t).sqrt()) * n,
         ["add_noise is wrong on case 1 of 3", "hint: the noise coefficient is 1 - sqrt(alphas_cumprod[t])"]),
        (lambda x, n, t, a: a[t].sqrt() * x + (1 - a[t]).sqrt() * n,  # forgets to reshape for broadcasting
         ["add_noise raised RuntimeError on case 2 of 3: a batch of 4 images at t=[249, 499, 749, 999]",
          "hint: a per-sample coefficient such as alphas_cumprod[timesteps] has shape (B,)"]),
        (lambda x, n, t, a: add_noise_right(x, n, t, a)[0],  # drops the batch dimension
         ["add_noise is wrong on case 1 of 3", "expected shape (1, 3, 8, 8), got shape (3, 8, 8)"]),
        (lambda x, n, t, a: add_noise_right(x, n, t - 1, a),  # off by one in the index
         ["add_noise is wrong on case 1 of 3", "hint: the index is off by one"]),
        (lambda x, n, t, a: add_noise_right(x, n, t, a).numpy(),
         ["add_noise is wrong on case 1 of 3", "expected a torch.Tensor, got ndarray"]),
        (not_implemented,
         ["add_noise is not implemented yet: replace `raise NotImplementedError()` with your code."]),
    ],
)
def test_add_noise_checker_rejects_wrong_answers(wrong, expected):
    with pytest.raises(checks.CheckFailed) as failure:
        checks.check_add_noise(wrong)
    for fragment in expected:
        assert fragment in str(failure.value)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda x, e, t, a: (x - (1 - _abar(a, t)) * e) / _abar(a, t), "without the square roots"),
        (lambda x, e, t, a: (x - (1 - _abar(a, t)).sqrt() * e) * _abar(a, t).sqrt(), "you multiplied by sqrt(abar_t)"),
        (lambda x, e, t, a: x / _abar(a, t).sqrt() - (1 - _abar(a, t)).sqrt() * e, "subtract the scaled noise first"),
        (lambda x, e, t, a: (x + (1 - _abar(a, t)).sqrt() * e) / _abar(a, t).sqrt(), "the noise is subtracted"),
    ],
)
def test_x0_from_epsilon_checker_names_the_mistake(wrong, hint):
    with pytest.raises(checks.CheckFailed, match="x0_from_epsilon is wrong on case 1 of 3") as failure:
        checks.check_x0_from_epsilon(wrong)
    assert hint in str(failure.value)


def test_learner_input_mutation_does_not_leak_into_later_cases():
    def in_place(x, n, t, a):
        x.mul_(0)  # corrupts its argument, then answers correctly from the corrupted input
        return add_noise_right(x, n, t, a)

    with pytest.raises(checks.CheckFailed, match="add_noise is wrong on case 1 of 3"):
        checks.check_add_noise(in_place)


def test_failure_renders_in_ipython_without_a_traceback():
    try:
        checks.check_add_noise(not_implemented)
    except checks.CheckFailed as failure:
        lines = failure._render_traceback_()
    assert len(lines) == 1 and "add_noise is not implemented yet" in lines[0]


def test_nan_output_is_reported():
    with pytest.raises(checks.CheckFailed, match="the result contains NaN or inf"):
        checks.check_add_noise(lambda x, n, t, a: torch.full_like(x, float("nan")))


def ddim_step_right(v, t, t_prev, x, a):
    alpha, sigma = a[t].sqrt(), (1 - a[t]).sqrt()
    abar_prev = a[t_prev] if t_prev >= 0 else torch.tensor(1.0)
    return abar_prev.sqrt() * (alpha * x - sigma * v) + (1 - abar_prev).sqrt() * (sigma * x + alpha * v)


def test_ddim_and_guidance_checkers_accept_right_answers(capsys):
    checks.check_ddim_step(ddim_step_right)
    checks.check_classifier_free_guidance(lambda u, c, s: u + s * (c - u))
    assert capsys.readouterr().out.splitlines() == [
        "✓ ddim_step passes all 3 cases",
        "✓ classifier_free_guidance passes all 3 cases",
    ]


def _parts(v, t, x, a):
    alpha, sigma = a[t].sqrt(), (1 - a[t]).sqrt()
    return alpha * x - sigma * v, sigma * x + alpha * v


@pytest.mark.parametrize(
    "wrong, expected",
    [
        (lambda v, t, tp, x, a: ddim_step_right(v, t, tp, x, a) if t != 999 else (x - (1 - a[t]).sqrt() * v) / a[t].sqrt(),
         "ddim_step is wrong on case 1 of 3: 2 latents of 4x8x8, t=999 -> t_prev=749"),
        (lambda v, t, tp, x, a: a[tp].sqrt() * _parts(v, t, x, a)[0] + (1 - a[tp]).sqrt() * _parts(v, t, x, a)[1],
         "hint: t_prev = -1 means no noise is left"),
        (lambda v, t, tp, x, a: ddim_step_right(v, t, tp, x, a).transpose(0, 1), "expected shape (2, 4, 8, 8), got shape (4, 2, 8, 8)"),
        (lambda v, t, tp, x, a: (a[tp] if tp >= 0 else torch.tensor(1.0)).sqrt() * _parts(v, t, x, a)[1]
         + (1 - (a[tp] if tp >= 0 else torch.tensor(1.0))).sqrt() * _parts(v, t, x, a)[0],
         "hint: x0 and epsilon are swapped when re-noising"),
    ],
)
def test_ddim_checker_rejects_wrong_answers(wrong, expected):
    with pytest.raises(checks.CheckFailed) as failure:
        checks.check_ddim_step(wrong)
    assert expected in str(failure.value)


@pytest.mark.parametrize(
    "wrong, hint",
    [
        (lambda u, c, s: c + s * (c - u), "start from the unconditional prediction"),
        (lambda u, c, s: u + s * (u - c), "the direction is from uncond towards cond"),
        (lambda u, c, s: (1 + s) * c - s * u, "guidance_scale s is the paper's 1 + w"),
    ],
)
def test_guidance_checker_names_the_mistake(wrong, hint):
    with pytest.raises(checks.CheckFailed, match="classifier_free_guidance is wrong on case 1 of 3") as failure:
        checks.check_classifier_free_guidance(wrong)
    assert hint in str(failure.value)


# The ADD-loss checkers (notebooks 03 and 04): the solutions pass, each plausible mistake gets its hint.

def sds_weight_right(t, a):
    return a[t].double().sqrt() * (1 - a[t].double()).sqrt() / 2


def test_sds_weight_checker(capsys):
    checks.check_sds_weight(sds_weight_right)
    assert capsys.readouterr().out.strip() == "✓ sds_weight passes all 2 cases"
    with pytest.raises(checks.CheckFailed, match="multiply by DreamFusion's w"):
        checks.check_sds_weight(lambda t, a: a[t].double().sqrt() / (2 * (1 - a[t].double()).sqrt()))


def distillation_right(teacher, x, embeds, t, noise, stop=True, pixels=True):
    from addlib.pipeline import decode_latents

    abar = teacher.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    with torch.set_grad_enabled(not stop):
        noisy = alpha * x + sigma * noise
        target = alpha * noisy - sigma * teacher.unet(noisy, t, encoder_hidden_states=embeds).sample
    if pixels:
        x, target = decode_latents(teacher, x), decode_latents(teacher, target)
    return (alpha.flatten() * (x - target).pow(2).flatten(1).mean(1)).mean()


@pytest.mark.parametrize("wrong, hint", [
    (lambda *args: distillation_right(*args, stop=False), "the gradient also flows through the teacher"),
    (lambda *args: distillation_right(*args, pixels=False), "decode both x_theta"),
])
def test_distillation_checker(teacher, wrong, hint, capsys):
    checks.check_distillation_loss(distillation_right, teacher)
    assert capsys.readouterr().out.strip() == "✓ distillation_loss passes all 3 cases"
    with pytest.raises(checks.CheckFailed, match=hint):
        checks.check_distillation_loss(wrong, teacher)


def hinge_right(real, fake):
    return sum(torch.relu(1 - r).mean() + torch.relu(1 + f).mean() for r, f in zip(real, fake))


def test_hinge_checker(capsys):
    checks.check_hinge_discriminator_loss(hinge_right)
    assert capsys.readouterr().out.strip() == "✓ hinge_discriminator_loss passes all 3 cases"
    with pytest.raises(checks.CheckFailed, match="the signs are swapped"):
        checks.check_hinge_discriminator_loss(lambda real, fake: hinge_right(fake, real))


def r1_right(logits, features, create_graph=True, square=True):
    grads = torch.autograd.grad([z.mean(dim=1).sum() for z in logits], features, create_graph=create_graph)
    norms = [g.pow(2).flatten(1).sum(1) if square else g.flatten(1).norm(dim=1) for g in grads]
    return sum(n.mean() for n in norms)


def test_r1_checker(capsys):
    checks.check_r1_penalty(r1_right)
    assert "✓ r1_penalty keeps its graph" in capsys.readouterr().out
    with pytest.raises(checks.CheckFailed, match=r"\*squared\* norm"):
        checks.check_r1_penalty(lambda z, f: r1_right(z, f, square=False))
    with pytest.raises(checks.CheckFailed, match="create_graph=True"):
        checks.check_r1_penalty(lambda z, f: r1_right(z, f, create_graph=False))


def generator_right(trainer, latents, noise, timesteps, text, condition, generator,
                    lam=None, adv=1.0, detach=False, noised=True, discriminator_hinge=False, guidance=3.0,
                    distill_first=False):
    from addlib.discriminator import hinge_generator_loss, paired_generators
    from addlib.distillation import distillation_loss
    from addlib.pipeline import decode_latents

    teacher = trainer.teacher
    abar = teacher.scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * latents + (1 - abar).sqrt() * noise if noised else latents
    v = trainer.student(noisy, timesteps, encoder_hidden_states=text).sample
    x_theta = abar.sqrt() * noisy - (1 - abar).sqrt() * v
    fake = decode_latents(teacher, x_theta)
    judged = fake.detach() if detach else fake

    def distill():
        return distillation_loss(teacher, x_theta, text, guidance_scale=guidance, uncond_embeds=trainer.empty,
                                 generator=generator)

    first = distill() if distill_first else None
    logits = trainer.discriminator(judged, **condition, generator=paired_generators(generator)[0])
    adversarial = sum(torch.relu(1 + lg).mean() for lg in logits) if discriminator_hinge else hinge_generator_loss(logits)
    second = first if distill_first else distill()
    return adv * adversarial + (trainer.config.distillation_weight if lam is None else lam) * second


def test_generator_loss_checker(capsys):
    from accelerate import Accelerator

    from addlib.add_trainer import ADDTrainer

    from addlib.train_add import Config

    trainer = ADDTrainer.from_config(Config(batch_size=2), Accelerator())
    checks.check_generator_loss(generator_right, trainer)
    assert capsys.readouterr().out.strip() == "✓ generator_loss passes all 2 cases"
    for mistake, hint in [(dict(lam=1.0, adv=25.0), "lambda = 25 weights the distillation loss"),
                          (dict(detach=True), "the fakes were detached"),
                          (dict(noised=False), r"noised\* to its timestep"),
                          (dict(discriminator_hinge=True), "not the discriminator's max"),
                          (dict(guidance=1.0), "the teacher's target uses guidance"),
                          (dict(distill_first=True), "the random draws come in another order")]:
        with pytest.raises(checks.CheckFailed, match=hint):
            checks.check_generator_loss(lambda *a: generator_right(*a, **mistake), trainer)
    with pytest.raises(checks.CheckFailed, match="calls the library's own ADDTrainer.generator_loss"):
        checks.check_generator_loss(lambda trainer, *a: trainer.generator_loss(*a), trainer)


def renoise_right(x0, prev, noise, alphas_cumprod, last_is_x0=True):
    abar = alphas_cumprod[prev.clamp(min=0)].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    return torch.where((prev < 0).view(-1, 1, 1, 1), x0, noisy) if last_is_x0 else noisy


def test_renoise_checker(capsys):
    checks.check_renoise(renoise_right)
    assert capsys.readouterr().out.strip() == "✓ renoise passes all 3 cases"
    with pytest.raises(checks.CheckFailed, match="return x0 itself"):
        checks.check_renoise(lambda *a: renoise_right(*a, last_is_x0=False))


def test_lora_parameter_count_checker(teacher, capsys):
    def right(unet, rank, targets):
        layers = [m for name, m in unet.named_modules()
                  if isinstance(m, torch.nn.Linear) and any(name.endswith(t) for t in targets)]
        return sum(rank * (m.in_features + m.out_features) for m in layers)

    checks.check_lora_parameter_count(right, teacher.unet)
    assert capsys.readouterr().out.strip() == "✓ lora_parameter_count passes all 3 cases"
    with pytest.raises(checks.CheckFailed, match="r \\* \\(in \\+ out\\) parameters, not r \\* in"):
        checks.check_lora_parameter_count(lambda u, r, t: right(u, r, t) - sum(
            r * m.out_features for n, m in u.named_modules() if isinstance(m, torch.nn.Linear)
            and any(n.endswith(x) for x in t)), teacher.unet)


def test_training_memory_checker(capsys):
    checks.check_training_memory(lambda frozen, trainable, b: (frozen + trainable) * b + 12 * trainable)
    assert capsys.readouterr().out.strip() == "✓ training_memory passes all 3 cases"
    with pytest.raises(checks.CheckFailed, match="you counted 8"):
        checks.check_training_memory(lambda frozen, trainable, b: (frozen + trainable) * b + 8 * trainable)


def stream_batch_right(x0, alpha, sigma, noise, frames, shift=None, finished_first=False, own_alpha=False,
                       own_noise=False, noisy=True):
    shift = shift or frames
    landing = slice(None, -shift) if own_alpha else slice(shift, None)
    buffer = alpha[landing] * x0[:-shift]
    if noisy:
        buffer = buffer + sigma[landing] * (noise[:-shift] if own_noise else noise[shift:])
    return (x0[:frames] if finished_first else x0[-shift:]), buffer


@pytest.mark.parametrize("mistake, hint", [
    (dict(finished_first=True), "the finished frames are the last block"),
    (dict(own_alpha=True), "moves on to the NEXT block's timestep"),
    (dict(own_noise=True), "each slot keeps its own fixed noise"),
    (dict(noisy=False), "add sigma \\* noise"),
    (dict(shift=1), "shift by `frames` rows everywhere"),
])
def test_stream_batch_update_checker(capsys, mistake, hint):
    checks.check_stream_batch_update(stream_batch_right)
    assert capsys.readouterr().out.strip() == "✓ stream_batch_update passes all 3 cases"
    with pytest.raises(checks.CheckFailed, match=hint):
        checks.check_stream_batch_update(lambda *a: stream_batch_right(*a, **mistake))


def skip_right(frame, reference, threshold, clamp=True, normalise=True, keep=False, hard=False, dim=None):
    if dim is None:
        cos = torch.nn.functional.cosine_similarity(frame.flatten(), reference.flatten(), dim=0).item()
    else:
        cos = torch.nn.functional.cosine_similarity(frame, reference, dim=dim).mean().item()
    if hard:
        return float(cos > threshold)
    p = ((1 - cos) if keep else (cos - threshold)) / ((1 - threshold) if normalise else 1)
    return min(1.0, max(0.0, p)) if clamp else p


@pytest.mark.parametrize("mistake, hint", [
    (dict(clamp=False), "never negative"), (dict(normalise=False), "divide by \\(1 - eta\\)"),
    (dict(keep=True), "probability of \\*processing\\*"), (dict(hard=True), "the filter is stochastic"),
    (dict(dim=1), "as whole vectors"),
])
def test_skip_probability_checker(capsys, mistake, hint):
    checks.check_skip_probability(skip_right)
    assert capsys.readouterr().out.strip() == "✓ skip_probability passes all 5 cases"
    with pytest.raises(checks.CheckFailed, match=hint):
        checks.check_skip_probability(lambda *a: skip_right(*a, **mistake))


# The LADD checkers (notebook 08).

def logit_normal_right(batch, m, s, generator, squash=True, fraction=False, swapped=False, uniform=False,
                       rounded=False):
    n = (torch.rand if uniform else torch.randn)(batch, generator=generator)
    z = s + m * n if swapped else m + s * n
    z = torch.sigmoid(z) if squash else z
    if fraction:
        return z
    return ((z * 1000).round() if rounded else z * 1000).long().clamp(0, 999)


@pytest.mark.parametrize("mistake, hint", [
    (dict(squash=False), "through torch.sigmoid"), (dict(fraction=True), "return timesteps, not fractions"),
    (dict(swapped=True), "you swapped them"), (dict(uniform=True), "not a uniform"),
    (dict(rounded=True), "rather than rounding"),
])
def test_logit_normal_timesteps_checker(capsys, mistake, hint):
    checks.check_logit_normal_timesteps(logit_normal_right)
    assert capsys.readouterr().out.strip() == "✓ logit_normal_timesteps passes all 3 cases"
    with pytest.raises(checks.CheckFailed, match=hint):
        checks.check_logit_normal_timesteps(lambda *a: logit_normal_right(*a, **mistake))


def teacher_tokens_right(unet, layers, noisy, timesteps, text, transpose=True, in_order=True, remove=True):
    blocks = {**{f"down.{i}": b for i, b in enumerate(unet.down_blocks)}, "mid": unet.mid_block,
              **{f"up.{i}": b for i, b in enumerate(unet.up_blocks)}}
    caught = {}

    def keep(name):
        def hook(module, inputs, output):
            output = output[0] if isinstance(output, tuple) else output
            caught[name] = output.flatten(2).transpose(1, 2) if transpose else output.flatten(2)
        return hook

    hooks = [blocks[name].register_forward_hook(keep(name)) for name in layers]
    unet(noisy, timesteps, encoder_hidden_states=text)
    if remove:
        for hook in hooks:
            hook.remove()
    return [caught[name] for name in (layers if in_order else [n for n in blocks if n in layers])]


@pytest.mark.parametrize("mistake, hint", [
    (dict(transpose=False), "transpose its last two dimensions"), (dict(in_order=False), "in the order of `layers`"),
    (dict(remove=False), "left forward hooks on 1 block"),
])
def test_teacher_tokens_checker(capsys, mistake, hint):
    checks.check_teacher_tokens(teacher_tokens_right)
    assert capsys.readouterr().out.strip() == "✓ teacher_tokens passes all 3 cases"
    with pytest.raises(checks.CheckFailed, match=hint):
        checks.check_teacher_tokens(lambda *a: teacher_tokens_right(*a, **mistake))


def test_a_name_error_in_a_notebook_says_it_comes_from_a_cell_that_stopped(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        shell.run_cell("from addlib.course import checks")
        checks.explain_name_errors()  # the package registers itself on import; again, in this shell
        result = shell.run_cell("mine.shape")
        err = capsys.readouterr().err
        assert "NameError: name 'mine' is not defined; it is made by a cell above: if that cell stopped" in err
        assert "Traceback" not in err and not result.success
    finally:
        InteractiveShell.clear_instance()


def discriminator_right(discriminator, real, fake, r1_weight, generator, detach=True, r1_on="features", swap=False,
                        paired=True, r1=True, **condition):
    from addlib.discriminator import paired_generators

    real_generator, fake_generator = paired_generators(generator) if paired else (generator, generator)
    real = real.detach().requires_grad_() if r1_on == "pixels" else real
    features, context = discriminator.read(real, real_generator, **condition)
    features = [f.detach().requires_grad_() for f in features] if r1_on == "features" else features
    real_logits = discriminator.heads_logits(features, *context)
    fake_logits = discriminator(fake.detach() if detach else fake, **condition, generator=fake_generator)
    if swap:
        real_logits, fake_logits = fake_logits, real_logits
    hinge = sum(torch.relu(1 - lg).mean() for lg in real_logits) + sum(torch.relu(1 + lg).mean() for lg in fake_logits)
    if not (r1 and r1_weight):
        return hinge
    verdicts = [lg.mean(dim=1).sum() for lg in (fake_logits if swap else real_logits)]
    variables = {"features": features, "pixels": [real],
                 "parameters": [p for p in discriminator.heads.parameters() if p.requires_grad]}[r1_on]
    gradients = torch.autograd.grad(sum(verdicts), variables, create_graph=True)
    if r1_on == "parameters":
        return hinge + r1_weight * sum(g.pow(2).sum() for g in gradients)
    return hinge + r1_weight * sum(g.pow(2).flatten(1).sum(1).mean() for g in gradients)


@pytest.fixture(scope="module")
def small_trainer():
    from accelerate import Accelerator

    from addlib.add_trainer import ADDTrainer

    from addlib.train_add import Config

    return ADDTrainer.from_config(Config(batch_size=2), Accelerator())


def test_discriminator_loss_checker(capsys, small_trainer):
    checks.check_discriminator_loss(discriminator_right, small_trainer)
    assert capsys.readouterr().out.strip() == "✓ discriminator_loss passes all 4 cases"
    for mistake, hint in [(dict(detach=False), "the fakes reach the heads undetached"),
                          (dict(r1_on="pixels"), "not on the pixels"),
                          (dict(r1_on="parameters"), "not to the heads' parameters"),
                          (dict(swap=True), "the wrong way round"),
                          (dict(paired=False), "paired_generators"),
                          (dict(r1=False), "R1 is missing")]:
        with pytest.raises(checks.CheckFailed, match=hint):
            checks.check_discriminator_loss(lambda *a, **c: discriminator_right(*a, **mistake, **c), small_trainer)
    with pytest.raises(checks.CheckFailed, match="calls the library's own Discriminator.loss"):
        checks.check_discriminator_loss(lambda d, *a, **c: d.loss(*a, **c)[0], small_trainer)


def train_step_right(trainer, step, order="generator first", together=False, clip=True, ema=True):
    from addlib.utils.runs import ema_update

    config = trainer.config
    inputs = trainer.inputs(step)
    images, generator = inputs.pop("images"), inputs["generator"]

    def discriminator_step(fake, extra=None):
        trainer.discriminator.heads.requires_grad_(True)
        d_loss = discriminator_right(trainer.discriminator, images, fake, config.r1_weight, generator,
                                     **inputs["condition"])
        trainer.discriminator_optimizer.zero_grad()
        if extra is not None:
            trainer.student_optimizer.zero_grad()
            d_loss = d_loss + extra
        d_loss.backward()
        trainer.discriminator_optimizer.step()

    if order == "discriminator first":
        with torch.no_grad():
            _, _, _, fake = trainer.generator_loss(**inputs)
        discriminator_step(fake)
    trainer.discriminator.heads.requires_grad_(together)
    loss, _, _, fake = trainer.generator_loss(**inputs)
    if together:
        discriminator_step(fake, loss)
    else:
        trainer.student_optimizer.zero_grad()
        loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(trainer.trainable.parameters(), config.grad_clip)
    trainer.student_optimizer.step()
    if order == "generator first" and not together:
        discriminator_step(fake)
    if ema:
        ema_update(trainer.ema.params, trainer.trainable.params, config.ema_decay)


def test_train_step_checker(capsys, small_trainer):
    before = [p.clone() for p in small_trainer.trainable.parameters()]
    checks.check_train_step(train_step_right, small_trainer)
    assert capsys.readouterr().out.strip() == "✓ train_step passes all 2 cases"
    assert all(torch.equal(a, b) for a, b in zip(before, small_trainer.trainable.parameters()))  # put back
    for mistake, hint in [(dict(order="discriminator first"), "the discriminator's update comes second"),
                          (dict(together=True), "one backward pass for both losses"),
                          (dict(clip=False), "clipped before its step"),
                          (dict(ema=False), "the EMA of the student's weights")]:
        with pytest.raises(checks.CheckFailed, match=hint):
            checks.check_train_step(lambda *a: train_step_right(*a, **mistake), small_trainer)
    with pytest.raises(checks.CheckFailed, match="calls the library's own ADDTrainer.step"):
        checks.check_train_step(lambda trainer, step: trainer.step(step), small_trainer)
