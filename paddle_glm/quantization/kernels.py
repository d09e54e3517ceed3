"""Weight-only int8/int4 kernels behind one dispatch, as ``attention.py`` does for attention.

Stored layout (ours, on disk and on CPU), for a weight ``[out, in]`` (rows = output channels):

* ``weight_only_int8``: int8 ``[out, in]``, symmetric per output channel, float32 scale ``[out]``
  (``scale = max|row| / 127``).
* ``weight_only_int4``: symmetric per group of ``group_size`` consecutive inputs, float32 scale
  ``[out, in // group_size]`` (``scale = max|group| / 7``), values in [-8, 7] packed two per byte
  along the input dim into uint8 ``[out, in // 2]``: byte j holds element 2j in the low nibble and
  2j+1 in the high nibble, each a 4-bit two's complement.

Routes (:func:`choose_route`, a pure function tested on CPU):

* ``cuda_weight_only``: ``paddle.nn.quant.weight_only_linear`` on the layout
  ``paddle.nn.quant.weight_quantize`` produces for the GPU's arch (see ``cuda_layout.py``).
* ``cpu_operator``: the C++ operator in ``paddle_glm/csrc/`` (built on first use, see ``cpu_operators.py``):
  int8/int4 converted to float32 in registers, float32 accumulation, OpenMP over output channels. On AVX2
  builds int4 (inputs a multiple of 64; groups of 16, 32 or a multiple of 64 up to 4096) instead rounds each
  group of ``x`` to int16 (scale: the group's largest |x| / 32767) and sums integer products
  (``csrc/int4_integer_product.cc``): each output moves by at most 1/65534 of each group's largest |x| times the
  |weights| it meets (~1.5e-5 of the largest output on random inputs); to int8 (1/254, ~4e-3) when the layer's
  ``activation_bits`` is 8 (:func:`~paddle_glm.quantization.rewrite.use_int8_activations`).
* ``cpu_tiled_fallback``: Paddle ops only, when the operator cannot be built: the weight is
  converted to float32 in ~1 MiB tiles of rows, each tile multiplied as it is made.

No route gives the quantized weight a gradient; ``x`` gets one on CPU (see :func:`weight_only_linear`).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import paddle

from .. import cpu_operators
from ..attention import device_type, dtype_str
from ..errors import GLMError
from ..linear import is_float32
from .cuda_layout import cuda_capability, cuda_weight_only_args, to_cuda_layout  # noqa: F401 (the interface)

INT8, INT4 = "weight_only_int8", "weight_only_int4"
QUANT_TYPES = (INT8, INT4)
DEFAULT_GROUP_SIZE = 64
CUDA_WEIGHT_ONLY, CPU_OPERATOR, CPU_TILED_FALLBACK = "cuda_weight_only", "cpu_operator", "cpu_tiled_fallback"
_HALF = ("float16", "bfloat16")
_QMAX = {INT8: 127, INT4: 7}
_CHUNK_ELEMENTS = 1 << 23  # rows quantized at once: ~32 MiB of float32 per temporary (a handful live at once)
_TILE_BYTES = 1 << 20  # the fallback's tile: ~1 MiB of stored weight, converted to float32 and multiplied


def check_quant_args(quant_type: str, group_size: int, in_features: int) -> None:
    """One-line GLMError unless ``quant_type`` and ``group_size`` suit a weight with ``in_features`` inputs."""
    if quant_type not in QUANT_TYPES:
        raise GLMError(f"quant_type: expected one of {', '.join(QUANT_TYPES)}, got {quant_type!r}")
    if quant_type == INT4:
        if in_features % 2:
            raise GLMError(f"weight_only_int4 packs two inputs per byte: the input dimension {in_features} is odd")
        if (not isinstance(group_size, (int, np.integer)) or group_size <= 0 or group_size % 2
                or in_features % group_size):
            raise GLMError(f"group_size: expected a positive even divisor of the input dimension {in_features}, "
                           f"got {group_size!r}")


def quantize_weight(weight: np.ndarray, quant_type: str,
                    group_size: int = DEFAULT_GROUP_SIZE) -> Tuple[np.ndarray, np.ndarray]:
    """Quantize a float ``[out, in]`` weight; returns ``(qweight, scale)`` in the stored layout (module docstring).

    ``q = w / scale`` rounded to the nearest integer (ties to even), computed in float32. A row
    (int8) or group (int4) of zeros gets scale 0 and zeros; an inf or NaN is a GLMError. Works in
    chunks of rows, so the float32 temporaries stay small whatever the matrix size (callers
    quantizing a checkpoint as it streams in pass one tensor at a time).
    """
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise GLMError(f"weight: expected a 2-D [out, in] matrix, got shape {list(weight.shape)}")
    out_features, in_features = weight.shape
    check_quant_args(quant_type, group_size, in_features)
    groups = 1 if quant_type == INT8 else in_features // group_size
    packed_in = in_features if quant_type == INT8 else in_features // 2
    qweight = np.empty((out_features, packed_in), np.int8 if quant_type == INT8 else np.uint8)
    scale = np.empty((out_features, groups), np.float32)
    rows = max(1, _CHUNK_ELEMENTS // max(in_features, 1))
    for r0 in range(0, out_features, rows):
        r1 = min(r0 + rows, out_features)
        chunk = weight[r0:r1].astype(np.float32).reshape(r1 - r0, groups, -1)  # [rows, groups, in // groups]
        q, scale[r0:r1] = _quantize_groups(chunk, _QMAX[quant_type])
        qweight[r0:r1] = q.reshape(r1 - r0, in_features) if quant_type == INT8 else _pack_int4(q)
    return qweight, (scale[:, 0] if quant_type == INT8 else scale)


def _quantize_groups(chunk: np.ndarray, qmax: int) -> Tuple[np.ndarray, np.ndarray]:
    """Symmetric rounding of each ``[rows, groups, size]`` group to [-qmax, qmax]: int8 q and float32 scale.

    ``chunk`` is a float32 copy; it is overwritten.
    """
    amax = np.maximum(chunk.max(axis=2), -chunk.min(axis=2))  # [rows, groups]; NaN propagates
    if not np.isfinite(amax).all():
        raise GLMError("weight has non-finite values")
    scale = (amax / np.float32(qmax)).astype(np.float32)
    np.divide(chunk, np.where(scale > 0, scale, np.float32(1))[:, :, None], out=chunk)
    np.rint(chunk, out=chunk)
    np.clip(chunk, -qmax, qmax, out=chunk)
    return chunk.astype(np.int8), scale


def _pack_int4(q: np.ndarray) -> np.ndarray:
    """int8 values in [-8, 7], ``[rows, groups, size]`` -> uint8 ``[rows, in // 2]`` (element 2j low nibble)."""
    pairs = q.reshape(q.shape[0], -1, 2).view(np.uint8) & np.uint8(0x0F)  # [rows, in // 2, 2]
    return pairs[:, :, 0] | (pairs[:, :, 1] << np.uint8(4))


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """uint8 ``[out, in // 2]`` -> int8 ``[out, in]`` values in [-8, 7] (the inverse of the packing)."""
    signed = packed.view(np.int8)
    low = (signed << np.int8(4)) >> np.int8(4)  # arithmetic shift: sign-extends the low nibble
    high = signed >> np.int8(4)
    return np.stack([low, high], axis=-1).reshape(packed.shape[0], -1)  # [out, in // 2, 2] -> [out, in]


def dequantize_weight(qweight: np.ndarray, scale: np.ndarray, quant_type: str,
                      group_size: int = DEFAULT_GROUP_SIZE) -> np.ndarray:
    """The float32 ``[out, in]`` weight the stored ``(qweight, scale)`` stand for (the reference semantics)."""
    if quant_type == INT8:
        return qweight.astype(np.float32) * np.asarray(scale, np.float32)[:, None]
    check_quant_args(quant_type, group_size, 2 * qweight.shape[1])
    values = unpack_int4(np.asarray(qweight)).astype(np.float32)
    out_features, in_features = values.shape
    grouped = values.reshape(out_features, in_features // group_size, group_size)  # [out, groups, size]
    return (grouped * np.asarray(scale, np.float32)[:, :, None]).reshape(out_features, in_features)


def choose_route(device_type: str, dtype: str, quant_type: str, operator_built: bool) -> str:
    """The kernel for one case: ``cuda_weight_only``, ``cpu_operator`` or ``cpu_tiled_fallback``.

    Args:
        device_type: "gpu" or "cpu" (Paddle's place type).
        dtype: the compute dtype name of the activations.
        quant_type: one of ``QUANT_TYPES``.
        operator_built: whether the C++ CPU operator is loaded (:func:`operator_status`).
    """
    if quant_type not in QUANT_TYPES:
        raise GLMError(f"quant_type: expected one of {', '.join(QUANT_TYPES)}, got {quant_type!r}")
    if device_type == "gpu":
        if dtype not in _HALF:
            raise GLMError(f"dtype={dtype} with {quant_type} on a GPU: Paddle's weight_only_linear runs in "
                           "float16 or bfloat16 only; use one of those")
        return CUDA_WEIGHT_ONLY
    if dtype in _HALF:
        raise GLMError("half precision on CPU: Paddle has no CPU kernels for it; use float32")
    if dtype != "float32":
        raise GLMError(f"dtype={dtype} with {quant_type}: expected float32 on CPU")
    return CPU_OPERATOR if operator_built else CPU_TILED_FALLBACK


def operator_status() -> Tuple[bool, str]:
    """``(True, "")`` when the C++ CPU operator is loaded (building it on first use), else ``(False, reason)``."""
    return cpu_operators.status()


def weight_only_linear(x: paddle.Tensor, qweight: paddle.Tensor, scale: paddle.Tensor,
                       bias: Optional[paddle.Tensor] = None, *, quant_type: str,
                       group_size: int = DEFAULT_GROUP_SIZE, activation_bits: int = 16) -> paddle.Tensor:
    """``x @ dequantize(qweight, scale).T + bias`` for ``x`` ``[..., in]``: the one entry point layers call.

    The route follows ``x``: a float32 CPU tensor takes the C++ operator (or the fallback), whatever Paddle's
    default device. On CPU ``qweight``/``scale`` are in the stored layout (module docstring) and ``x`` is float32; on a
    GPU they are in the CUDA layout (:func:`to_cuda_layout`, done once at load) and ``x`` is
    float16/bfloat16. No gradient flows to the quantized weight; on CPU ``x`` gets its gradient
    (LoRA adapters training over a quantized base) from :func:`input_grad`. ``activation_bits`` (16 or 8): what
    the C++ operator's int4 integer route rounds ``x`` to (8:
    :func:`~paddle_glm.quantization.rewrite.use_int8_activations`); every other route ignores it.

    The CUDA call is unverified: no CUDA build of Paddle 3.x can be installed where this was
    written. Its arguments come from :func:`cuda_weight_only_args` (tested on CPU) and its weights
    equal ``weight_quantize``'s output bit for bit (tested on CPU for archs 70-100); the kernel
    itself never ran.
    """
    if (x.stop_gradient and quant_type in QUANT_TYPES and is_float32(x) and x.place.is_cpu_place()
            and cpu_operators.status()[0]):
        return _cpu_inference(x, qweight, scale, bias, quant_type, group_size,  # checked first: ~100 calls a step
                              activation_bits)
    device, dtype = device_type(), dtype_str(x.dtype)
    built = device == "cpu" and dtype == "float32" and cpu_operators.status()[0]
    route = choose_route(device, dtype, quant_type, built)
    if route == CUDA_WEIGHT_ONLY:
        args = cuda_weight_only_args(quant_type, group_size, cuda_capability())
        if scale.dtype != x.dtype:
            scale = scale.astype(x.dtype)
        return paddle.nn.quant.weight_only_linear(x, qweight, bias=bias, weight_scale=scale, **args)
    rows = x.reshape([-1, x.shape[-1]])  # [..., in] -> [rows, in]
    if route == CPU_OPERATOR:  # LoRA adapters training over a quantized base: x needs its gradient
        out = _OperatorWithInputGrad.apply(rows, qweight, scale, quant_type, group_size, activation_bits)
    else:
        cpu_operators.notice_fallback()
        out = tiled_fallback(rows, qweight, scale, quant_type, group_size)
    if bias is not None:
        out = out + bias
    return out.reshape(list(x.shape[:-1]) + [out.shape[-1]])  # [rows, out] -> [..., out]


def _cpu_inference(x: paddle.Tensor, qweight: paddle.Tensor, scale: paddle.Tensor, bias: Optional[paddle.Tensor],
                   quant_type: str, group_size: int, activation_bits: int) -> paddle.Tensor:
    """The operator on float32 ``x`` ``[..., in]`` that needs no gradient: it takes the leading dimensions and
    the bias as they are; a bias in another dtype, or one that needs its gradient, is added by Paddle."""
    if bias is not None and (not is_float32(bias) or (paddle.is_grad_enabled() and not bias.stop_gradient)):
        return cpu_operators.run(x, qweight, scale, quant_type, group_size, None, activation_bits) + bias
    return cpu_operators.run(x, qweight, scale, quant_type, group_size, bias, activation_bits)  # [..., out]


def tiled_fallback(rows: paddle.Tensor, qweight: paddle.Tensor, scale: paddle.Tensor, quant_type: str,
                   group_size: int = DEFAULT_GROUP_SIZE) -> paddle.Tensor:
    """``rows`` ``[n, in]`` times the dequantized weight, transposed: ``[n, out]``, in Paddle ops only.

    The weight is converted to float32 in tiles of ~1 MiB of stored bytes (Paddle's cast is
    ~8x faster on small tiles than on a whole matrix) and each tile is multiplied at once.
    int4: the low nibbles multiply the even inputs and the high nibbles the odd ones, so the
    nibbles are never interleaved.
    """
    tile = max(1, _TILE_BYTES // max(qweight.shape[1], 1))
    if quant_type == INT4:
        rows = (rows[:, 0::2], rows[:, 1::2])  # even, odd inputs: [n, in // 2] each
    parts = []
    for r0 in range(0, qweight.shape[0], tile):
        q, s = qweight[r0:r0 + tile], scale[r0:r0 + tile]
        if quant_type == INT8:
            parts.append(paddle.matmul(rows, q.astype("float32"), transpose_y=True) * s)
        else:
            low, high = _int4_tile(q, s, group_size)  # [t, in // 2] each
            parts.append(paddle.matmul(rows[0], low, transpose_y=True) + paddle.matmul(rows[1], high, transpose_y=True))
    return paddle.concat(parts, axis=1) if len(parts) > 1 else parts[0]


class _OperatorWithInputGrad(paddle.autograd.PyLayer):
    """The C++ operator's product, with the gradient of its input computed by :func:`input_grad`."""

    @staticmethod
    def forward(ctx, rows, qweight, scale, quant_type, group_size, activation_bits):
        ctx.save_for_backward(qweight, scale)
        ctx.quant = (quant_type, group_size)
        return cpu_operators.run(rows, qweight, scale, quant_type, group_size, None, activation_bits)

    @staticmethod
    def backward(ctx, grad_out):
        qweight, scale = ctx.saved_tensor()
        return input_grad(grad_out, qweight, scale, *ctx.quant), None, None


def input_grad(grad_out: paddle.Tensor, qweight: paddle.Tensor, scale: paddle.Tensor, quant_type: str,
               group_size: int = DEFAULT_GROUP_SIZE) -> paddle.Tensor:
    """``grad_out`` ``[n, out]`` times the dequantized weight: ``[n, in]``, tile by tile as :func:`tiled_fallback`."""
    tile = max(1, _TILE_BYTES // max(qweight.shape[1], 1))
    total = None
    for r0 in range(0, qweight.shape[0], tile):
        q, s, g = qweight[r0:r0 + tile], scale[r0:r0 + tile], grad_out[:, r0:r0 + tile]
        if quant_type == INT8:
            part = paddle.matmul(g * s, q.astype("float32"))  # [n, in]
        else:
            low, high = _int4_tile(q, s, group_size)  # the weights of the even and the odd inputs
            part = paddle.stack([paddle.matmul(g, low), paddle.matmul(g, high)], axis=-1)  # [n, in // 2, 2]
        total = part if total is None else total + part
    return total.reshape([grad_out.shape[0], -1])  # [n, in]


def _int4_tile(q: paddle.Tensor, scale: paddle.Tensor, group_size: int) -> Tuple[paddle.Tensor, paddle.Tensor]:
    """uint8 ``[t, in // 2]`` and scale ``[t, groups]`` -> the float32 weights of the even and of the odd inputs."""
    four = paddle.full([], 4, "int8")
    signed = q.astype("int8")  # the same bits, read as two's complement
    low = paddle.bitwise_right_shift(paddle.bitwise_left_shift(signed, four), four)  # arithmetic: sign-extends
    high = paddle.bitwise_right_shift(signed, four)
    t, groups = scale.shape
    scale = scale.unsqueeze(-1)  # [t, groups, 1]
    return tuple((v.astype("float32").reshape([t, groups, group_size // 2]) * scale).reshape([t, -1])
                 for v in (low, high))
