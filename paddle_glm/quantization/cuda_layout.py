"""The CUDA route's decisions and the conversion of our stored layout to ``weight_quantize``'s.

``paddle.nn.quant.weight_only_linear`` (CUDA only) reads weights in the layout
``paddle.nn.quant.weight_quantize(w, algo=..., arch=..., group_size=...)`` produces for the
GPU's arch. Everything here is a pure function tested on CPU against ``weight_quantize``'s own
output (it runs on CPU when given a GPU arch); the CUDA kernel itself was never run here.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import paddle

from ..errors import GLMError

CUDA_ARCHS = (70, 75, 80, 86, 89, 90, 100)  # the archs weight_quantize takes (its CPU kernel refuses 92)
CUDA_GROUP_SIZES = (64, 128)  # int4 group sizes weight_only_linear takes (int8 is per channel: -1)


def cuda_capability() -> int:
    """major * 10 + minor of the current GPU (80 = A100)."""
    major, minor = paddle.device.cuda.get_device_capability()
    return major * 10 + minor


def cuda_arch(capability: int) -> int:
    """The kernel arch Paddle's weight-only kernels use for a GPU of this capability (major * 10 + minor).

    The newest arch in ``CUDA_ARCHS`` of the same major version not newer than the GPU
    (87 -> 86, 72 -> 70); GLMError when there is none (below 7.0, or a generation Paddle
    3.3's kernels do not name, such as 12.0).
    """
    fitting = [a for a in CUDA_ARCHS if a // 10 == capability // 10 and a <= capability]
    if not fitting:
        raise GLMError(f"weight-only quantization on a GPU: Paddle has no weight-only kernel for compute capability "
                       f"{capability // 10}.{capability % 10} (it has {', '.join(map(str, CUDA_ARCHS))})")
    return fitting[-1]


def cuda_weight_only_args(quant_type: str, group_size: int, capability: int) -> Dict[str, object]:
    """The keyword arguments of ``paddle.nn.quant.weight_only_linear`` for our quant type on this GPU."""
    if quant_type == "weight_only_int8":
        return {"weight_dtype": "int8", "arch": cuda_arch(capability), "group_size": -1}
    if group_size not in CUDA_GROUP_SIZES:
        raise GLMError(f"group_size {group_size}: Paddle's CUDA weight_only_linear takes int4 groups of "
                       f"{' or '.join(map(str, CUDA_GROUP_SIZES))} only")
    return {"weight_dtype": "int4", "arch": cuda_arch(capability), "group_size": group_size}


def to_cuda_layout(qweight: np.ndarray, scale: np.ndarray, quant_type: str, group_size: int,
                   arch: int) -> Tuple[np.ndarray, np.ndarray]:
    """Our stored ``(qweight, scale)`` in the layout ``weight_quantize(w.T, algo=quant_type, arch=arch,
    group_size=...)`` produces for the same values: ``(weight, scale)``.

    ``weight`` is int8 ``[out, in]`` (int8) or ``[out // 2, in]`` (int4); ``scale`` is float32
    ``[out]`` (int8) or ``[in // group_size, out]`` (int4): cast it to the compute dtype (float16 or
    bfloat16), which is what ``weight_quantize`` returns. The same bytes Paddle's own quantizer
    writes (tested on CPU for each arch), without requantizing: a pure reordering.
    """
    from .kernels import INT8, check_quant_args, unpack_int4  # kernels imports this module

    bits = 8 if quant_type == INT8 else 4
    out_features = qweight.shape[0]
    in_features = qweight.shape[1] * (8 // bits)
    check_quant_args(quant_type, group_size, in_features)
    if bits == 4 and group_size not in CUDA_GROUP_SIZES:
        raise GLMError(f"group_size {group_size}: Paddle's CUDA weight_only_linear takes int4 groups of "
                       f"{' or '.join(map(str, CUDA_GROUP_SIZES))} only")
    if in_features % 64 or out_features % 4:
        raise GLMError(f"weight [{out_features}, {in_features}]: Paddle's CUDA weight-only layout needs the input "
                       "dimension to be a multiple of 64 and the output dimension a multiple of 4")
    values = qweight if bits == 8 else unpack_int4(qweight)  # [out, in] integers
    if arch == 70:
        sequence = values.T.reshape(-1)  # row-major [in, out]: the quantizer's own order
    elif arch in CUDA_ARCHS:
        sequence = _tensor_core_order(values, bits)
    else:
        raise GLMError(f"arch {arch}: expected one of {', '.join(map(str, CUDA_ARCHS))}")
    weight = _bias_and_interleave(sequence, bits)
    weight = weight.reshape(out_features * bits // 8, in_features)
    scale = np.asarray(scale, np.float32)
    return weight, (scale if bits == 8 else np.ascontiguousarray(scale.T))


def _tensor_core_order(values: np.ndarray, bits: int) -> np.ndarray:
    """The element order of sm75+ kernels: rows of ``[in, out]`` permuted per MMA tile, transposed
    to column-major, then columns interleaved in tiles of 64 inputs (CUTLASS's mixed-input GEMM layout)."""
    out_features, in_features = values.shape
    per_register = 32 // bits  # elements in one 32-bit register
    tile_rows = 8 * (16 // bits)  # rows of B in one MMA tile
    t = np.arange(tile_rows)
    tile_order = 8 * ((t % per_register) // 2) + t % 2 + 2 * (t // per_register)
    rows = (np.arange(0, in_features, tile_rows)[:, None] + tile_order[None, :]).reshape(-1)
    permuted = values[:, rows]  # [out, in]: the [in, out] matrix with its rows permuted, transposed
    interleave = 128 * 8 // bits // 64  # output columns interleaved per tile: 2 (int8), 4 (int4)
    per_tile = 64 // per_register  # registers per tile of 64 inputs
    tiles = permuted.reshape(out_features // interleave, interleave, in_features // 64, per_tile, per_register)
    return tiles.transpose(0, 2, 1, 3, 4).reshape(-1)  # [out/I, in/64, I, registers, elements]


def _bias_and_interleave(sequence: np.ndarray, bits: int) -> np.ndarray:
    """Signed values in storage order -> the bytes the kernels read: offset to unsigned (+128 / +8),
    then reordered inside each 32-bit register (int8: bytes 0 2 1 3; int4: even nibbles, then odd)."""
    per_register = 32 // bits
    order = [0, 2, 1, 3] if bits == 8 else [0, 2, 4, 6, 1, 3, 5, 7]
    biased = (sequence.astype(np.int16) + (1 << (bits - 1))).reshape(-1, per_register)[:, order]
    if bits == 8:
        return biased.astype(np.uint8).view(np.int8).reshape(-1)
    pairs = biased.reshape(-1, 2).astype(np.uint8)  # nibble 2j low, 2j+1 high
    return (pairs[:, 0] | (pairs[:, 1] << np.uint8(4))).view(np.int8)
