"""The benchmark commands run end to end and print their tables (few prompts: correctness, not figures)."""

import json

import pytest

from addlib import bench
from addlib.add_trainer import ADDTrainer
from addlib.train_add import Config, train


def first_column(out: str) -> list[str]:
    return [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")][1:]


def test_teacher_bench_returns_and_prints_quality_rows(capsys):
    rows = bench.main(["teacher", "--num-images", "16", "--steps", "1", "2", "--guidance-scales", "1"])
    out = capsys.readouterr().out
    assert [row["model"] for row in rows] == first_column(out)
    assert [row["model"] for row in rows][:2] == ["real images", "VAE round trip"]
    assert [(row["model"], row["steps"]) for row in rows[-2:]] == [("teacher", 1), ("teacher", 2)]
    assert all(0 <= float(row["joint acc"]) <= 1 and float(row["shapes-FID"]) >= 0 for row in rows)
    other = bench.main(["teacher", "--num-images", "16", "--steps", "1", "--guidance-scales", "1",
                        "--prompts-seed", "8"])
    assert "captions of shapes seed 8" in capsys.readouterr().out and "captions of shapes seed 7" in out
    assert other[0] != rows[0], "another prompts seed must draw other real images"


def test_add_bench_compares_student_teacher_and_ablations(tmp_path, capsys):
    for discriminator in ("add+ladd", "ladd"):
        train(Config(steps=1, batch_size=2, discriminator=discriminator), tmp_path / discriminator,
              tmp_path / f"run-{discriminator}")
    student, ladd = str(tmp_path / "add+ladd"), str(tmp_path / "ladd")
    with pytest.raises(ValueError, match="--ablations .*missing: no pipeline folder there"):  # before any work
        bench.main(["add", "--student", student, "--ablations", ladd, str(tmp_path / "missing")])
    rows = bench.main(["add", "--student", student, "--ladd-student", ladd, "--num-images", "16",
                       "--ablations", ladd])
    out = capsys.readouterr().out  # each student is named by the discriminator its recipe trained it with
    assert [row["model"] for row in rows] == first_column(out) == [
        "real images", *["teacher (DDIM)"] * 3, *["ADD + LADD student"] * 3, *["LADD student"] * 3,
        *["ablation: ladd"] * 2]
    assert [row["steps"] for row in rows[4:7]] == [1, 2, 4]
    for name in ("ADD + LADD student", "LADD student"):
        assert f"\n{name} 1 step: accuracy" in out and f"\n{name} 4 steps: accuracy" in out


def test_the_curve_bench_trains_as_train_add_does_and_resumes_exactly(tmp_path, straight_and_resumed, same_tensors):
    def curve(out, run_dir, resume):
        argv = ["curve", "--steps", "2", "--every", "1", "--num-images", "8", "--run-dir", str(run_dir)]
        out.mkdir(exist_ok=True)
        (out / "rows.json").write_text(json.dumps(bench.main(argv + ["--resume"] * resume)))

    (straight, straight_run), (resumed, _) = straight_and_resumed(curve, ADDTrainer, "step", 2)
    rows = json.loads((straight / "rows.json").read_text())
    assert rows == json.loads((resumed / "rows.json").read_text())  # the row scored before the interruption kept
    assert [row["step"] for row in rows] == [1, 2] and all(0 <= float(row["4 steps: joint acc"]) <= 1 for row in rows)
    train(Config(steps=2, checkpoint_every=1), tmp_path / "student", tmp_path / "run")
    assert same_tensors(tmp_path / "run" / "checkpoint.safetensors", straight_run / "checkpoint.safetensors")
    with pytest.raises(ValueError, match=r"--run-dir .*README.md is a file; give a folder"):
        bench.main(["curve", "--steps", "2", "--run-dir", "README.md"])
    with pytest.raises(ValueError, match=r"--decay-from must be a step in 0\.\.1, got 2"):
        bench.main(["curve", "--steps", "2", "--decay-from", "2", "--run-dir", str(tmp_path / "other")])


def test_the_stream_and_quality_benches_refuse_bad_options_before_any_work():
    with pytest.raises(ValueError, match=r"^--resolution 30 is not a positive multiple of the VAE's"):
        bench.main(["stream", "--resolution", "30"])
    with pytest.raises(ValueError, match=r"^threshold eta must be in \[0, 1\), got 2.0$"):
        bench.main(["stream", "--threshold", "2"])
    with pytest.raises(FileNotFoundError, match=r"^no Inception weights file at missing.pth"):
        bench.main(["quality", "--student", "data/student", "--reference", "data", "--inception-weights",
                    "missing.pth"])


def test_stream_bench_times_every_setup_and_checks_outputs(capsys):
    rows = bench.main(["stream", "--num-frames", "6", "--repeats", "1", "--hold", "3"])
    out = capsys.readouterr().out
    for row in rows:  # latency as a viewer feels it, beside the frame rate
        assert 0 < float(row["p50 ms"]) <= float(row["p99 ms"]) and float(row["first frame ms"]) > 0
    assert first_column(out)[:3] == ["compute bound: encode + UNet + decode", "compute bound, 3 UNet rows",
                                     "naive diffusers img2img loop"]
    assert first_column(out)[-1] == "stream + tiny VAE"
    differences = [float(line.split("|")[-2]) for line in out.splitlines()
                   if line.startswith("| ") and line.split("|")[-2].strip() not in ("-", "max abs diff vs naive")]
    assert len(differences) == 3 and max(differences) < 1e-4  # stream, no Stream Batch, Stream Batch
    assert "of the compute bound" in out and "similarity filter on the static clip" in out


@pytest.mark.parametrize("dtype, tolerance", [("float16", "0.01"), ("bfloat16", "0.03")])
def test_stream_bench_in_half_precision_keeps_the_streams_close_to_diffusers(dtype, tolerance, capsys):
    """The trained miniature in half precision on the CPU: the stream computes diffusers' images to within a few
    roundings (measured: 5e-4 in float16 at one step, 1.5e-3 at four; 3.9e-3 in bfloat16)."""
    bench.main(["stream", "--num-frames", "4", "--repeats", "1", "--hold", "2", "--dtype", dtype, "--stages"])
    out = capsys.readouterr().out
    assert f"torch.{dtype}" in out
    assert f"(target: {dtype} tolerance, {tolerance}): yes" in out
    stages = {line.split("|")[1].strip(): float(line.split("|")[3]) for line in out.split("stage by stage")[1]
              .splitlines() if line.startswith("| ") and "stage" not in line}
    assert list(stages) == ["VAE encoder output", "UNet input, step 1", "UNet output, step 1", "decoder input",
                            "image"]
    assert stages["VAE encoder output"] == 0 and 0 < stages["image"] <= float(tolerance)


def test_heads_bench_trains_fresh_discriminators_and_scores_held_out_pairs():
    rows = bench.main(["heads", "--num-images", "8", "--held-out", "8", "--steps", "2",
                       "--settings", "shipped", "ADD + LADD"])
    assert [row["discriminator"] for row in rows] == ["shipped", "ADD + LADD"]
    assert [row["hinge at chance"] for row in rows] == ["6", "12"]  # three heads each, six together
    for row in rows:
        assert 0 <= float(row["held-out accuracy"]) <= 1 and 0 <= float(row["real above its fake"]) <= 1


def test_heads_bench_refuses_an_unknown_setting_naming_the_choices():
    import pytest

    with pytest.raises(ValueError, match=r"unknown setting 'gamma 5'; choose from: shipped; gamma 0;"):
        bench.main(["heads", "--settings", "gamma 5"])


def test_health_bench_reads_the_logged_measurements_of_a_run(tmp_path):
    import json

    import pytest

    from addlib.loading import STUDENT_DIR

    log = [{"step": 10 * i, "hinge": 3.0, "hinge_at_chance": 6.0, "held_out_accuracy": 0.5 + 0.01 * i,
            "grad_adversarial": 2.0, "grad_distillation": 4.0} for i in range(20)]
    (tmp_path / "loss_log.json").write_text(json.dumps([{"step": 0, "hinge": 6.0}, *log]))
    rows = bench.main(["health", str(tmp_path), str(STUDENT_DIR)])
    assert rows[0] | {"run": ""} == {"run": "", "entries": 20, "accuracy, first tenth": "0.505",
                                     "accuracy, second half": "0.645", "hinge / chance, second half": "0.500",
                                     "gradient adversarial / distillation": "0.50"}
    assert rows[1]["run"] == "student" and rows[1]["entries"] == 100  # every 10 of its 1,000 steps
    with pytest.raises(ValueError, match="no loss_log.json in"):
        bench.main(["health", str(tmp_path / "missing")])
