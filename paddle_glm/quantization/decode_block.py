"""A GLM block whose decode steps on CPU run as one C++ call once its projections are weight-only quantized.

:func:`~paddle_glm.quantization.rewrite.quantize_model` puts a :class:`QuantizedDecodeBlock` in place of each
:class:`~paddle_glm.model.GLMBlock`, taking over its sublayers (so parameter names do not change). A decode step
in the ``cpu_decode`` backend (eager, float32 CPU, no gradient, the operators loaded) whose four projections are
plain :class:`~paddle_glm.quantization.layers.QuantizedLinear` (no LoRA adapter on them) goes through
``glm_decode_block`` (``csrc/decode_block.cc``): the two LayerNorms, the four products, the attention with its
cache write, the GELU and both residual adds in one call. Every other call (prefills, training, a GPU,
adapters) runs the block's own ``forward``. On glm-large int8 a step's ~200 us a layer of op dispatch and
Python between the separate calls goes (``benchmarks/bench_quant.py``).
"""
from __future__ import annotations

from typing import List, Optional

import paddle
import paddle.nn as nn

from .. import cpu_operators
from ..attention import CPU_DECODE, PreparedMask
from ..kv_cache import KVCache
from ..model import GLMBlock
from .layers import QuantizedLinear


class QuantizedDecodeBlock(GLMBlock):
    """``block``'s LayerNorms, attention and MLP (the same objects and names) with a one-call CPU decode step."""

    def __init__(self, block: GLMBlock):
        nn.Layer.__init__(self)  # not GLMBlock's: the sublayers are block's own, not new ones
        self.input_layernorm = block.input_layernorm
        self.attention = block.attention
        self.post_attention_layernorm = block.post_attention_layernorm
        self.mlp = block.mlp
        self.training = block.training

    def forward(self, x: paddle.Tensor, mask: PreparedMask, cache: Optional[KVCache] = None,
                layer: int = 0, write_index: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        projections = self._projections()
        if mask.backend != CPU_DECODE or projections is None:
            return super().forward(x, mask, cache, layer, write_index)
        keys, values, key_bias, length = cache.step_buffers(layer)
        first = projections[0]
        return cpu_operators.decode_block(x, self._params(projections), keys, values, key_bias, write_index, length,
                                          first.quant_type, first.group_size,
                                          (self.input_layernorm._epsilon, self.post_attention_layernorm._epsilon))

    def _projections(self) -> Optional[List[QuantizedLinear]]:
        """The four projections when each is a plain QuantizedLinear with a float32 bias, else None."""
        layers = [self.attention.query_key_value, self.attention.dense, self.mlp.dense_h_to_4h,
                  self.mlp.dense_4h_to_h]
        if all(type(layer) is QuantizedLinear and layer.bias.dtype == paddle.float32 for layer in layers):
            return layers
        return None

    def _params(self, projections: List[QuantizedLinear]) -> List[paddle.Tensor]:
        """The operator's ``params``, in its order (``cpu_operators.decode_block``)."""
        params = [self.input_layernorm.weight, self.input_layernorm.bias]
        for layer in projections:
            params += [layer.weight, layer.weight_scale, layer.bias]
        return params + [self.post_attention_layernorm.weight, self.post_attention_layernorm.bias]
