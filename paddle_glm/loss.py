"""The language-model loss of GLM's blank-infilling training (PaddleNLP 2.8.1's semantics).

Blank infilling puts the targets in a short span (the Part B tokens), and ``loss_mask`` gives
every other position weight 0. So :func:`lm_loss` runs the LM head and the softmax over the
vocabulary on the counted positions only: the loss and every gradient are those of the full
``[b, s, V]`` logits, without most of their cost.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import paddle
import paddle.nn.functional as F

from .errors import GLMError


def lm_loss(hidden: paddle.Tensor, lm_head: Callable[[paddle.Tensor], paddle.Tensor], labels: paddle.Tensor,
            loss_mask=None, label_smoothing: float = 0.0, logits: Optional[paddle.Tensor] = None) -> paddle.Tensor:
    """PaddleNLP 2.8.1's GLM loss: the per-token cross entropy of ``lm_head(hidden)`` against
    ``labels``, mixed with ``label_smoothing`` times the mean of ``-log_softmax`` over the
    vocabulary, then averaged over the positions where ``loss_mask`` is 1 (all without it).
    Computed in float32.

    Args:
        hidden: the final hidden states ``[b, s, h]``.
        lm_head: ``[..., h]`` -> ``[..., V]`` logits. With ``loss_mask`` it runs on the counted
            positions only (one host read: how many there are).
        labels: int64 ``[b, s]``, the next token at each position.
        loss_mask: ``[b, s]`` weights (0/1 from the tokenizer), or None (every position counts).
        logits: ``lm_head(hidden)`` when the caller has it already: used when every position counts.
    """
    b, s = hidden.shape[:2]
    if list(labels.shape) != [b, s]:
        raise GLMError(f"labels: expected shape {[b, s]} (one per input token), got {list(labels.shape)}")
    labels = labels.reshape([-1])  # [b*s]
    if loss_mask is None:
        logits = logits if logits is not None else lm_head(hidden)
        return _token_losses(logits.reshape([b * s, -1]), labels, label_smoothing).mean()
    loss_mask = _float32_tensor(loss_mask)
    if loss_mask.size != b * s:
        raise GLMError(f"loss_mask: expected shape {[b, s]}, got {list(loss_mask.shape)}")
    weights = loss_mask.reshape([-1])  # [b*s]
    rows = paddle.nonzero(weights).reshape([-1])  # [n], the counted positions
    counted = paddle.gather(hidden.reshape([b * s, -1]), rows)  # [n, h]
    losses = _token_losses(lm_head(counted), paddle.gather(labels, rows), label_smoothing)  # [n]
    return (losses * paddle.gather(weights, rows)).sum() / weights.sum()


def _token_losses(logits: paddle.Tensor, labels: paddle.Tensor, label_smoothing: float) -> paddle.Tensor:
    """``[n]`` cross entropies of float32 ``[n, V]`` logits against ``[n]`` labels, label-smoothed as PaddleNLP."""
    logits = _float32_tensor(logits)
    loss = F.cross_entropy(logits, labels, reduction="none").reshape([-1])
    if label_smoothing > 0:
        smooth = (-F.log_softmax(logits, axis=-1) / logits.shape[-1]).sum(axis=-1)  # [n]
        loss = (1 - label_smoothing) * loss + label_smoothing * smooth
    return loss


def _float32_tensor(value) -> paddle.Tensor:
    """float32 paddle tensor from a tensor, numpy array or list."""
    value = value if isinstance(value, paddle.Tensor) else paddle.to_tensor(np.asarray(value))
    return value if value.dtype == paddle.float32 else value.astype("float32")
