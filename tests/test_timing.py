"""The stream's clocks: frame rate, frame-time percentiles and the time to the first frame."""

import time

import pytest
import torch

from addlib.bench.timing import frames_per_second, max_difference, time_frames


def sleeper(set_up: float, per_frame: list[float]):
    """A stand-in stream: its set-up and each frame take at least the seconds given (sleep never returns early)."""
    def make():
        time.sleep(set_up)
        durations = iter(per_frame)
        return lambda frame: (time.sleep(next(durations)), frame * 2)[1]
    return make


def test_frame_times_give_the_median_the_stall_and_the_first_frames_wait():
    per_frame = [0.01] * 9 + [0.08]  # one stall in ten frames
    timed = time_frames(sleeper(0.05, per_frame), torch.arange(10.0), repeats=1)
    assert len(timed.seconds) == 1 and len(timed.seconds[0]) == 10
    assert 0.01 <= timed.percentile(50) < 0.04, "the median frame is an ordinary one"
    assert timed.percentile(99) >= 0.07, "the 99th percentile shows the stall the mean hides"
    assert timed.first_frame >= 0.06, "the first frame waits for the set-up"
    assert timed.fps <= 10 / 0.17
    assert [o.item() for o in timed.outputs] == [2 * k for k in range(10)]


def test_frames_per_second_is_the_fastest_pass():
    calls = iter([[0.03] * 4, [0.01] * 4])  # a slow pass, then a fast one
    make = lambda: sleeper(0.0, next(calls))()  # noqa: E731
    fps, outputs = frames_per_second(make, torch.ones(4), repeats=2)
    assert 4 / 0.12 < fps <= 4 / 0.04
    assert len(outputs) == 4


def test_max_difference_aligns_by_latency():
    reference = [torch.zeros(2), torch.ones(2)]
    assert max_difference([torch.full((2,), 5.0), torch.zeros(2), torch.ones(2)], reference, latency=1) == 0
    assert max_difference([torch.zeros(2), torch.full((2,), 1.5)], reference) == pytest.approx(0.5)


def test_nothing_to_time_is_refused_rather_than_timed_as_zero():
    for frames, repeats in ((torch.ones(0), 1), (torch.ones(3), 0)):
        with pytest.raises(ValueError, match=f"nothing to time: {len(frames)} frames and {repeats} repeats"):
            frames_per_second(sleeper(0.0, [0.0] * 3), frames, repeats)
