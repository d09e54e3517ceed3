"""Ids at the API boundary: conversion to int64 and the range check an embedding lookup needs.

Token ids, position ids and labels come in as paddle tensors, numpy arrays or nested lists.
Floats are refused, never truncated, and an id outside its table is a one-line error
instead of an out-of-bounds read.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import paddle

from .devices import dtype_str
from .errors import GLMError

_INT_DTYPES = (paddle.int64, paddle.int32, paddle.int16, paddle.int8, paddle.uint8)


def to_int64(value, name: str) -> paddle.Tensor:
    """An int64 paddle tensor from an integer paddle tensor, numpy array or nested list.

    Raises:
        GLMError naming ``name``: float, bool or ragged values.
    """
    if isinstance(value, paddle.Tensor):
        if value.dtype not in _INT_DTYPES:
            raise GLMError(f"{name}: expected integer ids, got {dtype_str(value.dtype)} values")
        return value if value.dtype == paddle.int64 else value.astype("int64")
    try:
        array = np.asarray(value)
    except ValueError as e:  # a ragged list
        raise GLMError(f"{name}: expected integer ids (paddle tensor, numpy array or list), got {e}") from None
    if array.dtype.kind not in "iu":
        raise GLMError(f"{name}: expected integer ids, got {array.dtype} values")
    return paddle.to_tensor(array.astype(np.int64))


def id_bounds(ids: paddle.Tensor) -> Tuple[int, int]:
    """The smallest and largest id of a non-empty tensor, read with one host synchronisation."""
    low, high = (int(x) for x in paddle.stack([ids.min(), ids.max()]).numpy())
    return low, high


def check_id_range(ids: paddle.Tensor, name: str, limit: int, table: str) -> None:
    """A one-line error for an id outside ``[0, limit)``, which an embedding lookup would read out of bounds.

    ``table`` says which table and what to do, e.g. "the vocabulary (vocab_size): ...".
    """
    if ids.size == 0:
        return
    low, high = id_bounds(ids)
    if low < 0 or high >= limit:
        raise GLMError(f"{name}: value {low if low < 0 else high} is outside [0, {limit}), {table}")
