"""Finetuning GLM on Paddle's own engine: data (``data.py``), the loop (``loop.py``),
and checkpoints and resume (``checkpoints.py``); ``paddle_glm/distributed.py`` starts the processes
of ``--nproc``. ``paddle-glm finetune`` is the command line over :func:`finetune`.
"""
from .loop import FinetuneArgs, finetune

__all__ = ["FinetuneArgs", "finetune"]
