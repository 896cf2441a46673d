"""The ADD paper's user study in miniature: a two-alternative forced choice between two models' images.

ADD (Sauer et al., 2023, arXiv:2311.17042, Section 4) ranks its students by what people prefer, not by FID
alone: a rater sees two images made for one prompt, one from each model, in random order, and picks the one
that follows the prompt better (or the better image). A model's **win rate** over many such trials, with a
confidence interval, is the figure. :class:`PreferenceStudy` runs such a study in a notebook (ipywidgets), and
a judge, :func:`attribute_judge`, answers the trials nobody answered, so the notebook also runs unattended.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from addlib.bench.metrics import read_images
from addlib.shapes import labels_to_attributes, parse_caption

QUESTIONS = {"prompt": "Which image follows the prompt better?", "quality": "Which image looks more real?"}
CHOICES = ("left", "right", "tie")

# judge(left image, right image, prompt) -> "left", "right" or "tie"
Judge = Callable[[torch.Tensor, torch.Tensor, str], str]


def wilson_interval(wins: float, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a win rate (Wilson, 1927; z = 1.96 for 95%). Unlike p +- z sqrt(p(1-p)/n)
    it stays inside [0, 1] and keeps a width at 0 or n wins, where a few trials say little."""
    if trials <= 0:
        return 0.0, 1.0
    p = wins / trials
    centre = (p + z**2 / (2 * trials)) / (1 + z**2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / (1 + z**2 / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def attribute_judge(classifier) -> Judge:
    """A judge for the "prompt" question: the image in which the attribute classifier reads more of the prompt's
    named attributes right wins, holding exactly one shape (one blob by ``count_shapes``, and not refused as
    "none of these") counting as one attribute more; an equal score is a tie. It sees only what the classifier
    reads, so it stands in for a rater on prompt following, not on image quality."""
    def judge(left: torch.Tensor, right: torch.Tensor, prompt: str) -> str:
        asked, reading = parse_caption(prompt), read_images(torch.stack([left, right]), classifier)
        scores = [sum(labels_to_attributes(labels)[name] == value for name, value in asked.items()) + int(one)
                  for labels, one in zip(reading.labels, reading.one_shape.tolist())]
        return "left" if scores[0] > scores[1] else "right" if scores[1] > scores[0] else "tie"
    return judge


class PreferenceStudy:
    """Trials of one prompt and two images, one from each of two models, each model on a side drawn at random
    (seeded), so a rater's habit of picking one side cancels out.

    ``images`` maps each model's name to its images (N, 3, H, W) in [-1, 1], image k made for ``prompts[k]``.
    """

    def __init__(self, images: dict[str, torch.Tensor], prompts: list[str], question: str = "prompt",
                 seed: int = 0):
        if len(images) != 2:
            raise ValueError(f"a study compares two models, got {len(images)}: {list(images)}; pass a dict of two")
        if question not in QUESTIONS:
            raise ValueError(f"unknown question {question!r}; choose one of {', '.join(QUESTIONS)}")
        sizes = {name: len(batch) for name, batch in images.items()}
        if not prompts or any(size != len(prompts) for size in sizes.values()):
            raise ValueError(f"got {len(prompts)} prompts and images {sizes}; give each model one image per prompt")
        self.models, self.prompts, self.question = list(images), list(prompts), question
        self.images = [images[name] for name in self.models]
        # left_model[k]: the index (0 or 1) of the model shown on the left in trial k
        self.left_model = torch.randint(0, 2, (len(prompts),), generator=torch.Generator().manual_seed(seed)).tolist()
        self.answers: list[str | None] = [None] * len(prompts)
        self.answered_by: list[str | None] = [None] * len(prompts)

    def __len__(self) -> int:
        return len(self.prompts)

    def pair(self, trial: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (left, right) images of a trial."""
        left = self.left_model[trial]
        return self.images[left][trial], self.images[1 - left][trial]

    def answer(self, trial: int, choice: str, by: str = "you") -> None:
        if choice not in CHOICES:
            raise ValueError(f"unknown choice {choice!r}; choose one of {', '.join(CHOICES)}")
        if not 0 <= trial < len(self):
            raise ValueError(f"trial {trial} does not exist; the study has trials 0 to {len(self) - 1}")
        self.answers[trial], self.answered_by[trial] = choice, by

    def judge_rest(self, judge: Judge) -> int:
        """Let ``judge`` answer every trial still open; returns how many it answered."""
        open_trials = [k for k, answer in enumerate(self.answers) if answer is None]
        for k in open_trials:
            self.answer(k, judge(*self.pair(k), self.prompts[k]), by="judge")
        return len(open_trials)

    def results(self) -> dict[str, dict]:
        """Per model: wins (a tie counts half to each), answered trials, win rate and its 95% Wilson interval."""
        answered = [k for k, answer in enumerate(self.answers) if answer is not None]
        wins = [0.0, 0.0]
        for k in answered:
            if self.answers[k] == "tie":
                wins[0] += 0.5
                wins[1] += 0.5
            else:
                left = self.left_model[k]
                wins[left if self.answers[k] == "left" else 1 - left] += 1
        n = len(answered)
        return {name: {"wins": w, "trials": n, "win rate": w / n if n else float("nan"),
                       "interval": wilson_interval(w, n)} for name, w in zip(self.models, wins)}

    def summary(self) -> str:
        """One line per model, and who answered."""
        lines = [f"{name}: wins {r['win rate']:.0%} of {r['trials']} trials (95% interval "
                 f"{r['interval'][0]:.0%} to {r['interval'][1]:.0%})" for name, r in self.results().items()]
        by = [who for who in self.answered_by if who is not None]
        ties = sum(answer == "tie" for answer in self.answers)
        lines.append(f"question {QUESTIONS[self.question]!r}: {by.count('you')} answered by you, {by.count('judge')} "
                     f"by the judge; {ties} ties, each counted half to both")
        return "\n".join(lines)

    def widget(self):
        """Buttons to answer the open trials one after another; returns the ipywidgets box to display."""
        import ipywidgets as widgets

        from addlib.course.plotting import to_png

        views = [widgets.Image(format="png", width=128, height=128) for _ in range(2)]
        prompt, progress = widgets.HTML(), widgets.Label()
        buttons = [widgets.Button(description=label) for label in ("left", "right", "no difference")]
        state = {"trial": None}

        def show_next():
            state["trial"] = next((k for k, answer in enumerate(self.answers) if answer is None), None)
            done = sum(answer is not None for answer in self.answers)
            progress.value = f"{done} of {len(self)} answered"
            if state["trial"] is None:
                prompt.value = "<b>All trials answered:</b> run the next cell for the win rates."
                for button in buttons:
                    button.disabled = True
                return
            prompt.value = f"{QUESTIONS[self.question]} Prompt: <b>{self.prompts[state['trial']]}</b>"
            for view, image in zip(views, self.pair(state["trial"])):
                view.value = to_png(image)

        def on_click(choice):
            def handler(_):
                if state["trial"] is not None:
                    self.answer(state["trial"], choice)
                    show_next()
            return handler

        for button, choice in zip(buttons, CHOICES):
            button.on_click(on_click(choice))
        show_next()
        return widgets.VBox([prompt, widgets.HBox(views), widgets.HBox(buttons), progress])
