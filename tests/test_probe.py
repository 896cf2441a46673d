"""Linear probes: they read a feature that holds the label, not one that does not; and `bench probe` runs."""

import pytest
import torch

from addlib import bench
from addlib.probe import linear_probe, pooled_tokens


def test_a_probe_reads_what_the_features_hold_and_nothing_else():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(3, (600,), generator=generator)
    noise = torch.randn(600, 8, generator=generator)
    holding = noise + 4 * torch.nn.functional.one_hot(labels, 8).float()  # the label, written into three units
    assert linear_probe(holding, labels) >= 0.98
    assert 0.2 < linear_probe(noise, labels) < 0.45  # chance is 1/3
    with pytest.raises(ValueError, match=r"as many labels as feature rows \(got 5 and 600\)"):
        linear_probe(noise, labels[:5])


def test_pooled_tokens_keep_a_single_strong_token():
    tokens = torch.zeros(2, 64, 4)
    tokens[0, 17, 2] = 8.0  # one token of sixty-four, as a small shape covers
    pooled = pooled_tokens(tokens)
    assert pooled.shape == (2, 8) and pooled[0, 6] == 8.0 and pooled[0, 2] == 0.125 and pooled[1].abs().sum() == 0


def test_bench_probe_compares_both_feature_networks(capsys):
    rows = bench.main(["probe", "--num-images", "80", "--timesteps", "0", "749"])
    names = [row["features"] for row in rows]
    assert "TinyViT block 5, CLS" in names and "teacher UNet up.1" in names and "teacher UNet mid" in names
    assert all(0 <= float(v) <= 1 for row in rows for k, v in row.items() if k != "features" and v)
    assert "chance 0.333" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"--timesteps must lie in 0..999 \(the teacher's\), got \[1000\]"):
        bench.main(["probe", "--num-images", "40", "--timesteps", "1000"])
