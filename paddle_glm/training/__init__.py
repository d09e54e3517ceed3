"""Finetuning GLM on Paddle's own engine: data (``data.py``), the loop (``loop.py``),
checkpoints and resume (``checkpoints.py``), the output directory: one writer, ``--overwrite``, write
errors (``output.py``), and the glue to ``paddle.distributed.launch``
(``launch.py``). ``paddle-glm finetune`` is the command line over :func:`finetune`.
"""
from .loop import FinetuneArgs, finetune

__all__ = ["FinetuneArgs", "finetune"]
