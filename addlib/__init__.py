"""addlib: the small library behind the course on Adversarial Diffusion Distillation and streaming inference.

One module per idea, grown notebook by notebook: ``schedules`` and ``forward_process`` (notebook 01),
``shapes`` (the captioned-shapes world every notebook trains and measures on), ``checks`` (the exercises'
checkers), ``plotting``, ``exercises`` (solutions -> learner notebooks) and ``bench`` (speed and quality
tables). Import what you need from its module, e.g. ``from addlib.forward_process import add_noise``.
"""

__version__ = "0.1.0"
