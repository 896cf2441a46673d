"""What the discriminators can see and how they fare: linear probes of their features, fresh heads trained on the
student's fakes, and the health a finished run logged (notebooks 05 and 08)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tqdm import tqdm  # a text bar: in a notebook its last state stays in the saved output

from addlib.bench.tables import print_table
from addlib.loading import STUDENT_DIR, TEACHER_DIR
from addlib.probe import HEADS_SWEEP, Pool
from addlib.shapes import make_shapes
from addlib.utils.commands import at_least


def bench_probe(args: argparse.Namespace) -> list[dict]:
    """Linear probes of the shape of small shapes (held-out seed 9) in the two discriminators' features: the
    TinyViT's tokens that ADD's heads read (its CLS, and its patch tokens pooled), and the teacher UNet's
    blocks that LADD's read, on latents re-noised to each of ``args.timesteps`` with the empty prompt."""
    from addlib.evaluators import load_feature_network
    from addlib.forward_process import add_noise
    from addlib.latent_discriminator import teacher_tokens, unet_blocks
    from addlib.loading import load_pipeline
    from addlib.pipeline import encode_latents, text_encoder_output
    from addlib.probe import linear_probe, pooled_tokens
    from addlib.shapes import SEEDS, SIZES

    vit, teacher = load_feature_network(), load_pipeline()
    num_timesteps = len(teacher.scheduler.alphas_cumprod)
    if any(not 0 <= t < num_timesteps for t in args.timesteps):
        raise ValueError(f"--timesteps must lie in 0..{num_timesteps - 1} (the teacher's), got {args.timesteps}")
    images, _, labels = make_shapes(args.num_images, seed=SEEDS["held_out"])
    small = labels[:, 2] == SIZES.index("small")
    images, shapes = images[small], labels[small, 0]
    layers = list(range(1, vit.num_layers, 2))
    rows = []
    for layer, tokens in zip(layers, vit.features(images, layers)):
        rows.append({"features": f"TinyViT block {layer}, CLS", **{f"t = {t}": "" for t in args.timesteps},
                     "clean image": f"{linear_probe(tokens[:, 0], shapes):.3f}"})
        rows.append({"features": f"TinyViT block {layer}, patches", **{f"t = {t}": "" for t in args.timesteps},
                     "clean image": f"{linear_probe(pooled_tokens(tokens[:, 1:]), shapes):.3f}"})
    latents = encode_latents(teacher.vae, images)  # the posterior's mean
    empty = text_encoder_output(teacher, [""])[0].expand(len(images), -1, -1)  # the prompt must not name the shape
    blocks = list(unet_blocks(teacher.unet))
    read = {block: {} for block in blocks}
    generator = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(latents.shape, generator=generator).to(latents)  # one draw, every t
    for t in tqdm(args.timesteps, desc="noise levels"):
        timesteps = torch.full((len(images),), t)
        noisy = add_noise(latents, noise, timesteps, teacher.scheduler.alphas_cumprod)
        for block, tokens in zip(blocks, teacher_tokens(teacher.unet, blocks, noisy, timesteps, empty)):
            read[block][f"t = {t}"] = f"{linear_probe(pooled_tokens(tokens), shapes):.3f}"
    rows += [{"features": f"teacher UNet {block}", **read[block], "clean image": ""} for block in blocks]
    print(f"shape of {len(shapes)} small shapes (shapes seed {SEEDS['held_out']}), logistic regression on 70%, "
          f"accuracy on the other 30% (chance 0.333); tokens pooled by mean and max")
    print_table(rows)
    return rows


@torch.no_grad()
def one_step_pool(teacher, student_unet, num_images: int, seed: int, resolution: int = 32,
                  batch_size: int = 256) -> Pool:
    """``num_images`` real shapes (``seed``) and the student's one-step predictions for their captions, from pure
    noise at t = 999 (ADD's one-step sampling), decoded with the teacher's VAE, each fake marked right or wrong
    by the shipped evaluator (:func:`~addlib.bench.metrics.prompt_correct`), which no discriminator ever reads. The
    pool is on the teacher's device."""
    from addlib.bench.metrics import prompt_correct
    from addlib.evaluators import load_attribute_classifier
    from addlib.loading import to_model
    from addlib.pipeline import decode_latents, denoise, encode_latents, text_encoder_output

    images, captions, _ = make_shapes(num_images, seed, resolution, omit_prob=0.5)
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, num_images, batch_size):
        batch, words = to_model(images[start:start + batch_size], teacher.vae), captions[start:start + batch_size]
        latents = encode_latents(teacher.vae, batch, generator)
        encoded = text_encoder_output(teacher, words)
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.full((len(batch),), len(teacher.scheduler.alphas_cumprod) - 1)
        fake_latents = denoise(student_unet, teacher.scheduler, noise, timesteps, encoded[0])[0]
        parts.append((batch, latents, encoded[0], encoded.pooler_output,
                      decode_latents(teacher, fake_latents).clamp(-1, 1), fake_latents))
    columns = [torch.cat(column) for column in zip(*parts)]
    return Pool(*columns, prompt_correct(columns[4], captions, load_attribute_classifier()))


def bench_heads(args: argparse.Namespace) -> list[dict]:
    """Fresh discriminators, one per setting of :data:`addlib.probe.HEADS_SWEEP` (a change from the shipped
    recipe), each trained alone to tell real shapes from the student's one-step fakes of their captions, and
    scored on held-out images (shapes seed ``held_out``): how much each discriminator can see."""
    from addlib.add_trainer import make_discriminator
    from addlib.loading import load_pipeline
    from addlib.probe import HEADS_SWEEP, heads_probe
    from addlib.shapes import SEEDS
    from addlib.train_add import Config

    unknown = [name for name in args.settings if name not in HEADS_SWEEP]
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r}; choose from: {'; '.join(HEADS_SWEEP)}")
    teacher, student = load_pipeline(args.teacher, device="cpu"), load_pipeline(args.student, device="cpu")
    for part in (teacher.unet, teacher.vae, teacher.text_encoder, student.unet):
        part.requires_grad_(False)
    train = one_step_pool(teacher, student.unet, args.num_images, SEEDS["add"])
    held_out = one_step_pool(teacher, student.unet, args.held_out, SEEDS["held_out"])
    rows = []
    for name in tqdm(args.settings, desc="discriminators"):
        config = Config(**HEADS_SWEEP[name])
        torch.manual_seed(args.seed)  # the heads' initial weights
        discriminator = make_discriminator(config, teacher)
        optimizer = torch.optim.Adam(discriminator.heads.parameters(), lr=config.discriminator_lr,
                                     betas=(config.adam_beta1, config.adam_beta2))
        start = time.perf_counter()
        result = heads_probe(discriminator, optimizer, train, held_out, config.r1_weight, args.steps,
                             config.batch_size, args.seed)
        rows.append({"discriminator": name, "held-out accuracy": f"{result['held_out_accuracy']:.3f}",
                     "real above its fake": f"{result['pairs']:.3f}", "score gap": f"{result['held_out_gap']:.2f}",
                     "right fake above wrong": f"{result['right_above_wrong']:.3f}",
                     "hinge (last fifth)": f"{result['train_hinge']:.2f}",
                     "hinge at chance": f"{result['hinge_at_chance']:.0f}",
                     "seconds": f"{time.perf_counter() - start:.0f}"})
    print(f"fresh heads trained alone for {args.steps} steps of {Config().batch_size} on {args.num_images} real shapes "
          f"against {args.student}'s one-step fakes; accuracy on {args.held_out} held-out pairs (shapes seed "
          f"{SEEDS['held_out']}), 0.5 at chance; {int((~held_out.fake_right).sum())} of the held-out fakes are wrong "
          f"by the evaluator")
    print_table(rows)
    return rows


def bench_health(args: argparse.Namespace) -> list[dict]:
    """The health of finished ADD runs, from the measurements their trainer logged (``loss_log.json`` in each
    folder): the discriminator's held-out accuracy over the first tenth of the run and over its second half,
    the hinge over its chance value, and the median ratio of the gradients the adversarial and the distillation
    terms put on the student."""
    import json
    import statistics

    from addlib.utils.runs import health_entries

    rows = []
    for folder in args.runs:
        path = Path(folder) / "loss_log.json"
        if not path.exists():
            raise ValueError(f"no loss_log.json in {folder}; give the output folder of a train_add run")
        log = health_entries(json.loads(path.read_text()), str(path))
        first, second = log[:max(1, len(log) // 10)], log[len(log) // 2:]
        ratio = statistics.median(e["grad_adversarial"] / max(e["grad_distillation"], 1e-12) for e in log)
        rows.append({"run": Path(folder).name, "entries": len(log),
                     "accuracy, first tenth": f"{statistics.mean(e['held_out_accuracy'] for e in first):.3f}",
                     "accuracy, second half": f"{statistics.mean(e['held_out_accuracy'] for e in second):.3f}",
                     "hinge / chance, second half":
                         f"{statistics.mean(e['hinge'] / e['hinge_at_chance'] for e in second):.3f}",
                     "gradient adversarial / distillation": f"{ratio:.2f}"})
    print("the discriminator's accuracy on held-out real images against the student's one-step fakes (0.5 at "
          "chance), its hinge over the hinge of heads that say 0 to everything, and the median ratio of the "
          "gradient norms each loss put on the student")
    print_table(rows)
    return rows


def add_parsers(subcommands) -> None:
    """The subcommands probe, heads and health."""
    probe = subcommands.add_parser("probe", help="linear probes of small shapes in ADD's and LADD's features")
    probe.add_argument("--num-images", type=at_least(20), default=3000, help="of which about half are small")
    probe.add_argument("--timesteps", type=int, nargs="+", default=[0, 100, 249, 499, 749])
    probe.add_argument("--seed", type=int, default=0, help="the re-noising's")
    probe.set_defaults(run=bench_probe)

    heads = subcommands.add_parser("heads", help="how well fresh discriminator heads tell the student's fakes")
    heads.add_argument("--teacher", default=str(TEACHER_DIR), help="pipeline folder or hub id")
    heads.add_argument("--student", default=str(STUDENT_DIR), help="pipeline folder of the student whose fakes")
    heads.add_argument("--settings", nargs="+", default=list(HEADS_SWEEP), metavar="NAME",
                       help="the discriminators to train, by name: " + "; ".join(HEADS_SWEEP))
    heads.add_argument("--num-images", type=at_least(2), default=2048, help="real images (and fakes) to train on")
    heads.add_argument("--held-out", type=at_least(2), default=512, help="held-out pairs to score")
    heads.add_argument("--steps", type=at_least(1), default=300)
    heads.add_argument("--seed", type=int, default=0, help="the heads' initial weights and batches")
    heads.set_defaults(run=bench_heads)

    health = subcommands.add_parser("health", help="the discriminator's health in finished ADD runs, from their logs")
    health.add_argument("runs", nargs="+", metavar="FOLDER", help="output folders of train_add runs")
    health.set_defaults(run=bench_health)
