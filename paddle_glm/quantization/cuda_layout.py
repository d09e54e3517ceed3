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

CUDA_ARCHS = (70, 75, 80, 86, 89, 90, 92, 100)  # the arch values weight_quantize/weight_only_linear accept
CUDA_GROUP_SIZES = (64, 128)  # int4 group sizes weight_only_linear takes (int8 is per channel: -1)


def cuda_capability() -> int:
    """major * 10 + minor of the current GPU (80 = A100)."""
    major, minor = paddle.device.cuda.get_device_capability()
    return major * 10 + minor


def cuda_arch(capability: int) -> int:
    """The kernel arch Paddle's weight-only kernels use for a GPU of this capability.

    The kernels exist for the archs in ``CUDA_ARCHS``; another GPU runs the newest kernel not
    newer than itself within its generation (e.g. 87 -> 86, 120 -> 100). Below 70: GLMError.
    """
    if capability < CUDA_ARCHS[0]:
        raise GLMError(f"weight-only quantization on a GPU needs compute capability 7.0 or newer, "
                       f"this one is {capability // 10}.{capability % 10}")
    return max(a for a in CUDA_ARCHS if a <= capability)


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
    """Our stored ``(qweight, scale)`` in the layout ``weight_quantize(..., arch=arch)`` produces."""
    raise NotImplementedError("to_cuda_layout: being written")
