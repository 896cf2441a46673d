"""The benchmark commands run end to end and print their tables (few prompts: correctness, not figures)."""

from addlib import bench
from addlib.train_add import Config, train


def first_column(out: str) -> list[str]:
    return [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")][1:]


def test_teacher_bench_prints_quality_rows(capsys):
    bench.main(["teacher", "--num-images", "16", "--steps", "1", "2", "--guidance-scales", "1"])
    out = capsys.readouterr().out
    assert first_column(out)[:2] == ["real images", "VAE round trip"]
    assert first_column(out)[-2:] == ["teacher", "teacher"]
    assert "joint acc" in out and "shapes-FID" in out
    bench.main(["teacher", "--num-images", "16", "--steps", "1", "--guidance-scales", "1", "--prompts-seed", "8"])
    other = capsys.readouterr().out
    assert "captions of shapes seed 8" in other and "captions of shapes seed 7" in out
    real_row = lambda text: next(line for line in text.splitlines() if line.startswith("| ") and "real images" in line)
    assert real_row(other) != real_row(out), "another prompts seed must draw other real images"


def test_add_bench_compares_student_teacher_and_ablations(tmp_path, capsys):
    train(Config(steps=1, batch_size=2), tmp_path / "student", tmp_path / "run")
    student = str(tmp_path / "student")
    bench.main(["add", "--student", student, "--ladd-student", student, "--num-images", "16",
                "--ablations", student, str(tmp_path / "missing")])
    out = capsys.readouterr().out
    assert first_column(out) == ["real images", *["teacher (DDIM)"] * 3, *["ADD student"] * 3, *["LADD student"] * 3,
                                 *["ablation: student"] * 2]
    assert f"no ablation student in {tmp_path / 'missing'}" in out
    for name in ("ADD student", "LADD student"):
        assert f"\n{name} 1 step: accuracy" in out and f"\n{name} 4 steps: accuracy" in out


def test_stream_bench_times_every_setup_and_checks_outputs(capsys):
    bench.main(["stream", "--num-frames", "6", "--repeats", "1", "--hold", "3"])
    out = capsys.readouterr().out
    assert first_column(out)[:3] == ["compute bound: encode + UNet + decode", "compute bound, 3 UNet rows",
                                     "naive diffusers img2img loop"]
    assert first_column(out)[-1] == "stream + tiny VAE"
    differences = [float(line.split("|")[-2]) for line in out.splitlines()
                   if line.startswith("| ") and line.split("|")[-2].strip() not in ("-", "max abs diff vs naive")]
    assert len(differences) == 3 and max(differences) < 1e-4  # stream, no Stream Batch, Stream Batch
    assert "of the compute bound" in out and "similarity filter on the static clip" in out


def test_stream_bench_in_half_precision_keeps_the_streams_close_to_diffusers(capsys):
    bench.main(["stream", "--num-frames", "4", "--repeats", "1", "--hold", "2", "--dtype", "bfloat16"])
    out = capsys.readouterr().out
    assert "torch.bfloat16" in out
    assert "(target: half-precision tolerance, 0.03): yes" in out  # the stream casts as diffusers does
