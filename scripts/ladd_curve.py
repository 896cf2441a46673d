"""How a LADD student's quality grows over training: the miniature's LADD recipe (train_add's defaults with
--discriminator ladd), its EMA student scored every EVERY steps at one and four sampling steps on NUM prompts of
the second prompt set (shapes seed 8, the set for choosing between runs, never the bench's seed 7).

    python scripts/ladd_curve.py STEPS EVERY NUM      # e.g. 1000 100 512: 24 minutes on 2 cores

Prints one row per evaluation and writes them to runs/ladd_curve.json. The trainer's step-indexed random draws
make the run the same as ``python -m addlib.train_add --discriminator ladd --steps STEPS``.
"""
import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from addlib.bench import _evaluation_set, _quality_row
from addlib.evaluators import load_attribute_classifier
from addlib.sampling import sample
from addlib.train_add import ADDTrainer, Config, student_pipeline

CHOOSING_SEED = 8

torch.manual_seed(0)
steps, every, num_prompts = (int(v) for v in sys.argv[1:4])
trainer = ADDTrainer(Config(discriminator="ladd", steps=steps), Accelerator())
classifier = load_attribute_classifier()
_, prompts, reference = _evaluation_set(num_prompts, CHOOSING_SEED)
curve = []
for step in range(steps + 1):
    if step and step % every == 0:
        pipe, row = student_pipeline(trainer), {"step": step}
        for sampling_steps in (1, 4):
            quality = _quality_row(sample(pipe, prompts, sampling_steps, seed=1, sampler="add"), prompts, reference,
                                   classifier)
            row |= {f"{sampling_steps}: {key}": quality[key] for key in ("joint acc", "2+ shapes", "shapes-FID")}
        curve.append(row)
        print(row, flush=True)
        Path("runs").mkdir(exist_ok=True)
        Path("runs/ladd_curve.json").write_text(json.dumps(curve, indent=1))
    if step < steps:
        trainer.step(step)
