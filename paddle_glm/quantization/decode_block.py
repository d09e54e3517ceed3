"""A GLM block whose decode steps on CPU run as one C++ call once its projections are weight-only quantized.

:func:`~paddle_glm.quantization.rewrite.quantize_model` puts a :class:`QuantizedDecodeBlock` in place of each
:class:`~paddle_glm.model.GLMBlock`, taking over its sublayers (so parameter names do not change). A decode step
in the ``cpu_decode`` backend (eager, float32 CPU, no gradient, the operators loaded) whose four projections are
plain :class:`~paddle_glm.quantization.layers.QuantizedLinear` (no LoRA adapter on them) goes through
``glm_decode_block`` (``csrc/decode_block.cc``): the two LayerNorms, the four products, the attention with its
cache write, the GELU and both residual adds in one call. Every other call (prefills, training, a GPU,
adapters, a forward hook on one of the block's layers, LayerNorms not in float32) runs the block's own
``forward``. Measured on glm-large int8: one block with its weights in cache 552-632 us against 751-871 us
through the separate calls (their dispatch and the Python between them), a step 20-22 ms against 25-29 ms.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

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
        adopt_hooks(self, block)

    def forward(self, x: paddle.Tensor, mask: PreparedMask, cache: Optional[KVCache] = None,
                layer: int = 0, write_index: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        """``x`` ``[b, s, hidden]`` -> ``[b, s, hidden]`` as :meth:`GLMBlock.forward`; a decode step (``s`` = 1) in the
        ``cpu_decode`` backend goes through ``glm_decode_block`` when :meth:`_operator_inputs` allows."""
        fused = self._operator_inputs() if mask.backend == CPU_DECODE else None
        if fused is None:
            return super().forward(x, mask, cache, layer, write_index)
        params, first, epsilons = fused
        keys, values, key_bias, length = cache.step_buffers(layer)
        return cpu_operators.decode_block(x, params, keys, values, key_bias, write_index, length, first.quant_type,
                                          first.group_size, epsilons, first.activation_bits)

    def _operator_inputs(self) -> Optional[Tuple[List[paddle.Tensor], QuantizedLinear, Tuple[float, float]]]:
        """The operator's ``params`` in its order (``cpu_operators.decode_block``), the first projection (its
        quantization) and the LayerNorms' epsilons, when the four projections are plain QuantizedLinears (not
        LoRA-wrapped), the LayerNorms float32 (as a CPU decode step's compute dtype is) and no forward hook is set
        on the block's layers (the operator would skip it), else None.

        Read from the layers' own sublayer and parameter dicts, as ``nn.Layer.__getattr__`` finds them: through
        ``__getattr__`` these 22 lookups cost ~45 us a block, ~1 ms of a glm-large step (~5%). The biases are in the
        LayerNorms' dtype (the rewrite makes them so)."""
        sub = self._sub_layers
        attention, mlp = sub["attention"]._sub_layers, sub["mlp"]._sub_layers
        projections = (attention["query_key_value"], attention["dense"], mlp["dense_h_to_4h"], mlp["dense_4h_to_h"])
        if not all(type(projection) is QuantizedLinear for projection in projections):
            return None
        norms = sub["input_layernorm"], sub["post_attention_layernorm"]
        layers = (sub["attention"], sub["mlp"]) + norms + projections  # the block's own hooks run either way
        if any(norm._parameters["weight"].dtype != paddle.float32 for norm in norms) or any(
                layer._forward_pre_hooks or layer._forward_post_hooks for layer in layers):
            return None
        params = [norms[0]._parameters["weight"], norms[0]._parameters["bias"]]
        for projection in projections:
            own = projection._parameters
            params += [own["weight"], own["weight_scale"], own["bias"]]
        params += [norms[1]._parameters["weight"], norms[1]._parameters["bias"]]
        return params, projections[0], (norms[0]._epsilon, norms[1]._epsilon)


def adopt_hooks(layer: nn.Layer, replaced: nn.Layer) -> None:
    """Give ``layer`` the forward hooks of the layer it replaces (the same dicts: a hook's remove handle still
    works)."""
    for name in ("_forward_pre_hooks", "_forward_post_hooks", "_forward_pre_hooks_with_kwargs_flag",
                 "_forward_post_hooks_with_kwargs_flag"):
        setattr(layer, name, getattr(replaced, name))
