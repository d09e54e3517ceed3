"""A preallocated key/value cache: static shapes, written by index."""
from __future__ import annotations

from typing import List, Tuple

import paddle

from .attention import BHSD, BSHD


class KVCache:
    """Keys and values of every layer for ``batch`` rows and up to ``max_length`` tokens.

    Buffers are allocated once, in the model's dtype and in the layout the
    attention backend reads without copying (``bhsd`` = ``[b, heads, t, d]`` for the
    CPU math path, ``bshd`` = ``[b, t, heads, d]`` for the fused CUDA kernels).
    Every row shares the write position ``length``: GLM inputs are right-padded,
    and padding columns are masked, not skipped.
    """

    def __init__(self, num_layers: int, batch: int, max_length: int, num_heads: int, head_dim: int,
                 dtype, layout: str):
        if layout not in (BHSD, BSHD):
            raise ValueError(f"unknown cache layout {layout!r}")
        self.layout = layout
        self.max_length = max_length
        self.seq_axis = 2 if layout == BHSD else 1
        shape = [batch, num_heads, max_length, head_dim] if layout == BHSD else [batch, max_length, num_heads, head_dim]
        self.keys: List[paddle.Tensor] = [paddle.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.values: List[paddle.Tensor] = [paddle.zeros(shape, dtype=dtype) for _ in range(num_layers)]
        self.length = 0  # tokens written so far

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def update(self, layer: int, k: paddle.Tensor, v: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """Write ``k``/``v`` (the cache layout, ``s`` new tokens) at ``length``; return the full buffers."""
        start, end = self.length, self.length + k.shape[self.seq_axis]
        if end > self.max_length:
            raise ValueError(f"KV cache overflow: {end} tokens > max_length {self.max_length}")
        if self.seq_axis == 2:
            self.keys[layer][:, :, start:end] = k
            self.values[layer][:, :, start:end] = v
        else:
            self.keys[layer][:, start:end] = k
            self.values[layer][:, start:end] = v
        return self.keys[layer], self.values[layer]

    def advance(self, count: int) -> None:
        """Mark ``count`` more tokens as written (called once per forward, after every layer)."""
        self.length += count

    def reorder(self, index: paddle.Tensor) -> None:
        """Keep rows ``index`` (beam search): row i becomes old row ``index[i]``."""
        self.keys = [paddle.index_select(k, index, axis=0) for k in self.keys]
        self.values = [paddle.index_select(v, index, axis=0) for v in self.values]
