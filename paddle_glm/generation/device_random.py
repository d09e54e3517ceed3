"""Random numbers made on the device, one independent stream per row.

A counter-based generator (as Philox in cuRAND and JAX): the uniform of row ``r`` at draw
``t`` is a hash of the row's key and ``t``, so a row's draws depend on its own seed only,
never on which rows share its batch or on how many draws they took. Nothing is read back to
the host, and the same integer arithmetic gives the same numbers on every device.

The hash is Chris Wellons' ``lowbias32`` (xor-shift-multiply rounds on 32-bit words), computed
in int64 with each 32-bit product split in 16-bit halves so that no intermediate overflows.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import paddle

_MASK32 = 0xFFFFFFFF
_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)  # lowbias32's two rounds
_GOLDEN = 0x9E3779B9  # spreads consecutive counters and rows over the 32-bit words
_UNIFORM_BITS = 24  # float32's mantissa: uniforms are odd multiples of 2**-25 in (0, 1)
_SEED_SALT = 0x5BD1E995  # lowbias32 maps 0 to 0: seed 0 must not give key 0


def _const(value: int) -> paddle.Tensor:
    return paddle.full([1], value, dtype="int64")


def _mul32(x: paddle.Tensor, multiplier: int) -> paddle.Tensor:
    """``x * multiplier mod 2**32`` for ``x`` in [0, 2**32), without an int64 overflow."""
    high, low = multiplier >> 16, multiplier & 0xFFFF
    wrapped_high = paddle.bitwise_and(x * high, _const(0xFFFF))  # only its low 16 bits survive the shift
    return paddle.bitwise_and(x * low + wrapped_high * 65536, _const(_MASK32))


def mix32(x: paddle.Tensor) -> paddle.Tensor:
    """``lowbias32`` of int64 values in [0, 2**32) (a bijection on 32-bit words)."""
    x = paddle.bitwise_xor(x, x // 65536)  # x ^= x >> 16
    x = _mul32(x, _MULTIPLIERS[0])
    x = paddle.bitwise_xor(x, x // 32768)  # x ^= x >> 15
    x = _mul32(x, _MULTIPLIERS[1])
    return paddle.bitwise_xor(x, x // 65536)


def row_keys(seeds: Sequence[Optional[int]], rows: Optional[Sequence[int]] = None) -> paddle.Tensor:
    """int64 ``[n]``: the stream key of each row, from its seed (``None``: a fresh random seed) and its
    index ``rows[i]`` among the rows of one request (default ``0..n-1``), so that the rows of one
    seeded ``generate`` call draw differently."""
    rng = np.random.default_rng()
    seeds = [int(rng.integers(2 ** 63)) if s is None else int(s) for s in seeds]
    rows = list(range(len(seeds))) if rows is None else list(rows)
    low = paddle.to_tensor([(s & _MASK32) ^ _SEED_SALT for s in seeds], dtype="int64")
    high = paddle.to_tensor([(s >> 32) & _MASK32 for s in seeds], dtype="int64")
    row = paddle.to_tensor([(r * _GOLDEN) & _MASK32 for r in rows], dtype="int64")
    return mix32(paddle.bitwise_xor(mix32(paddle.bitwise_xor(mix32(low), high)), row))


def uniforms(keys: paddle.Tensor, counter: paddle.Tensor) -> paddle.Tensor:
    """float32 ``[rows, 1]`` in (0, 1), never 0: draw number ``counter`` (int64 ``[1]`` or ``[rows]``) of
    each row's stream."""
    spread = _mul32(paddle.bitwise_and(counter + 1, _const(_MASK32)), _GOLDEN)
    bits = mix32(paddle.bitwise_xor(mix32(paddle.bitwise_xor(keys, spread)), keys))
    top = (bits // (1 << (32 - _UNIFORM_BITS))).astype("float32")  # [0, 2**24)
    return ((top + 0.5) * 2.0 ** -_UNIFORM_BITS).unsqueeze(-1)
