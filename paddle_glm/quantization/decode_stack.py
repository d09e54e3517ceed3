"""A GLM stack whose CPU decode steps go through every quantized block in one C++ call.

:func:`~paddle_glm.quantization.rewrite.quantize_model` puts a :class:`QuantizedDecodeStack` in place of the
model's :class:`~paddle_glm.model.GLMStack`, taking over its sublayers (so parameter names do not change). A
decode step in the ``cpu_decode`` backend whose blocks would each take their own one-call step
(:class:`~paddle_glm.quantization.decode_block.QuantizedDecodeBlock`: plain quantized projections, float32
LayerNorms, no forward hooks on their layers), with no forward hook on a block itself, calls ``glm_decode_stack``
(``csrc/decode_stack.cc``) once for all of them, through ctypes: Paddle's dispatch of one custom operator costs
~60 us on this machine and the Python around each block's call ~50 us more, ~2.6 ms of a glm-large step. Any
other call runs the stack's own ``forward`` (each block then decides for itself).
"""
from __future__ import annotations

import ctypes
import operator
from typing import List, Optional, Sequence, Tuple

import numpy as np
import paddle
import paddle.nn as nn

from .. import cpu_operators
from ..attention import CPU_DECODE, PreparedMask
from ..devices import chosen_cpu_threads
from ..errors import GLMError
from ..kv_cache import KVCache
from ..model import GLMStack
from ..openmp_wait import spin_when_idle
from .decode_block import QuantizedDecodeBlock, adopt_hooks
from .layers import QuantizedLinear

_DTYPES = {paddle.float32: 0, paddle.int8: 1, paddle.uint8: 2, paddle.int64: 3}  # csrc/decode_stack.cc's kDtypes
_FIELDS = 7  # a table row: address, dtype, dims, then up to 4 dims
_ERROR_BYTES = 1024

Layers = List[Tuple[List[paddle.Tensor], Tuple[float, float]]]  # per block: its operator's params and epsilons


class QuantizedDecodeStack(GLMStack):
    """``stack``'s embeddings, blocks and final LayerNorm (the same objects and names) with a one-call CPU decode
    step through all the blocks."""

    def __init__(self, stack: GLMStack):
        nn.Layer.__init__(self)  # not GLMStack's: the sublayers are stack's own, registered in its order
        self.config = stack.config
        self.block_position_encoding = stack.block_position_encoding
        self.embedding_dropout = stack.embedding_dropout
        self.position_embeddings = stack.position_embeddings
        if stack.block_position_encoding:
            self.block_position_embeddings = stack.block_position_embeddings
        self.layers = stack.layers
        self.final_layernorm = stack.final_layernorm
        self.training = stack.training
        self._rows = RowCache()  # the params' table rows (decode_stack)
        adopt_hooks(self, stack)

    def forward(self, hidden: paddle.Tensor, position_ids: paddle.Tensor, mask: PreparedMask,
                cache: Optional[KVCache] = None, write_index: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        """As :meth:`GLMStack.forward`; a decode step in the ``cpu_decode`` backend goes through
        ``glm_decode_stack`` when :meth:`_stack_inputs` allows."""
        found = self._stack_inputs() if mask.backend == CPU_DECODE and cache is not None else None
        if found is None:
            return super().forward(hidden, position_ids, mask, cache, write_index)
        layers, first = found
        hidden = decode_stack(self.embed(hidden, position_ids), layers, cache, write_index, first, self._rows)
        return self.final_layernorm(hidden)

    def _stack_inputs(self) -> Optional[Tuple[Layers, QuantizedLinear]]:
        """Each block's operator params and epsilons and the first projection (the quantization), when every block is
        a :class:`QuantizedDecodeBlock` whose own one-call step applies, none has a forward hook of its own (its
        call is skipped) and all share one quantization and activation rounding; else None."""
        if cpu_operators.decode_stack_function() is None:
            return None
        layers, first = [], None
        for block in self.layers:
            if type(block) is not QuantizedDecodeBlock or block._forward_pre_hooks or block._forward_post_hooks:
                return None
            found = block._operator_inputs()
            if found is None:
                return None
            params, projection, epsilons = found
            first = first or projection
            if _kernel_settings(projection) != _kernel_settings(first):
                return None
            layers.append((params, epsilons))
        return (layers, first) if layers else None


def _kernel_settings(projection: QuantizedLinear) -> Tuple[str, int, int]:
    return projection.quant_type, projection.group_size, projection.activation_bits


def decode_stack(hidden: paddle.Tensor, layers: Layers, cache: KVCache, write_index: paddle.Tensor,
                 projection: QuantizedLinear, params_rows: Optional[RowCache] = None) -> paddle.Tensor:
    """``hidden`` ``[b, 1, hidden]`` through every block's decode step (``layers``: each block's
    ``glm_decode_block`` params and LayerNorm epsilons; ``projection``: one of their projections, whose quant type,
    group size and activation bits all share), writing each layer's keys and values into ``cache`` at
    ``write_index``: ``[b, 1, hidden]``. ``params_rows``: the params' rows kept from the last call (a caller's
    :class:`RowCache`), else made anew; the cache's rows are made at each call (keeping them would keep a finished
    generation's cache alive). A failure of the C++ checks is a GLMError naming it."""
    params_rows = params_rows or RowCache()
    hidden = hidden.contiguous()
    out = paddle.empty_like(hidden)
    _, _, key_bias, length = cache.step_buffers(0)
    buffers = []
    for i in range(len(layers)):
        keys, values, _, _ = cache.step_buffers(i)
        cpu_operators.check_cache_buffers("decode_stack", keys, values)
        buffers += (keys, values)
    index = write_index.contiguous()  # held here: the table holds only its address
    table = np.concatenate([_table([hidden, out, key_bias, index]),
                            params_rows.rows([t for params, _ in layers for t in params]), _table(buffers)])
    epsilons = np.asarray([layer[1] for layer in layers], np.float32)  # [layers, 2]
    error = ctypes.create_string_buffer(_ERROR_BYTES)
    spin_when_idle()
    failed = cpu_operators.decode_stack_function()(
        table.ctypes.data, len(layers), int(length), cpu_operators.WEIGHT_BITS[projection.quant_type],
        int(projection.group_size), int(projection.activation_bits), epsilons.ctypes.data, chosen_cpu_threads(), error,
        _ERROR_BYTES)
    if failed:
        message = error.value.decode("utf-8", "replace").strip()
        raise GLMError(message.splitlines()[0] if message else "glm_decode_stack failed without a message")
    return out


class RowCache:
    """Table rows of tensors that come back call after call (a model's params): made again when the tensors are
    other objects, else their addresses re-read and the rows whose address moved made again (a tensor's memory
    moves when it is reallocated, e.g. cast to another dtype in place). Reading a tensor's dtype, place and
    contiguity costs ~2 us in Paddle, ~1 ms for glm-large's 384 params a step."""

    def __init__(self):
        self.tensors: Tuple[paddle.Tensor, ...] = ()
        self.table = np.zeros((0, _FIELDS), np.int64)

    def rows(self, tensors: List[paddle.Tensor]) -> np.ndarray:
        if len(tensors) != len(self.tensors) or not all(map(operator.is_, tensors, self.tensors)):
            self.tensors, self.table = tuple(tensors), _table(tensors)
            return self.table
        addresses = np.fromiter((tensor.data_ptr() for tensor in tensors), np.int64, len(tensors))
        for moved in np.flatnonzero(addresses != self.table[:, 0]):
            self.table[moved] = _table([tensors[moved]])[0]
        return self.table


def _table(tensors: Sequence[paddle.Tensor]) -> np.ndarray:
    """csrc/decode_stack.cc's table: per tensor its address, dtype, number of dims and dims (4 slots, 1 when
    unused): ``[len(tensors), 7]`` int64."""
    rows = []
    for tensor in tensors:
        shape = tensor.shape
        if (tensor.dtype not in _DTYPES or not 1 <= len(shape) <= 4 or not tensor.place.is_cpu_place()
                or not tensor.is_contiguous()):
            raise GLMError(f"decode_stack: a {tensor.dtype} tensor of shape {shape} is not a contiguous CPU input "
                           "it takes")
        rows.append([tensor.data_ptr(), _DTYPES[tensor.dtype], len(shape)] + shape + [1] * (4 - len(shape)))
    return np.asarray(rows, np.int64).reshape(-1, _FIELDS)
