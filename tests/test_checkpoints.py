"""Command lines built from a Config: every option described by the field's own comment."""

import argparse
import dataclasses
import importlib

import pytest

from addlib.utils.commands import add_config_options, field_comments


@dataclasses.dataclass
class Example:
    width: int = 4  # pixels per side
    # a block above a field
    # documents it in two lines
    depth: int = 2
    # a heading over a group

    ratio: float = 0.5
    flag: bool = False  # 100% optional

    def check(self) -> None:  # not a field
        pass


def test_a_field_is_described_by_its_line_comment_or_the_comment_lines_right_above_it():
    assert field_comments(Example) == {"width": "pixels per side",
                                       "depth": "a block above a field documents it in two lines",
                                       "ratio": "", "flag": "100% optional"}


def test_help_shows_each_options_comment_and_default():
    parser = argparse.ArgumentParser()
    add_config_options(parser, Example)
    text = " ".join(parser.format_help().split())
    assert "--width WIDTH pixels per side (default: 4)" in text
    assert "--depth DEPTH a block above a field documents it in two lines (default: 2)" in text
    assert "--ratio RATIO (default: 0.5)" in text and "100% optional" in text  # a % in a comment survives


@pytest.mark.parametrize("module", ["train_add", "course.train_teacher", "course.train_tiny_vae",
                                    "course.train_evaluators"])
def test_every_training_option_says_what_it_does(module):
    config = importlib.import_module(f"addlib.{module}").Config
    comments = field_comments(config)
    assert set(comments) == {field.name for field in dataclasses.fields(config)}
    undocumented = [name for name, text in comments.items() if not text]
    assert not undocumented, f"{module}.Config fields without a comment for --help: {', '.join(undocumented)}"
