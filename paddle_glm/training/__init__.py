"""Finetuning GLM on Paddle's own engine: data (``data.py``), the loop (``loop.py``),
checkpoints and resume (``checkpoints.py``) and the output directory: one writer, ``--overwrite``, write
errors (``output.py``); ``paddle_glm/distributed.py`` starts the processes of ``--nproc``.
``paddle-glm finetune`` is the command line over :func:`finetune`.
"""
from .loop import FinetuneArgs, finetune

__all__ = ["FinetuneArgs", "finetune"]
