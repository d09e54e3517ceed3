"""Tensor-parallel inference: a built GLM rewritten from outside, as gpt-fast's ``tp.py`` does.

Megatron-style split over the ranks of a ``paddle.distributed`` job (``python -m
paddle.distributed.launch --nproc_per_node N``), with plain collectives, which run on
CPU (gloo) and GPU (NCCL); fleet's parallel layers have no CPU kernels. Per block:

* ``attention.query_key_value`` is split by whole heads, each of q, k and v (the packed
  ``[h, 3h]`` weight is q | k | v): a rank computes its heads' q|k|v, no communication;
* ``attention.dense`` is split by input rows: partial sums, one all_reduce, then the bias
  (added once, not N times);
* ``mlp.dense_h_to_4h`` is split by output columns, ``mlp.dense_4h_to_h`` by input rows
  (one all_reduce, then the bias).

The word embeddings are split by vocabulary rows: a rank looks up the ids it holds (the
others give zeros) and an all_reduce sums the rows; the tied output projection then gives
each rank its vocabulary slice of the logits (gathered by ``tensor_parallel.py``). Everything
else (position embeddings, LayerNorms) is replicated.

This file holds the sharding (which tensor is cut how, a rank's slice, the parallel layers and
the rewrite of a built model) and the gathering. Loading, generating and saving a
tensor-parallel model is ``tensor_parallel.py``; the job itself is ``distributed.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import paddle
import paddle.distributed as dist
import paddle.nn as nn
import paddle.nn.functional as F

from .checkpoint.layout import table_key
from .errors import GLMError
from .linear import linear, linear_transposed

# How each split tensor is cut (names as in checkpoint/layout.py's table); the rest is replicated.
ROWS, COLUMNS, QKV = "rows", "columns", "qkv"  # axis 0; last axis; last axis within each of q, k, v
SPLITS: Dict[str, str] = {
    "word_embeddings.weight": ROWS,
    "transformer.layers.{i}.attention.query_key_value.weight": QKV,
    "transformer.layers.{i}.attention.query_key_value.bias": QKV,
    "transformer.layers.{i}.attention.dense.weight": ROWS,
    "transformer.layers.{i}.mlp.dense_h_to_4h.weight": COLUMNS,
    "transformer.layers.{i}.mlp.dense_h_to_4h.bias": COLUMNS,
    "transformer.layers.{i}.mlp.dense_4h_to_h.weight": ROWS,
}


def split_kind(name: str) -> Optional[str]:
    """ROWS, COLUMNS or QKV for a split tensor (checkpoint name, with or without ``glm.``), None if replicated."""
    return SPLITS.get(table_key(name) or "")


def local_slice(kind: Optional[str], array, rank: int, world: int):
    """Rank ``rank``'s part of a full tensor (numpy array or paddle tensor); a view where the layout allows."""
    if kind is None or world == 1:
        return array
    if kind == ROWS:
        n = array.shape[0] // world
        return array[rank * n:(rank + 1) * n]
    n = array.shape[-1] // world
    if kind == COLUMNS:
        return array[..., rank * n:(rank + 1) * n]
    lead = list(array.shape[:-1])
    n = array.shape[-1] // (3 * world)  # [..., 3h] -> [..., 3, world, h/world]: this rank's q, k and v
    return array.reshape(lead + [3, world, n])[..., rank, :].reshape(lead + [3 * n])


def join_slices(kind: Optional[str], parts: List[np.ndarray]) -> np.ndarray:
    """The full tensor from every rank's slice (the inverse of :func:`local_slice`)."""
    if kind is None or len(parts) == 1:
        return parts[0]
    if kind == ROWS:
        return np.concatenate(parts, axis=0)
    if kind == COLUMNS:
        return np.concatenate(parts, axis=-1)
    lead = list(parts[0].shape[:-1])
    n = parts[0].shape[-1] // 3
    return np.stack([p.reshape(lead + [3, n]) for p in parts], axis=-2).reshape(lead + [3 * n * len(parts)])


def check_split(config, world: int) -> None:
    """Raise GLMError unless ``config``'s heads and vocabulary divide over ``world`` ranks."""
    heads, vocab = config.num_attention_heads, config.vocab_size
    if world < 1:
        raise GLMError(f"tensor-parallel size must be at least 1, got {world}")
    if world > heads:
        raise GLMError(f"tensor-parallel size {world} exceeds the model's {heads} attention heads (every rank needs "
                       f"at least one): use one of {_divisors(heads)}")
    if heads % world:
        raise GLMError(f"tensor-parallel size {world} does not divide the {heads} attention heads: "
                       f"use one of {_divisors(heads)}")
    if vocab % world:
        raise GLMError(f"tensor-parallel size {world} does not divide the vocabulary of {vocab} rows: use a size that "
                       f"divides it, or pad the word embeddings to a multiple of {world} rows")


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def parameters_per_rank(shapes: Dict[str, List[int]], world: int) -> int:
    """Parameters one of ``world`` ranks holds, of a model whose state has these ``{name: shape}``."""
    return sum(int(np.prod(shape)) // (world if split_kind(name) else 1) for name, shape in shapes.items())


def _as_float32_on_cpu(x: paddle.Tensor) -> paddle.Tensor:
    # gloo's float16 all_reduce silently returns inf (measured on Paddle 3.3.1): collectives on CPU run in float32
    return x.astype("float32") if x.place.is_cpu_place() and x.dtype != paddle.float32 else x


def all_reduce_sum(x: paddle.Tensor) -> paddle.Tensor:
    """The sum of ``x`` over all ranks, in ``x``'s dtype."""
    y = _as_float32_on_cpu(x)
    dist.all_reduce(y)
    return y.astype(x.dtype) if y.dtype != x.dtype else y


def all_gather_last_axis(x: paddle.Tensor) -> paddle.Tensor:
    """Every rank's ``x`` concatenated along the last axis, in rank order."""
    parts: List[paddle.Tensor] = []
    dist.all_gather(parts, _as_float32_on_cpu(x))
    return paddle.concat(parts, axis=-1).astype(x.dtype)


def _lazy_parameter(layer: nn.Layer, shape: List[int], dtype, is_bias: bool = False):
    """A parameter without memory until a value is set (as ``paddle.LazyGuard`` makes them)."""
    with paddle.LazyGuard():
        return layer.create_parameter(shape, dtype=dtype, is_bias=is_bias)


class _LocalLinear(nn.Layer):
    """The rank's part of a Linear: ``weight`` ``[in, out]`` and ``bias`` ``[out]``, loaded later."""

    def __init__(self, in_features: int, out_features: int, dtype):
        super().__init__()
        self.weight = _lazy_parameter(self, [in_features, out_features], dtype)
        self.bias = _lazy_parameter(self, [out_features], dtype, is_bias=True)


class ColumnParallelLinear(_LocalLinear):
    """``x @ W[:, cols] + b[cols]``: this rank's output columns; no communication."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return linear(x, self.weight, self.bias)


class RowParallelLinear(_LocalLinear):
    """``x[..., rows] @ W[rows, :]`` summed over the ranks, then the (whole) bias, added once."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return all_reduce_sum(linear(x, self.weight)) + self.bias


class VocabParallelEmbedding(nn.Layer):
    """Rows ``[start, start + rows)`` of the word embeddings: a masked lookup, then an all_reduce."""

    def __init__(self, rows: int, hidden: int, start: int, dtype):
        super().__init__()
        self.start = start
        self.weight = _lazy_parameter(self, [rows, hidden], dtype)

    def forward(self, ids: paddle.Tensor) -> paddle.Tensor:
        local = ids - self.start
        mine = paddle.logical_and(local >= 0, local < self.weight.shape[0])  # [b, s]
        rows = F.embedding(paddle.where(mine, local, paddle.zeros_like(local)), self.weight)  # [b, s, h]
        return all_reduce_sum(rows * mine.unsqueeze(-1).astype(rows.dtype))

    def project(self, hidden: paddle.Tensor) -> paddle.Tensor:
        """This rank's vocabulary slice of the tied LM head, ``[..., rows]`` (gathered by ``GatheredLogits``)."""
        return linear_transposed(hidden, self.weight)


@dataclass
class TensorParallel:
    """Where a rewritten model sits in its job; the model carries it as ``model.tensor_parallel``."""

    rank: int
    world: int

    def select(self, name: str, array: np.ndarray) -> np.ndarray:
        """The loader's hook: the rank's slice of checkpoint tensor ``name`` (a view of a memory map stays one)."""
        return local_slice(split_kind(name), array, self.rank, self.world)

    def gather(self, name: str, local: paddle.Tensor) -> np.ndarray:
        """The full tensor ``name`` from every rank's slice (a collective: every rank calls it, in the same order)."""
        kind = split_kind(name)
        if kind is None or self.world == 1:
            return local.numpy()
        parts: List[paddle.Tensor] = []
        dist.all_gather(parts, _as_float32_on_cpu(local))
        return join_slices(kind, [p.astype(local.dtype).numpy() for p in parts])


def parallelize(model: nn.Layer, rank: int, world: int) -> TensorParallel:
    """Rewrite a built GLM (GLMModel or a model with a ``glm`` base) in place: each split Linear and the
    word embeddings become rank ``rank``'s share of ``world``.

    Loaded weights are cut to this rank's slices; a model built under ``paddle.LazyGuard`` gets
    parameters without memory, which ``load_checkpoint(..., select=tp.select)`` fills. The logits
    stay this rank's vocabulary slice: ``tensor_parallel.py`` makes the whole model of it.
    """
    base = getattr(model, "glm", model)
    if isinstance(base.word_embeddings, VocabParallelEmbedding):
        raise GLMError("this model is already tensor-parallel")
    check_split(base.config, world)
    tp = TensorParallel(rank, world)
    hidden = base.config.hidden_size
    layer = "transformer.layers.{i}."
    for block in base.transformer.layers:
        attention, mlp = block.attention, block.mlp
        _swap(attention, "query_key_value", ColumnParallelLinear(hidden, 3 * hidden // world, _dtype(attention)),
              tp, layer + "attention.query_key_value")
        _swap(attention, "dense", RowParallelLinear(hidden // world, hidden, _dtype(attention)),
              tp, layer + "attention.dense")
        _swap(mlp, "dense_h_to_4h", ColumnParallelLinear(hidden, 4 * hidden // world, _dtype(mlp)),
              tp, layer + "mlp.dense_h_to_4h")
        _swap(mlp, "dense_4h_to_h", RowParallelLinear(4 * hidden // world, hidden, _dtype(mlp)),
              tp, layer + "mlp.dense_4h_to_h")
    rows = base.config.vocab_size // world
    _swap(base, "word_embeddings", VocabParallelEmbedding(rows, hidden, rank * rows, _dtype(base.word_embeddings)),
          tp, "word_embeddings")
    return tp


def _dtype(layer: nn.Layer):
    return next(iter(layer.parameters())).dtype


def _swap(parent: nn.Layer, attr: str, new: nn.Layer, tp: TensorParallel, key: str) -> None:
    """Put ``new`` in place of ``parent.<attr>`` (``key`` in SPLITS' terms), slicing the old weights if loaded."""
    old = getattr(parent, attr)
    for name, param in new.named_parameters():
        source = getattr(old, name)
        if source._is_initialized():
            param.set_value(local_slice(SPLITS.get(f"{key}.{name}"), source, tp.rank, tp.world))
    setattr(parent, attr, new)
