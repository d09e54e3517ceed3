"""Checkpoint dtypes as numpy arrays.

numpy has no bfloat16, so bfloat16 tensors travel as uint16 arrays of their bit
patterns, which is also how ``paddle.save`` and PaddleNLP's safetensors store
them. GLM has no integer weights, so a uint16 array always means bfloat16.
"""
from __future__ import annotations

import numpy as np

from ..errors import GLMError

# dtype name -> numpy storage dtype
STORAGE = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": np.dtype(np.uint16)}
DTYPE_NAMES = tuple(STORAGE)


def dtype_name(array: np.ndarray) -> str:
    """The logical dtype of a checkpoint array ("float32", "float16" or "bfloat16")."""
    for name, storage in STORAGE.items():
        if array.dtype == storage:
            return name
    raise GLMError(f"unsupported tensor dtype {array.dtype} (expected float32, float16 or bfloat16)")


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Exact widening of bfloat16 bit patterns to float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(values: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 bit patterns, to nearest even (as Paddle's cast); NaN stays NaN."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    bits = values.view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


def cast_array(array: np.ndarray, target: str) -> np.ndarray:
    """Cast a checkpoint array to the logical dtype ``target``; no copy if it already is."""
    source = dtype_name(array)
    if source == target:
        return array
    wide = bf16_to_float32(array) if source == "bfloat16" else array.astype(np.float32)
    if target == "bfloat16":
        return float32_to_bf16(wide)
    return wide.astype(STORAGE[target])
