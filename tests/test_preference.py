"""The user study in miniature: sides drawn fairly, wins counted from the rater's side, the judge and the widget."""

import pytest
import torch

from addlib.bench.preference import PreferenceStudy, attribute_judge, wilson_interval
from addlib.course.train_evaluators import make_malformed
from addlib.evaluators import load_attribute_classifier
from addlib.shapes import make_shapes


def test_wilson_interval_matches_known_values_and_stays_in_range():
    low, high = wilson_interval(8, 10)  # the textbook example: 0.490 to 0.943
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 5)[0] == 0.0 and 0 < wilson_interval(0, 5)[1] < 1  # no wins still leaves doubt
    assert wilson_interval(5, 5)[1] == 1.0 and wilson_interval(0, 0) == (0.0, 1.0)


def _study(n=40, seed=0):
    a, b = torch.zeros(n, 3, 4, 4), torch.ones(n, 3, 4, 4)  # model a's images are grey, b's white
    return PreferenceStudy({"a": a, "b": b}, [f"prompt {k}" for k in range(n)], seed=seed)


def test_sides_are_drawn_by_the_seed_and_wins_follow_the_model_not_the_side():
    study = _study()
    assert study.left_model == _study().left_model != _study(seed=1).left_model
    assert 10 < sum(study.left_model) < 30  # both sides used
    for k in range(len(study)):
        left, right = study.pair(k)
        study.answer(k, "left" if left.mean() > right.mean() else "right")  # a rater who always wants white
    results = study.results()
    assert results["b"]["win rate"] == 1.0 and results["a"]["wins"] == 0 and results["b"]["trials"] == 40
    assert results["b"]["interval"] == wilson_interval(40, 40)


def test_ties_count_half_and_the_judge_answers_only_open_trials():
    study = _study(n=4)
    study.answer(0, "tie")
    assert study.judge_rest(lambda left, right, prompt: "tie") == 3
    assert study.results()["a"]["win rate"] == 0.5 and study.answered_by == ["you", "judge", "judge", "judge"]
    assert "1 answered by you, 3 by the judge; 4 ties" in study.summary()


def test_attribute_judge_prefers_the_image_that_shows_the_prompt():
    judge = attribute_judge(load_attribute_classifier())
    images, prompts, _ = make_shapes(8, seed=7)
    blank = images[:, :, :1, :1].expand_as(images)  # each image's own background, no shape
    assert all(judge(images[k], blank[k], prompts[k]) == "left" for k in range(8))
    assert all(judge(blank[k], images[k], prompts[k]) == "right" for k in range(8))
    assert judge(images[0], images[0], prompts[0]) == "tie"
    # the same scenes drawn as stars, crosses, blobs...: the classifier may read the shape it expects in one,
    # but it refuses them, so the genuine shape still wins
    malformed, kinds = make_malformed(8, seed=7)
    assert all(judge(malformed[k], images[k], prompts[k]) == "right" for k in range(8)), kinds


def test_the_widget_records_a_click_on_the_trial_it_shows():
    study = _study(n=3)
    box = study.widget()
    left, right, tie = box.children[2].children
    right.click()
    tie.click()
    assert study.answers == ["right", "tie", None] and box.children[3].value == "2 of 3 answered"
    left.click()
    assert left.disabled and "All trials answered" in box.children[0].value


@pytest.mark.parametrize("make, message", [
    (lambda: PreferenceStudy({"a": torch.zeros(2, 3, 4, 4)}, ["x", "y"]), "a study compares two models, got 1"),
    (lambda: PreferenceStudy({"a": torch.zeros(2, 3, 4, 4), "b": torch.zeros(3, 3, 4, 4)}, ["x", "y"]),
     "got 2 prompts and images {'a': 2, 'b': 3}"),
    (lambda: PreferenceStudy({"a": torch.zeros(1, 3, 4, 4), "b": torch.zeros(1, 3, 4, 4)}, ["x"], question="fun"),
     "unknown question 'fun'; choose one of prompt, quality"),
    (lambda: _study(n=2).answer(0, "up"), "unknown choice 'up'; choose one of left, right, tie"),
    (lambda: _study(n=2).answer(5, "left"), "trial 5 does not exist; the study has trials 0 to 1"),
])
def test_bad_input_says_what_to_do(make, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        make()
