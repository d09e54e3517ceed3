"""The device and dtype a model runs in: which device is current, dtype names and the CPU float32 rule
(checked before any weights are touched), and CPU threads."""
from __future__ import annotations

import contextlib
import os
import re
from typing import Iterator, Optional

import paddle

from .checkpoint.dtypes import DTYPE_NAMES
from .distributed import local_ranks
from .errors import GLMError

THREADS_ENV = "PADDLE_GLM_NUM_THREADS"


def device_type() -> str:
    """"gpu" when Paddle's current place is a CUDA GPU, else "cpu"."""
    return "gpu" if paddle.get_device().startswith("gpu") else "cpu"


def cuda_capability() -> int:
    """The current GPU's compute capability as major*10 + minor (80 = A100)."""
    major, minor = paddle.device.cuda.get_device_capability()
    return major * 10 + minor


def dtype_str(dtype) -> str:
    """A dtype's name ('float32', 'int64', ...) from a paddle dtype or a string."""
    return str(dtype).replace("paddle.", "")


def resolve_dtype(dtype: Optional[str], device: Optional[str] = None) -> str:
    """The dtype to build a model in: ``dtype`` (default float32), validated for ``device``.

    float16/bfloat16 need a CUDA GPU: Paddle's CPU build has no half-precision
    matmul, layer_norm or softmax kernels, so asking for them on CPU is refused
    here rather than failing deep inside a forward pass.
    """
    name = "float32" if dtype is None else dtype_str(dtype)
    if name not in DTYPE_NAMES:
        raise GLMError(f"dtype: expected one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
    device = device or paddle.get_device()
    if name != "float32" and not device.startswith("gpu"):
        raise GLMError(f"dtype={name} needs a CUDA GPU: Paddle has no {name} matmul/layer_norm/softmax kernels on "
                       f"CPU (current device: {device}). Use dtype='float32' on CPU, or install paddlepaddle-gpu.")
    return name


def set_device(name: str) -> None:
    """Make ``name`` (the CLI's ``--device``: cpu, gpu or gpu:N) Paddle's current device; a GLMError naming
    the flag when it is malformed or this build or machine has no such device."""
    match = re.fullmatch(r"(cpu|gpu|xpu|npu|dcu)(?::(\d+))?", name)
    if not match or (match.group(1) == "cpu" and match.group(2)):
        raise GLMError(f"--device {name}: expected cpu, gpu or gpu:N (or Paddle's xpu, npu, dcu)")
    if match.group(1) == "gpu":
        if not paddle.is_compiled_with_cuda():
            raise GLMError(f"--device {name}: this Paddle build has no CUDA support (the CPU build); use --device "
                           "cpu, or install paddlepaddle-gpu")
        count = paddle.device.cuda.device_count()
        if match.group(2) and int(match.group(2)) >= count:
            raise GLMError(f"--device {name}: this machine has {count} GPU(s), numbered from 0")
    try:
        paddle.set_device(name)
    except (ValueError, RuntimeError) as e:
        raise GLMError(f"--device {name}: {e}") from None


@contextlib.contextmanager
def default_dtype(dtype: str) -> Iterator[None]:
    """Create parameters in ``dtype`` inside the block."""
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype(dtype)
    try:
        yield
    finally:
        paddle.set_default_dtype(previous)


def cpu_thread_count() -> int:
    """How many threads Paddle's CPU kernels should use in this process.

    ``PADDLE_GLM_NUM_THREADS`` when set; else ``OMP_NUM_THREADS`` when it is above 1 (the user
    chose it before Paddle was imported; Paddle sets it to 1 itself when it is unset, so a 1 there
    says nothing about the user's wish); else this process's share of the cores it may run on:
    the ranks of a job started by ``paddle.distributed.launch`` (by ``paddle-glm`` or by hand) or
    ``paddle.distributed.spawn`` on one machine split them evenly, so they do not oversubscribe them.
    """
    chosen = os.environ.get(THREADS_ENV, "")
    if chosen:
        if not chosen.isdigit() or int(chosen) < 1:
            raise GLMError(f"{THREADS_ENV}={chosen!r}: expected a whole number of threads, at least 1")
        return int(chosen)
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 1:
        return int(omp)
    return max(1, usable_cores() // local_ranks())


def usable_cores() -> int:
    """The cores this process may run on (its affinity), else the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def use_cpu_threads() -> None:
    """Let Paddle's CPU math use :func:`cpu_thread_count` threads (a process-wide setting).

    Paddle runs CPU kernels on one thread unless ``OMP_NUM_THREADS`` was set before it was
    imported; a batch-1 decode step is bound by reading the weights, and on this project's
    2-core machine two threads decode about 1.5x as fast (``benchmarks/RESULTS.md``).
    Called by the entry points only (the CLI, ``from_pretrained``, the benchmarks): building a
    model changes no process-wide setting.
    """
    set_cpu_threads(cpu_thread_count())


def set_cpu_threads(count: int) -> None:
    """Set the thread count of Paddle's CPU math now (Paddle has no public API for it)."""
    paddle.base.core.set_num_threads(count)
    _chosen["threads"] = count


def chosen_cpu_threads() -> int:
    """The count :func:`set_cpu_threads` last set (Paddle has no getter), else :func:`cpu_thread_count`: what
    this project's own CPU operators use, read per call without :func:`cpu_thread_count`'s ~10 us of
    environment and affinity lookups."""
    return _chosen["threads"] or cpu_thread_count()


_chosen = {"threads": 0}  # set by set_cpu_threads
