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


def test_add_bench_compares_student_teacher_and_ablations(tmp_path, capsys):
    train(Config(steps=1, batch_size=2), tmp_path / "student", tmp_path / "run")
    bench.main(["add", "--student", str(tmp_path / "student"), "--num-images", "16",
                "--ablations", str(tmp_path / "student"), str(tmp_path / "missing")])
    out = capsys.readouterr().out
    assert first_column(out) == ["real images", *["teacher (DDIM)"] * 3, *["ADD student"] * 3, "ablation: student"]
    assert f"no ablation student in {tmp_path / 'missing'}" in out
    assert "student 1 step: accuracy" in out and "student 4 steps: accuracy" in out
