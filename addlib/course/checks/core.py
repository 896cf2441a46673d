"""The checkers' framework: a learner's function run on a few cases against ``addlib``'s own implementation.

:func:`run_checks` either prints one line saying the function passed or raises :class:`CheckFailed` with what
went wrong: which case, what was expected, what came back, and, when the answer matches a common
:class:`Mistake`, a hint naming it. In Jupyter the failure shows as that message alone, without a traceback
into this package.
"""

from __future__ import annotations

import contextlib
import numbers
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from unittest.mock import patch

import torch


class CheckFailed(AssertionError):
    """A learner's answer is wrong; the message says how."""

    def _render_traceback_(self) -> list[str]:
        # IPython calls this instead of printing a traceback: the learner needs the message, not our stack.
        return [f"\x1b[31m{line}\x1b[0m" if i == 0 else line for i, line in enumerate(str(self).splitlines())]


@dataclass
class Case:
    """One input to try: a description a learner can read, and the positional arguments."""

    description: str
    args: tuple
    kwargs: dict = field(default_factory=dict)


@dataclass
class Mistake:
    """A plausible wrong answer: when the learner's output equals ``wrong(*args)``, show ``hint``."""

    hint: str
    wrong: Callable


BROADCAST_HINT = (
    "a per-sample coefficient such as alphas_cumprod[timesteps] has shape (B,); reshape it to (B, 1, 1, 1) "
    "so it multiplies each sample of shape (B, C, H, W) as a whole."
)


def _summary(value) -> str:
    if isinstance(value, tuple):
        return "tuple (" + "; ".join(_summary(v) for v in value) + ")"
    if not isinstance(value, torch.Tensor):
        return f"{type(value).__name__} {value!r}"[:200]
    head = ", ".join(f"{v:.4f}" for v in value.detach().flatten()[:4].tolist())
    return f"tensor of shape {tuple(value.shape)}, dtype {value.dtype}, first values [{head}, ...]"


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy's scalars included


def _difference(got, expected: torch.Tensor, atol: float, rtol: float) -> str | None:
    """Why ``got`` is not ``expected`` (a tensor, a tuple of them, or a number), or None when they agree."""
    if _is_number(expected):  # a count or a probability: compared as a float64 scalar
        if not (_is_number(got) or isinstance(got, torch.Tensor)):
            return f"expected a number, got {type(got).__name__}"
        expected = torch.tensor(float(expected), dtype=torch.float64)
        got = torch.tensor(float(got), dtype=torch.float64) if _is_number(got) else got
    if isinstance(expected, tuple):
        if not isinstance(got, tuple) or len(got) != len(expected):
            return f"expected a tuple of {len(expected)} tensors, got {type(got).__name__}"
        problems = [(i, _difference(g, e, atol, rtol)) for i, (g, e) in enumerate(zip(got, expected))]
        return next((f"returned value {i}: {problem}" for i, problem in problems if problem), None)
    if not isinstance(got, torch.Tensor):
        return f"expected a torch.Tensor, got {type(got).__name__}"
    if got.shape != expected.shape:
        return f"expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}"
    got = got.detach().to(expected.device, expected.dtype)
    if not torch.isfinite(got).all() and torch.isfinite(expected).all():
        return "the result contains NaN or inf"
    if torch.allclose(got, expected, atol=atol, rtol=rtol, equal_nan=True):
        return None
    error = (got - expected).abs().nan_to_num(0.0)
    index = tuple(torch.unravel_index(error.argmax(), error.shape))
    return f"largest difference {error.max().item():.4g} at index {tuple(int(i) for i in index)}"


def run_checks(
    name: str,
    fn: Callable,
    reference: Callable,
    cases: Sequence[Case],
    mistakes: Sequence[Mistake] = (),
    atol: float = 1e-5,
    rtol: float = 1e-4,
    forbidden: Sequence[tuple[object, str]] = (),
    error_hints: Sequence[tuple[str, str]] = (),
) -> None:
    """Run ``fn`` and ``reference`` on every case; print a pass line or raise :class:`CheckFailed`.

    ``forbidden`` lists ``(owner, attribute)`` pairs, the library's own answer to the exercise: while ``fn``
    runs each of them refuses to be called, so an answer that merely delegates to it fails with that said.
    ``error_hints`` pairs a fragment of an error message with the mistake that raises it."""
    for number, case in enumerate(cases, start=1):
        where = f"case {number} of {len(cases)}: {case.description}"
        expected = reference(*case.args, **case.kwargs)
        try:
            # Clones, so a learner's in-place edit cannot change what the reference or later cases see.
            with _refusing(name, forbidden):
                got = fn(*[a.clone() if isinstance(a, torch.Tensor) else a for a in case.args], **case.kwargs)
        except CheckFailed:
            raise
        except NotImplementedError:
            raise CheckFailed(f"{name} is not implemented yet: replace `raise NotImplementedError()` with your code.") from None
        except Exception as error:  # the learner's code failed: say where, keep the type and message
            message = f"{name} raised {type(error).__name__} on {where}\n  {error}"
            for fragment, hint in (("must match the size", BROADCAST_HINT), *error_hints):
                if fragment in str(error):
                    message += f"\n  hint: {hint}"
            raise CheckFailed(message) from None
        problem = _difference(got, expected, atol, rtol)
        if problem is None:
            continue
        lines = [
            f"{name} is wrong on {where}",
            f"  expected: {_summary(expected)}",
            f"  got:      {_summary(got)}",
            f"  {problem}",
        ]
        hint = _matching_mistake(fn, cases, mistakes, atol, rtol)
        if hint:
            lines.append(f"  hint: {hint}")
        raise CheckFailed("\n".join(lines))
    print(f"✓ {name} passes all {len(cases)} cases")


@contextlib.contextmanager
def _refusing(name: str, forbidden: Sequence[tuple[object, str]]):
    """Each ``(owner, attribute)`` replaced, meanwhile, by a function that fails with a message naming it."""
    def refusal(label: str) -> Callable:
        def refuse(*args, **kwargs):
            raise CheckFailed(f"{name} calls the library's own {label}, which is the answer itself: write it from "
                              f"the pieces the exercise names.")
        return refuse

    with contextlib.ExitStack() as stack:
        for owner, attribute in forbidden:
            label = f"{getattr(owner, '__name__', type(owner).__name__)}.{attribute}"
            stack.enter_context(patch.object(owner, attribute, refusal(label)))
        yield


def _matching_mistake(fn: Callable, cases: Sequence[Case], mistakes: Sequence[Mistake], atol: float,
                      rtol: float) -> str | None:
    """The hint of the mistake that reproduces ``fn`` on every case: one case alone can fit two mistakes."""
    try:
        answers = [fn(*[a.clone() if isinstance(a, torch.Tensor) else a for a in c.args], **c.kwargs) for c in cases]
    except Exception:  # a learner's function that fails on some case matches no clean mistake
        return None
    for mistake in mistakes:
        try:
            if all(_difference(got, mistake.wrong(*c.args, **c.kwargs), atol, rtol) is None
                   for got, c in zip(answers, cases)):
                return mistake.hint
        except Exception:  # a mistake this machine cannot even compute (error_hints name it instead)
            continue
    return None


def coefficient(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    return alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)


NAME_ERROR_HINT = ("it is made by a cell above: if that cell stopped with an error (an unfinished exercise, say), "
                   "fix it and run the cells from there again")


def explain_name_errors() -> None:
    """In a notebook, show a ``NameError`` as one line that says where the name should have come from: after
    an unfinished exercise the next cells fail on names it never made, and a traceback hides why."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return

    def show(shell, kind, error, traceback, tb_offset=None):
        print(f"NameError: {error}; {NAME_ERROR_HINT}.", file=sys.stderr)

    shell.set_custom_exc((NameError,), show)
