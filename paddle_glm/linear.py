"""``nn.Linear`` without the per-call flag lookup of ``paddle.nn.functional.linear``.

On a CPU-only build of Paddle 3.3, ``F.linear`` in eager mode always ends in
``_C_ops.linear(x, weight, bias)``, but first reads ``FLAGS_use_legacy_linear`` through
``paddle.get_flags``, which costs ~30-45 us a call on this project's CPUs: 3-4 ms of every
glm-large decode step (97 projections), ~4% of it. :func:`linear` makes that same call
directly where the result cannot differ (eager mode, no CUDA in the build) and defers to
``F.linear`` everywhere else (CUDA builds choose another kernel by that flag; static graphs).
"""
from __future__ import annotations

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import _C_ops

_DIRECT = not paddle.is_compiled_with_cuda()  # F.linear's own condition for the legacy kernel, decided once


def linear(x: paddle.Tensor, weight: paddle.Tensor, bias=None) -> paddle.Tensor:
    """``x @ weight + bias`` (``weight`` ``[in, out]``): exactly ``F.linear``, without its flag lookup on CPU builds."""
    if _DIRECT and paddle.in_dynamic_mode():
        return _C_ops.linear(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, names and initialisation) computing through :func:`linear`."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return linear(x, self.weight, self.bias)
