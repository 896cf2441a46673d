"""How a LADD student's quality grows over training: the miniature's LADD recipe (train_add's defaults with
--discriminator ladd), its EMA student scored every EVERY steps at one and four sampling steps on NUM prompts of
the second prompt set (shapes seed 8, the set for choosing between runs, never the bench's seed 7).

    python scripts/ladd_curve.py STEPS EVERY NUM      # e.g. 1000 100 512: 24 minutes on 2 cores
    python scripts/ladd_curve.py 2000 250 512 --decay-from 1000 --start runs/ladd-low-run   # see below

``--decay-from STEP`` lowers the student's learning rate linearly from its value at STEP to 0 at STEPS.
``--start RUN_DIR`` begins at the last checkpoint of the same recipe (``python -m addlib.train_add
--discriminator ladd --out FOLDER --run-dir RUN_DIR``, of any length) instead of step 0, so a 1,000-step run saves the first
half of a 2,000-step curve.

Prints one row per evaluation and writes them to runs/ladd_curve.json. The trainer's step-indexed random draws
make the run the same as ``python -m addlib.train_add --discriminator ladd --steps STEPS``, resumed or not.
"""
import argparse
import json
from pathlib import Path

import torch
from accelerate import Accelerator

from addlib.bench.quality import evaluation_set, quality_row
from addlib.evaluators import load_attribute_classifier
from addlib.sampling import sample
from addlib.add_trainer import ADDTrainer, student_pipeline
from addlib.train_add import Config
from addlib.utils.checkpoints import resume_checkpoint
from addlib.utils.runs import set_lr

CHOOSING_SEED = 8

parser = argparse.ArgumentParser()
for name in ("steps", "every", "num_prompts"):
    parser.add_argument(name, type=int)
parser.add_argument("--decay-from", type=int, default=None)
parser.add_argument("--start", type=Path, default=None)
args = parser.parse_args()

torch.manual_seed(0)
config = Config(discriminator="ladd", steps=args.steps)
trainer = ADDTrainer.from_config(config, Accelerator())
start = 0
if args.start:  # the checkpoint's recipe must be this one but for its length
    saved = json.loads((args.start / "checkpoint.json").read_text())["state"]["config"]
    start = resume_checkpoint(args.start, trainer.modules(), trainer.optimizers(),
                              vars(config) | {"steps": saved["steps"]})["step"]
classifier = load_attribute_classifier()
_, prompts, reference = evaluation_set(args.num_prompts, CHOOSING_SEED)
curve = []
for step in range(start, args.steps + 1):
    if step > start and step % args.every == 0:
        pipe, row = student_pipeline(trainer), {"step": step}
        for sampling_steps in (1, 4):
            quality = quality_row(sample(pipe, prompts, sampling_steps, seed=1, sampler="add"), prompts, reference,
                                   classifier)
            row |= {f"{sampling_steps}: {key}": quality[key] for key in ("joint acc", "2+ shapes", "shapes-FID")}
        curve.append(row)
        print(row, flush=True)
        Path("runs").mkdir(exist_ok=True)
        Path("runs/ladd_curve.json").write_text(json.dumps(curve, indent=1))
    if step < args.steps:
        if args.decay_from is not None and step >= args.decay_from:
            set_lr(trainer.student_optimizer, config.lr * (args.steps - step) / (args.steps - args.decay_from))
        trainer.step(step)
