"""How long the idle threads of Paddle's OpenMP runtime spin before they sleep, switched per phase of work.

Paddle's x86 CPU wheels ship Intel's OpenMP runtime (``paddle/libs/libiomp5.so``): its MKL and oneDNN
kernels and this package's C++ operators (``cpu_operators``) run their parallel regions on it. After a
region, its threads spin for ``KMP_BLOCKTIME`` (200 ms unless set) so that the next region starts at once.
That suits a decode step, ~100 short regions in a row: with the threads sleeping at once, a glm-large
decode step took 77 ms instead of 58 ms (2 cores). But while numpy's BLAS multiplies a prefill's
products on threads of its own, the spinning threads left by Paddle's kernels in between (attention,
layer norm, GELU) take its cores: a 120-token glm-large prefill through BLAS took 1.40 s with them
spinning and 0.71 s with them asleep.

So :func:`sleep_when_idle` is called before each BLAS product (``linear.blas_linear``) and
:func:`spin_when_idle` before every other float projection (``linear.py``) and each call of the C++
operators (``cpu_operators``). The setting belongs
to the calling thread's OpenMP team (``kmp_set_blocktime``), so each thread keeps its own record.
Without Intel's runtime (other builds) both are no-ops.
"""
from __future__ import annotations

import ctypes
import os
import threading
from typing import Optional

import paddle

_state = threading.local()  # per thread: .short is True after sleep_when_idle, False after spin_when_idle
_runtime: dict = {}


def _library() -> Optional[ctypes.CDLL]:
    """Paddle's libiomp5 (already loaded by Paddle, so this only finds it), or None; on first use it also records
    the runtime's own blocktime (``KMP_BLOCKTIME``, else 200 ms), before this module ever changed it."""
    if "lib" not in _runtime:
        path = os.path.join(os.path.dirname(os.path.abspath(paddle.__file__)), "libs", "libiomp5.so")
        no_load = getattr(os, "RTLD_NOLOAD", None)  # POSIX only
        try:
            lib = ctypes.CDLL(path, mode=no_load | os.RTLD_LAZY) if no_load else None  # only if Paddle loaded it
        except OSError:
            lib = None
        _runtime["own"] = lib.kmp_get_blocktime() if lib is not None else None
        _runtime["lib"] = lib
    return _runtime["lib"]


def sleep_when_idle() -> None:
    """This thread's OpenMP threads sleep as soon as a parallel region ends (blocktime 0)."""
    if getattr(_state, "short", None) is True:
        return
    lib = _library()
    if lib is not None:
        lib.kmp_set_blocktime(0)
    _state.short = True


def spin_when_idle() -> None:
    """This thread's OpenMP threads spin for the runtime's own blocktime after a region, as they do unless
    :func:`sleep_when_idle` ran. Set explicitly on a thread's first call too: a thread the runtime starts
    while another one is set to sleep at once may begin with that setting."""
    if getattr(_state, "short", None) is False:
        return
    lib = _library()
    if lib is not None:
        lib.kmp_set_blocktime(_runtime["own"])
    _state.short = False
