"""The float projections of the model (its Linears and the tied output projection), on the fastest CPU
route for each case.

Float32 on CPU with no gradient wanted (inference), in eager mode on a CPU-only build of Paddle:

* decode steps of up to 128 rows and prefills of fewer than :data:`BLAS_ROWS` (32) rows: the C++ operator
  ``glm_small_batch_linear`` (``cpu_operators``), which reads each weight once for all rows. On the
  glm-large shapes Paddle's CPU matmul costs ~1.25x ours at one row, ~3x at 8 rows and ~2.3x from 16 to
  128 rows (``benchmarks/bench_generate.py`` measures the one-row pass);
* prefills and scoring of 32 rows or more (batch x tokens), and any product of more than 128 rows:
  numpy's BLAS (the OpenBLAS numpy's wheels bundle), reading
  Paddle's tensors in place and handing the result back without a copy (DLPack), with Paddle's OpenMP
  threads set to sleep at once between its products (``openmp_wait``: spinning, they took BLAS's cores
  and made it slower than the C++ operator below 128 rows). Measured on glm-large by
  ``benchmarks/bench_prefill.py``. BLAS runs threads of its own (OpenBLAS fixes their count when numpy
  loads: ``OPENBLAS_NUM_THREADS`` or ``OMP_NUM_THREADS``, else every core), so it is used only when this
  process may use every core: it is the only rank on the machine (``distributed.local_ranks``) and its
  thread count (``devices.chosen_cpu_threads``) is every usable core; otherwise the C++ operator up to
  128 rows and Paddle's matmul above.

Otherwise, on a CPU-only build of Paddle in eager mode: ``_C_ops.linear``, which is what ``F.linear``
calls there, without its per-call ``paddle.get_flags`` lookup (~30-45 us a call, ~4% of a glm-large
decode step). Everywhere else (CUDA builds, which choose another kernel by that flag; static graphs):
``F.linear``.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import _C_ops

from . import cpu_operators
from .devices import chosen_cpu_threads, usable_cores
from .distributed import local_ranks
from .openmp_wait import sleep_when_idle, spin_when_idle

_FLOAT32 = paddle.float32
_DIRECT = not paddle.is_compiled_with_cuda()  # F.linear's own condition for the legacy kernel, decided once
SMALL_BATCH, BLAS = "small_batch", "blas"
BLAS_ROWS = 32  # products of at least this many rows go to BLAS when it may use every core


def linear(x: paddle.Tensor, weight: paddle.Tensor, bias=None) -> paddle.Tensor:
    """``x @ weight + bias`` (``weight`` ``[in, out]``): ``F.linear``'s result and gradient (module docstring)."""
    if not (_DIRECT and paddle.in_dynamic_mode()):
        return F.linear(x, weight, bias)
    route = inference_route(x, weight, bias)
    if route == BLAS:
        return blas_linear(x, weight, bias)  # [..., out]
    if route == SMALL_BATCH:
        return cpu_operators.small_batch_linear(x, weight, bias)  # [..., out] (the operator spins again itself)
    spin_when_idle()  # Paddle's kernel: its OpenMP threads spin between calls again
    return _C_ops.linear(x, weight, bias)


def linear_transposed(x: paddle.Tensor, weight: paddle.Tensor) -> paddle.Tensor:
    """``x @ weight.T`` (``weight`` ``[out, in]``, as the tied output projection stores it), on the same routes."""
    route = inference_route(x, weight) if _DIRECT and paddle.in_dynamic_mode() else None
    if route == BLAS:
        return blas_linear(x, weight, transposed=True)  # [..., out]
    if route == SMALL_BATCH:
        return cpu_operators.small_batch_linear(x, weight, transposed=True)  # [..., out]
    spin_when_idle()
    return paddle.matmul(x, weight, transpose_y=True)


def inference_route(x: paddle.Tensor, weight: paddle.Tensor, bias=None) -> Optional[str]:
    """``SMALL_BATCH`` or ``BLAS`` for a float32 CPU product that records no gradient (module docstring), else
    None (Paddle's kernel).

    Called for every projection (~100 a decode step), so the cheapest tests come first."""
    if not (is_float32(x) and is_float32(weight)):
        return None
    if bias is not None and not is_float32(bias):
        return None
    if paddle.is_grad_enabled() and not (x.stop_gradient and weight.stop_gradient
                                         and (bias is None or bias.stop_gradient)):
        return None
    if not x.place.is_cpu_place():
        return None
    rows = math.prod(x.shape[:-1])
    small = rows <= cpu_operators.SMALL_BATCH_ROWS
    decode = len(x.shape) > 2 and x.shape[-2] == 1  # a decode step's rows: one position each
    if rows >= BLAS_ROWS and not (decode and small) and local_ranks() == 1 \
            and chosen_cpu_threads() >= usable_cores():
        return BLAS
    return SMALL_BATCH if small and cpu_operators.status()[0] else None


def blas_linear(x: paddle.Tensor, weight: paddle.Tensor, bias: Optional[paddle.Tensor] = None,
                transposed: bool = False) -> paddle.Tensor:
    """``x @ weight + bias`` (``transposed``: ``x @ weight.T``) for float32 CPU tensors through numpy's BLAS,
    reading the tensors in place and handing the result to Paddle without a copy (DLPack): ``[..., out]``."""
    sleep_when_idle()  # Paddle's OpenMP threads must not spin while BLAS's threads work
    xs, w = np.from_dlpack(x.detach()), np.from_dlpack(weight.detach())
    rows = xs.reshape(math.prod(xs.shape[:-1]), xs.shape[-1])  # [..., in] -> [rows, in]
    y = rows @ (w.T if transposed else w)  # [rows, out]
    if bias is not None:
        np.add(y, np.from_dlpack(bias.detach()), out=y)
    return paddle.from_dlpack(y.reshape(*xs.shape[:-1], y.shape[-1]))  # [rows, out] -> [..., out]


def is_float32(t: paddle.Tensor) -> bool:
    """``t.dtype == float32``, by identity first: Paddle 3.3 hands out one dtype object per dtype (``==`` costs
    ~1 us), and ``==`` decides when it does not."""
    dtype = t.dtype
    return dtype is _FLOAT32 or dtype == _FLOAT32


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, names and initialisation) computing through :func:`linear`."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return linear(x, self.weight, self.bias)
