"""What every trainer shares (addlib.utils.runs): the schedule, the per-step generators, the EMA, the loop's
bookkeeping, its checkpoints and NaN stops, and the recipe beside the model."""

import dataclasses
import json
import math

import pytest
import torch

from addlib.utils.runs import Run, TrainableParameters, ema_update, health_entries, lr_at, step_generator


@dataclasses.dataclass
class Tiny:
    lr: float = 0.1  # of the one weight
    ladd_layers: str = "mid"  # a field this configuration never reads

    def ignored(self) -> dict[str, str]:
        return {"ladd_layers": "never read here"}


def test_lr_warms_up_linearly_then_decays_by_a_cosine_to_a_tenth():
    assert [lr_at(step, 100, 1.0, 4) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 100, 1.0, 4) == pytest.approx(1.0)
    assert lr_at(52, 100, 1.0, 4) == pytest.approx(0.55)  # half way through the decay
    assert lr_at(100, 100, 1.0, 4) == pytest.approx(0.1)


def test_a_steps_generator_depends_on_seed_step_and_stage_alone():
    draw = lambda *key: torch.randn(3, generator=step_generator(*key)).tolist()  # noqa: E731
    assert draw(2, 5, 1) == draw(2, 5, 1)
    assert len({tuple(draw(*key)) for key in [(2, 5, 1), (3, 5, 1), (2, 6, 1), (2, 5, 2)]}) == 4


def test_the_ema_moves_one_minus_decay_of_the_way_and_holds_copies():
    model = torch.nn.Linear(2, 1)
    ema = TrainableParameters(model, copy=True)
    before = [p.clone() for p in ema.params]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema_update(ema.params, TrainableParameters(model).params, decay=0.9)
    for average, start in zip(ema.params, before):
        torch.testing.assert_close(average, start + 0.1)
    ema.copy_to(model)
    torch.testing.assert_close(model.weight, ema.params[0])


def run_steps(run_dir, steps, checkpoint_every=2, nan_at=None, resume=False):
    weight = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([weight], lr=Tiny().lr)
    run = Run(run_dir, {"model": torch.nn.ParameterList([weight])}, {"sgd": optimizer}, Tiny(), resume, step=0)
    for step in run.steps("step", steps, "tiny"):
        loss = (weight - 3).square().sum() * (float("nan") if step == nan_at else 1)
        run.check_loss(loss, "tiny", step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        run.advance(step, checkpoint_every, {"loss": loss.item()} if step % 2 == 0 else None)
    run.checkpoint()
    return run, weight


def test_advance_counts_logs_and_checkpoints_and_a_resume_repeats_the_run(tmp_path):
    straight, weight = run_steps(tmp_path / "straight", 5)
    assert straight.state["step"] == 5 and [entry["step"] for entry in straight.state["log"]] == [0, 2, 4]
    run_steps(tmp_path / "halves", 3)  # an interruption after three steps (checkpoint at 2, then the final one)
    resumed, resumed_weight = run_steps(tmp_path / "halves", 5, resume=True)
    torch.testing.assert_close(resumed_weight, weight)
    assert resumed.state["log"] == straight.state["log"]


def test_a_nan_stops_the_run_naming_the_last_good_checkpoint(tmp_path):
    with pytest.raises(FloatingPointError, match=r"the tiny loss became nan at step 3; the last good checkpoint "
                                                 r"\(step 2\) is in .*: lower the learning rate and rerun with "
                                                 r"--resume"):
        run_steps(tmp_path / "run", 5, nan_at=3)
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["state"]["step"] == 2
    with pytest.raises(FloatingPointError, match="no checkpoint was saved yet"):
        run_steps(tmp_path / "early", 5, nan_at=1)


def test_the_recipe_holds_the_command_without_what_the_run_never_read_and_the_log(tmp_path):
    run, _ = run_steps(tmp_path / "run", 3)
    recipe = run.write_recipe(tmp_path / "out", "addlib.tiny", final=1)
    assert recipe["command"] == "python -m addlib.tiny --lr 0.1"  # no --ladd-layers: ignored by this config
    assert recipe["config"] == {"lr": 0.1, "ladd_layers": "mid"} and recipe["final"] == 1
    assert recipe["device"].startswith("cpu (") and math.isfinite(recipe["minutes"])
    assert json.loads((tmp_path / "out" / "loss_log.json").read_text()) == run.state["log"]


def test_a_log_without_health_measurements_is_refused_in_one_line():
    assert health_entries([{"step": 0}, {"step": 10, "held_out_accuracy": 0.6}], "x") == [
        {"step": 10, "held_out_accuracy": 0.6}]
    with pytest.raises(ValueError, match="the log of 'old' holds no health measurements"):
        health_entries([{"step": 0, "hinge": 6.0}], "old")
