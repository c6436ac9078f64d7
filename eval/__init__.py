"""Evaluation of trained checkpoints with clip_benchmark (``python -m xsample_openclip.eval.compare``).

Needs the ``[eval]`` extra; without it, importing this package stops with the install command.
"""
from xsample_openclip.extras import require

require("eval", what="evaluation (xsample_openclip.eval)")
