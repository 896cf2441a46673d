"""Checkers for the notebooks' exercises, one module per notebook; every one is reachable as ``checks.check_...``.

Each ``check_*`` takes the learner's function, runs it on a few cases against ``addlib``'s own implementation
and either prints one line saying it passed or raises :class:`CheckFailed` with what went wrong: which case,
what was expected, what came back, and, when the answer matches a common mistake, a hint naming it. In
Jupyter the failure shows as that message alone, without a traceback into this package.

Adding a checker: in its notebook's module, describe the cases, the reference (the library's own function) and
the mistakes you expect, call :func:`run_checks` (``addlib.course.checks.core``), and import it here.

Imported in a notebook, this package also turns a ``NameError`` into one line saying that the name comes from a
cell above that stopped, as a cell after an unfinished exercise does (:func:`explain_name_errors`).
"""

from addlib.course.checks.core import Case, CheckFailed, Mistake, explain_name_errors, run_checks
from addlib.course.checks.nb01_forward_process import check_add_noise, check_x0_from_epsilon
from addlib.course.checks.nb02_sampling import check_classifier_free_guidance, check_ddim_step
from addlib.course.checks.nb03_score_distillation import check_distillation_loss, check_sds_weight
from addlib.course.checks.nb04_discriminator import check_hinge_discriminator_loss, check_r1_penalty
from addlib.course.checks.nb05_add_training import (
    check_discriminator_loss,
    check_generator_loss,
    check_renoise,
    check_train_step,
)
from addlib.course.checks.nb06_real_scale import check_lora_parameter_count, check_training_memory
from addlib.course.checks.nb07_streaming import check_skip_probability, check_stream_batch_update
from addlib.course.checks.nb08_ladd import check_logit_normal_timesteps, check_teacher_tokens

explain_name_errors()

__all__ = [
    "Case",
    "CheckFailed",
    "Mistake",
    "explain_name_errors",
    "run_checks",
    "check_add_noise",
    "check_x0_from_epsilon",
    "check_ddim_step",
    "check_classifier_free_guidance",
    "check_distillation_loss",
    "check_sds_weight",
    "check_hinge_discriminator_loss",
    "check_r1_penalty",
    "check_generator_loss",
    "check_discriminator_loss",
    "check_train_step",
    "check_renoise",
    "check_lora_parameter_count",
    "check_training_memory",
    "check_stream_batch_update",
    "check_skip_probability",
    "check_logit_normal_timesteps",
    "check_teacher_tokens",
]
