"""dtype choice and the CPU float32 rule, checked before any weights are touched."""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import paddle

from .checkpoint.dtypes import DTYPE_NAMES
from .errors import GLMError


def resolve_dtype(dtype: Optional[str], device: Optional[str] = None) -> str:
    """The dtype to build a model in: ``dtype`` (default float32), validated for ``device``.

    float16/bfloat16 need a CUDA GPU: Paddle's CPU build has no half-precision
    matmul, layer_norm or softmax kernels, so asking for them on CPU is refused
    here rather than failing deep inside a forward pass.
    """
    name = "float32" if dtype is None else str(dtype).replace("paddle.", "")
    if name not in DTYPE_NAMES:
        raise GLMError(f"dtype: expected one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
    device = device or paddle.get_device()
    if name != "float32" and not device.startswith("gpu"):
        raise GLMError(f"dtype={name} needs a CUDA GPU: Paddle has no {name} matmul/layer_norm/softmax kernels on "
                       f"CPU (current device: {device}). Use dtype='float32' on CPU, or install paddlepaddle-gpu.")
    return name


@contextlib.contextmanager
def default_dtype(dtype: str) -> Iterator[None]:
    """Create parameters in ``dtype`` inside the block."""
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        yield
    finally:
        paddle.set_default_dtype(previous)
