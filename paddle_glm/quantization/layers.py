"""The quantized layers that replace a loaded GLM's Linears and word embeddings (see ``rewrite.py``).

Each holds its weight in the kernels' stored layout, as ``weight`` (int8 ``[out, in]``, or
int4 packed two per byte into uint8 ``[out, in // 2]``) and ``weight_scale`` (float32
``[out]`` or ``[out, in // group_size]``), which are also its names in a quantized checkpoint.
The bias stays in the compute dtype. Parameters are created without memory
(``paddle.LazyGuard``) and get it when the loader assigns them, so a replaced float weight
never exists in memory.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import paddle
import paddle.nn as nn

from ..errors import GLMError
from ..lora import LORA_WRAPPERS, LoRALinear
from .kernels import quantize_weight, weight_only_linear
from .settings import INT8, QuantSettings


def stored_shapes(out_features: int, in_features: int, settings: QuantSettings) -> Tuple[List[int], str, List[int]]:
    """``(weight shape, weight dtype, scale shape)`` of an ``[out, in]`` weight quantized with ``settings``."""
    if settings.quant_type == INT8:
        return [out_features, in_features], "int8", [out_features]
    return [out_features, in_features // 2], "uint8", [out_features, in_features // settings.group_size]


def lazy_parameter(layer: nn.Layer, shape: List[int], dtype: str, is_bias: bool = False) -> paddle.Tensor:
    """A frozen parameter without memory until a value is set."""
    with paddle.LazyGuard():
        param = layer.create_parameter(shape, dtype=dtype, is_bias=is_bias,
                                       default_initializer=nn.initializer.Constant(0.0))
    param.stop_gradient = True
    return param


class QuantizedWeight(nn.Layer):
    """``weight`` + ``weight_scale`` of an ``[out, in]`` matrix quantized with ``settings``."""

    transposed_in_paddle = False  # whether the float layer it replaces stores the weight [in, out]

    def __init__(self, out_features: int, in_features: int, settings: QuantSettings):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.quant_type, self.group_size = settings.quant_type, settings.kernel_group_size
        self.activation_bits = 16  # what int4's integer route rounds x to (rewrite.use_int8_activations: 8)
        weight_shape, weight_dtype, scale_shape = stored_shapes(out_features, in_features, settings)
        self.weight = lazy_parameter(self, weight_shape, weight_dtype)
        self.weight_scale = lazy_parameter(self, scale_shape, "float32")

    def set_float_weight(self, weight: np.ndarray) -> None:
        """Quantize a float ``[out, in]`` weight into ``weight`` and ``weight_scale``."""
        qweight, scale = quantize_weight(weight, self.quant_type, self.group_size)
        self.weight.set_value(qweight)
        self.weight_scale.set_value(scale)

    def set_paddle_weight(self, weight: np.ndarray) -> None:
        """Quantize the float weight of the layer this one replaces, in that layer's (Paddle's) layout."""
        self.set_float_weight(weight.T if self.transposed_in_paddle else weight)  # Linear: [in, out] -> [out, in]

    def product(self, x: paddle.Tensor, bias=None) -> paddle.Tensor:
        """``x @ W.T + bias`` for ``x`` ``[..., in]`` with the dequantized weight ``W`` ``[out, in]``."""
        return weight_only_linear(x, self.weight, self.weight_scale, bias, quant_type=self.quant_type,
                                  group_size=self.group_size, activation_bits=self.activation_bits)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, quant_type={self.quant_type}"


class QuantizedLinear(QuantizedWeight):
    """A weight-only quantized ``nn.Linear``: ``y = x @ W.T + bias``, W ``[out, in]`` stored quantized.

    ``weight_scale`` is float32; ``bias`` ``[out]`` is in ``dtype`` (the compute dtype).
    """

    transposed_in_paddle = True  # nn.Linear.weight is [in, out]

    def __init__(self, in_features: int, out_features: int, settings: QuantSettings, dtype):
        super().__init__(out_features, in_features, settings)
        self.bias = lazy_parameter(self, [out_features], dtype, is_bias=True)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.product(x, self.bias)


class QuantizedEmbedding(QuantizedWeight):
    """Word embeddings ``[vocab, hidden]`` quantized per row (int4: per group of a row).

    A lookup gathers the ids' rows and dequantizes only them; :meth:`project` is the tied
    output projection ``hidden @ Eᵀ`` through the kernels.
    """

    def __init__(self, vocab_size: int, hidden_size: int, settings: QuantSettings, dtype):
        super().__init__(vocab_size, hidden_size, settings)
        self.compute_dtype = dtype

    def forward(self, ids: paddle.Tensor) -> paddle.Tensor:
        flat = ids.reshape([-1])  # [b, s] -> [b*s]
        rows = dequantize_rows(paddle.gather(self.weight, flat), paddle.gather(self.weight_scale, flat),
                               self.quant_type, self.group_size)  # [b*s, hidden]
        return rows.astype(self.compute_dtype).reshape(list(ids.shape) + [self.in_features])  # [b, s, hidden]

    def project(self, hidden: paddle.Tensor) -> paddle.Tensor:
        """The tied LM head: ``[..., hidden]`` -> ``[..., vocab]``."""
        return self.product(hidden)


class QuantizedLoRALinear(LoRALinear):
    """A LoRA adapter (full precision) on a :class:`QuantizedLinear`: ``x @ W.T + b + x @ A @ B * scaling``.

    The adapter's parameter names and file format are LoRALinear's; the base keeps its quantized
    ``weight``/``weight_scale``. It cannot be merged into the integer weights.
    """

    def _take_base(self, layer: QuantizedLinear):
        self.weight, self.weight_scale, self.bias = layer.weight, layer.weight_scale, layer.bias
        self.quant_type, self.group_size = layer.quant_type, layer.group_size
        self.activation_bits = layer.activation_bits
        return layer.in_features, layer.out_features, layer.bias.dtype

    def base(self, x: paddle.Tensor) -> paddle.Tensor:
        return weight_only_linear(x, self.weight, self.weight_scale, self.bias, quant_type=self.quant_type,
                                  group_size=self.group_size, activation_bits=self.activation_bits)

    def merged_linear(self):
        raise GLMError("a LoRA adapter cannot be merged into quantized weights: keep it applied (the adapter "
                       "runs in full precision beside them), or merge it into the float model and quantize that")


LORA_WRAPPERS[QuantizedLinear] = QuantizedLoRALinear


def dequantize_rows(qrows: paddle.Tensor, scale: paddle.Tensor, quant_type: str, group_size: int) -> paddle.Tensor:
    """Float32 ``[n, in]`` rows from their stored form (int8 ``[n, in]`` + ``[n]``, or uint8 ``[n, in // 2]`` +
    ``[n, in // group_size]``), in Paddle ops: ``kernels.dequantize_weight`` for a few gathered rows."""
    if quant_type == INT8:
        return qrows.astype("float32") * scale.unsqueeze(-1)
    nibbles = qrows.astype("int32")
    low, high = nibbles % 16, nibbles // 16  # element 2j in the low nibble, 2j+1 in the high one
    values = paddle.stack([low, high], axis=-1)  # [n, in // 2, 2]
    values = paddle.where(values >= 8, values - 16, values).astype("float32")  # 4-bit two's complement
    n, groups = scale.shape
    grouped = values.reshape([n, groups, group_size]) * scale.unsqueeze(-1)  # [n, groups, group_size]
    return grouped.reshape([n, groups * group_size])
