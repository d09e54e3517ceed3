"""The float projections of the model (its Linears and the tied output projection), on the fastest CPU
route for each case.

* Up to 128 rows of float32 on CPU, with no gradient wanted (a decode step, a short prompt's
  prefill): the C++ operator ``glm_small_batch_linear`` (``cpu_operators``), which reads each weight
  once for all rows. On the glm-large shapes Paddle's CPU matmul costs ~1.25x ours at one row, ~3x
  at 8 rows and ~2.3x from 16 to 128 rows (``benchmarks/bench_generate.py`` measures the one-row pass).
* Otherwise, on a CPU-only build of Paddle in eager mode: ``_C_ops.linear``, which is what
  ``F.linear`` calls there, without its per-call ``paddle.get_flags`` lookup (~30-45 us a call,
  ~4% of a glm-large decode step).
* Everywhere else (CUDA builds, which choose another kernel by that flag; static graphs): ``F.linear``.
"""
from __future__ import annotations

import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import _C_ops

from . import cpu_operators

_FLOAT32 = paddle.float32
_DIRECT = not paddle.is_compiled_with_cuda()  # F.linear's own condition for the legacy kernel, decided once


def linear(x: paddle.Tensor, weight: paddle.Tensor, bias=None) -> paddle.Tensor:
    """``x @ weight + bias`` (``weight`` ``[in, out]``): ``F.linear``'s result and gradient (module docstring)."""
    if not (_DIRECT and paddle.in_dynamic_mode()):
        return F.linear(x, weight, bias)
    if small_batch_route(x, weight, bias):
        return cpu_operators.small_batch_linear(x, weight, bias)  # [..., out]
    return _C_ops.linear(x, weight, bias)


def linear_transposed(x: paddle.Tensor, weight: paddle.Tensor) -> paddle.Tensor:
    """``x @ weight.T`` (``weight`` ``[out, in]``, as the tied output projection stores it), on the same routes."""
    if _DIRECT and paddle.in_dynamic_mode() and small_batch_route(x, weight):
        return cpu_operators.small_batch_linear(x, weight, transposed=True)  # [..., out]
    return paddle.matmul(x, weight, transpose_y=True)


def small_batch_route(x: paddle.Tensor, weight: paddle.Tensor, bias=None) -> bool:
    """Whether ``glm_small_batch_linear`` computes this product: float32 on CPU, at most
    ``SMALL_BATCH_ROWS`` rows, no gradient to record, and the operators loaded (built on first use).

    Called for every projection (~100 a decode step), so the cheapest tests come first."""
    if not (is_float32(x) and is_float32(weight)):
        return False
    if bias is not None and not is_float32(bias):
        return False
    if paddle.is_grad_enabled() and not (x.stop_gradient and weight.stop_gradient
                                         and (bias is None or bias.stop_gradient)):
        return False
    return (math.prod(x.shape[:-1]) <= cpu_operators.SMALL_BATCH_ROWS and x.place.is_cpu_place()
            and cpu_operators.status()[0])


def is_float32(t: paddle.Tensor) -> bool:
    """``t.dtype == float32``, by identity first: Paddle 3.3 hands out one dtype object per dtype (``==`` costs
    ~1 us), and ``==`` decides when it does not."""
    dtype = t.dtype
    return dtype is _FLOAT32 or dtype == _FLOAT32


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, names and initialisation) computing through :func:`linear`."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return linear(x, self.weight, self.bias)
