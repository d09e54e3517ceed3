"""GLM attention masks: every accepted form becomes one boolean ``[b, 1, q, k]`` mask.

Accepted forms (the original GLM semantics):

* 4-D ``[b, 1, q, k]`` of 0/1 (or bool): used as given; True/1 = may attend.
* 1-D ``[b]`` "sep": queries see keys ``< sep`` (bidirectional prefix) and the
  causal past.
* None: causal language model (sep = 0).

``True`` means "may attend". No row is ever left fully masked: such a row
(a padding row of a user-made mask) is opened to every key, so softmax never
sees an all ``-inf`` row and never returns NaN.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import paddle

from .errors import GLMError

MaskLike = Union[None, int, paddle.Tensor, np.ndarray]


def build_attention_mask(attention_mask: MaskLike, batch: int, query_len: int, key_len: int) -> paddle.Tensor:
    """A boolean ``[batch, 1, query_len, key_len]`` mask.

    Args:
        attention_mask: 4-D 0/1 mask, 1-D ``[batch]`` sep positions, or None (causal).
        batch, query_len: the shape of the current input.
        key_len: keys the queries attend over (the tokens so far: a decode step's
            mask is the KV cache's ``key_bias``, not built here).
    """
    if attention_mask is None:
        mask = _causal(batch, query_len, key_len, sep=paddle.zeros([batch, 1, 1], dtype="int64"))
    else:
        if not isinstance(attention_mask, paddle.Tensor):
            attention_mask = paddle.to_tensor(np.asarray(attention_mask))
        if attention_mask.ndim == 0:
            attention_mask = attention_mask.reshape([1]).expand([batch])
        if attention_mask.ndim == 1:
            if attention_mask.shape[0] != batch:
                raise GLMError(f"attention_mask: a 1-D (sep) mask needs one entry per row ({batch}), "
                               f"got {attention_mask.shape[0]}")
            sep = attention_mask.astype("int64").reshape([batch, 1, 1])  # [b, 1, 1]
            mask = _causal(batch, query_len, key_len, sep)
        elif attention_mask.ndim == 4:
            mask = _from_dense(attention_mask, batch, query_len, key_len)
        else:
            raise GLMError(
                f"attention_mask: expected a 4-D [batch, 1, query, key] 0/1 mask, a 1-D [batch] sep mask or None, "
                f"got shape {list(attention_mask.shape)}. A tokenizer's 2-D padding mask is not a GLM attention "
                "mask: pass the batch through tokenizer.build_inputs_for_generation first."
            )
    # A fully masked row would give NaN: open it to every key instead.
    empty_row = paddle.logical_not(mask.any(axis=-1, keepdim=True))  # [b, 1, q, 1]
    return paddle.logical_or(mask, empty_row)


def _causal(batch: int, query_len: int, key_len: int, sep: paddle.Tensor) -> paddle.Tensor:
    """Key j visible to query i iff j <= i, or j < sep (the bidirectional prefix)."""
    query_pos = paddle.arange(query_len, dtype="int64").reshape([1, query_len, 1])  # [1, q, 1]
    key_pos = paddle.arange(key_len, dtype="int64").reshape([1, 1, key_len])  # [1, 1, k]
    mask = paddle.logical_or(key_pos <= query_pos, key_pos < sep)  # [b, q, k]
    return mask.reshape([batch, 1, query_len, key_len])


def _from_dense(mask: paddle.Tensor, batch: int, query_len: int, key_len: int) -> paddle.Tensor:
    b, heads, rows, cols = mask.shape
    if b != batch or heads != 1:
        raise GLMError(f"attention_mask: expected shape [{batch}, 1, q, k], got {list(mask.shape)}")
    if rows != query_len or cols != key_len:
        raise GLMError(f"attention_mask: expected [{batch}, 1, {query_len}, {key_len}] (query rows, key columns) for "
                       f"{query_len} tokens, got {list(mask.shape)}")
    return check_binary_mask(mask)


def check_binary_mask(mask: paddle.Tensor) -> paddle.Tensor:
    """A 4-D 0/1 (or bool) mask as bool; any other value (0.5, an additive 0/-10000 mask) is a GLMError."""
    if mask.dtype == paddle.bool:
        return mask
    if bool(paddle.logical_and(mask != 0, mask != 1).any()):
        raise GLMError("attention_mask: a 4-D mask must hold only 0 and 1 (a 0/1 mask, 1 = may attend), not values "
                       "such as 0.5 or an additive 0/-10000 mask")
    return mask.astype("bool")
