"""Weight-only quantization as a rewrite of a built GLM, applied from outside as LoRA and tensor parallelism are.

:func:`quantize_model` swaps every transformer Linear (``query_key_value``, ``dense``,
``dense_h_to_4h``, ``dense_4h_to_h``) for a :class:`QuantizedLinear`, each block for a
:class:`QuantizedDecodeBlock` (the same sublayers; a CPU decode step in one C++ call), the stack for a
:class:`QuantizedDecodeStack` (a CPU decode step through every block in one call) and, unless told
not to, the word embeddings (also the tied output projection) for a
:class:`QuantizedEmbedding`. LayerNorms, biases and the position tables stay float. The
model code does not change: it calls its layers and ``word_embeddings.project``.

On a model built under ``paddle.LazyGuard`` (``from_pretrained``) nothing is allocated:
the returned :class:`QuantizedLoading` is the loader's ``assign`` hook, which quantizes
each float weight as its shard streams in (fp16/bf16 cast to float32 one tensor at a
time) or takes the integer weights and scales of a quantized checkpoint as they are.
On a loaded float model the weights are quantized at once.
"""
from __future__ import annotations

import sys
from typing import Dict, List, Optional

import numpy as np
import paddle
import paddle.nn as nn

from ..attention import dtype_str
from ..checkpoint.dtypes import STORAGE, cast_array
from ..checkpoint.layout import strip_prefix
from ..errors import CheckpointError, GLMError
from .decode_block import QuantizedDecodeBlock
from .decode_stack import QuantizedDecodeStack
from .kernels import dequantize_weight, to_cuda_layout
from .layers import QuantizedEmbedding, QuantizedLinear, QuantizedWeight, lazy_parameter
from .settings import INT4, QUANT_CONFIG_KEY, QUANT_WITH_TP, QuantSettings

# The quantized Linears of each block: (parent sublayer, attribute)
LINEARS = (("attention", "query_key_value"), ("attention", "dense"), ("mlp", "dense_h_to_4h"), ("mlp", "dense_4h_to_h"))
SCALE_SUFFIX = "_scale"  # "<name>.weight" -> "<name>.weight_scale"


def quantized_weight_names(config, settings: QuantSettings) -> List[str]:
    """The checkpoint names (without ``glm.``) of the weights ``settings`` quantize."""
    names = [f"transformer.layers.{i}.{parent}.{attr}.weight" for i in range(config.num_layers)
             for parent, attr in LINEARS]
    return names + (["word_embeddings.weight"] if settings.quantize_embeddings else [])


class QuantizedLoading:
    """The loader's ``assign`` hook for a rewritten model: which layer receives each checkpoint tensor."""

    def __init__(self, layers: Dict[str, QuantizedWeight]):
        self.layers = layers  # "transformer.layers.0.attention.dense" -> its quantized layer

    def assign(self, name: str, array: np.ndarray, where: str) -> Optional[List[str]]:
        """Take tensor ``name`` (Paddle layout) if it belongs to a quantized weight; returns the model keys it
        filled, or None to leave it to the loader (biases, LayerNorms, position tables)."""
        key = strip_prefix(name)
        owner, _, field = key.rpartition(".")
        layer = self.layers.get(owner)
        if layer is None or field not in ("weight", "weight" + SCALE_SUFFIX):
            return None
        if field == "weight" and array.dtype in STORAGE.values():  # a float weight: quantize it now
            layer.set_paddle_weight(cast_array(array, "float32"))  # one tensor at a time
            return [key, key + SCALE_SUFFIX]
        param = getattr(layer, field)
        expected = np.dtype(dtype_str(param.dtype))
        if array.dtype != expected or list(array.shape) != list(param.shape):
            raise CheckpointError(f"{where}: tensor {name!r} is {array.dtype} {list(array.shape)}, but the quantized "
                                  f"model expects {expected} {list(param.shape)} (does config.json's "
                                  f"'{QUANT_CONFIG_KEY}' match the checkpoint?)")
        param.set_value(array)
        return [key]


def quantize_model(model: nn.Layer, settings: QuantSettings) -> QuantizedLoading:
    """Rewrite a built GLM (GLMModel or a model with a ``glm`` base) for weight-only quantization, in place.

    Loaded float weights are quantized at once; a model built under ``paddle.LazyGuard`` gets
    quantized layers without memory, which ``load_checkpoint(..., assign=loading.assign)`` fills.
    The config records ``settings`` (``quantization_config``), so ``save_pretrained`` writes a
    quantized checkpoint. Returns the loading hook; the settings are kept as ``model.quantization``.
    """
    base = getattr(model, "glm", model)
    _refuse_other_rewrites(model)
    settings.check(base.config)
    dtype, hidden = base.compute_dtype, base.config.hidden_size
    layers: Dict[str, QuantizedWeight] = {}
    for i, block in enumerate(base.transformer.layers):
        for parent_name, attr in LINEARS:
            parent = getattr(block, parent_name)
            old = getattr(parent, attr)
            in_features, out_features = old.weight.shape
            new = QuantizedLinear(in_features, out_features, settings, dtype)
            _swap(parent, attr, old, new)
            layers[f"transformer.layers.{i}.{parent_name}.{attr}"] = new
        base.transformer.layers[i] = QuantizedDecodeBlock(block)
    base.transformer = QuantizedDecodeStack(base.transformer)
    if settings.quantize_embeddings:
        old = base.word_embeddings
        new = QuantizedEmbedding(base.config.vocab_size, hidden, settings.for_embeddings(), dtype)
        _swap(base, "word_embeddings", old, new)
        layers["word_embeddings"] = new
    base.config.extra[QUANT_CONFIG_KEY] = settings.to_dict()
    model.quantization = settings
    return QuantizedLoading(layers)


def use_int8_activations(model: nn.Layer, enabled: bool = True) -> None:
    """Round the inputs of an int4 model's products to int8 instead of int16 (``enabled=False``: back to int16),
    in place; a speed option for CPUs with AVX2, off by default.

    The products' integer route (``csrc/int4_integer_product.cc``) then multiplies bytes (``vpmaddubsw``, or
    ``vpdpbusd`` where the build has VNNI): about half the instructions a weight. Each output moves by up to 1/254
    of each input group's largest |x| times the |weights| it meets (int16: 1/65534): ~4e-3 of the largest output on
    random inputs, where int4's own rounding of the weights costs ~1e-1. It applies where the integer route runs
    (float32 CPU inputs, an AVX2 build, input sizes a multiple of 64, groups of 16, 32 or a multiple of 64 up to
    4096); where it cannot run (a build without AVX2, no compiler), one line on stderr says so and the products
    compute in float32 as before. Gradients (LoRA training) are computed from the dequantized weights either way.
    The setting is model-wide: a block's one-call decode step reads it from the block's first projection.

    Raises:
        GLMError: the model is not quantized to weight_only_int4, or its weights are on a GPU (Paddle's CUDA
            kernel takes float activations).
    """
    settings = getattr(model, "quantization", None)
    if settings is None or settings.quant_type != INT4:
        have = "not quantized" if settings is None else f"quantized to {settings.quant_type}"
        raise GLMError(f"int8 activations (--int8-activations) need a {INT4} model; this one is {have}")
    layers = [layer for layer in model.sublayers(include_self=True) if hasattr(layer, "activation_bits")]
    if enabled and any(not layer.weight.place.is_cpu_place() for layer in layers):
        raise GLMError("int8 activations (--int8-activations) are a CPU option; on a GPU Paddle's weight_only_linear "
                       "takes float activations")
    for layer in layers:  # QuantizedWeights, and LoRA adapters over them
        layer.activation_bits = 8 if enabled else 16
    if enabled:
        _notice_without_integer_route(settings, getattr(model, "glm", model).config.hidden_size)


def _notice_without_integer_route(settings: QuantSettings, hidden: int) -> None:
    """One line on stderr when int8 activations cannot take effect (the integer route cannot run)."""
    from .. import cpu_operators

    available, reason = cpu_operators.int4_integer_route(hidden, settings.group_size)
    if not available:
        print(f"paddle_glm: --int8-activations changes nothing here: {reason}; int4's products compute in float32",
              file=sys.stderr)


def _refuse_other_rewrites(model: nn.Layer) -> None:
    if getattr(model, "quantization", None) is not None:
        raise GLMError("this model is already quantized")
    if getattr(model, "tensor_parallel", None) is not None:
        raise GLMError(QUANT_WITH_TP)
    if getattr(model, "lora_config", None) is not None:
        raise GLMError("quantize the base model first, then apply the LoRA adapter (it stays in full precision)")


def _swap(parent: nn.Layer, attr: str, old: nn.Layer, new: nn.Layer) -> None:
    """Put ``new`` in place of ``old``, quantizing its float weight (and copying its bias) if loaded."""
    if old.weight._is_initialized():
        new.set_paddle_weight(old.weight.numpy().astype(np.float32))
        if getattr(new, "bias", None) is not None:
            new.bias.set_value(old.bias)
    setattr(parent, attr, new)


def quantized_model_bytes(config, settings: QuantSettings, dtype: str = "float32") -> int:
    """Bytes of the weights of ``GLMForConditionalGeneration(config)`` quantized with ``settings``, the float
    parts in ``dtype`` (built lazily: no memory)."""
    from ..devices import default_dtype
    from ..model import GLMForConditionalGeneration

    with default_dtype(dtype), paddle.LazyGuard():
        model = GLMForConditionalGeneration(config)
    quantize_model(model, settings)
    return sum(int(np.prod(p.shape)) * p.element_size() for p in model.state_dict().values())


def convert_for_cuda(model: nn.Layer, arch: int) -> None:
    """Put a loaded quantized model in the layout Paddle's CUDA ``weight_only_linear`` reads, in place.

    Each QuantizedLinear's weight and scale are reordered for ``arch`` (``kernels.to_cuda_layout``:
    no requantization; the scale in the compute dtype). Quantized word embeddings are dequantized
    to the compute dtype: a lookup gathers rows, which the CUDA layout does not keep. Run by
    ``from_pretrained`` on a GPU; unverified there (no GPU here), tested on CPU.
    """
    from ..model import WordEmbeddings

    base = getattr(model, "glm", model)
    dtype = base.compute_dtype
    for layer in base.sublayers():
        if isinstance(layer, QuantizedLinear):
            weight, scale = to_cuda_layout(layer.weight.numpy(), layer.weight_scale.numpy(), layer.quant_type,
                                           layer.group_size, arch)
            layer.weight = _parameter_holding(layer, weight)
            layer.weight_scale = _parameter_holding(layer, paddle.to_tensor(scale).astype(dtype))
    embeddings = base.word_embeddings
    if isinstance(embeddings, QuantizedEmbedding):
        dense = dequantize_weight(embeddings.weight.numpy(), embeddings.weight_scale.numpy(), embeddings.quant_type,
                                  embeddings.group_size)  # [vocab, hidden]
        with paddle.LazyGuard():
            base.word_embeddings = WordEmbeddings(*dense.shape)
        base.word_embeddings.weight.set_value(paddle.to_tensor(dense).astype(dtype))


def _parameter_holding(layer: nn.Layer, value) -> paddle.Tensor:
    """A frozen parameter of ``layer`` holding ``value`` (a numpy array or tensor)."""
    tensor = value if isinstance(value, paddle.Tensor) else paddle.to_tensor(value)
    param = lazy_parameter(layer, list(tensor.shape), dtype_str(tensor.dtype))
    param.set_value(tensor)
    return param
