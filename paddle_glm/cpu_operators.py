"""The C++ CPU operators (``csrc/``): built on first use, cached, loaded.

* ``glm_weight_only_linear`` (``weight_only_linear.cc``): ``x`` times an int8/int4 weight
  (``paddle_glm.quantization.kernels``);
* ``glm_small_batch_linear`` (``small_batch_linear.cc``): ``x`` times a float32 ``[in, out]``
  weight plus a bias (or times an ``[out, in]`` weight transposed) for up to 128 rows
  (``paddle_glm.linear``): a decode step's projections and a short prompt's prefill (32 rows or
  more go to numpy's BLAS when it may use every core), where Paddle's
  CPU matmul costs ~5x a one-row pass at 8 rows and ~2.3x these kernels from 16 to 128 rows;
* ``glm_decode_attention`` (``decode_attention.cc``): a decode step's attention over a float32
  ``bhsd`` KV cache, with the cache write, in one call (``paddle_glm.kv_cache``).
* ``glm_decode_block`` (``decode_block.cc``): a decode step through a whole block whose projections
  are weight-only quantized (LayerNorms, the four products, the attention with its cache write,
  GELU, residual adds) in one call (``paddle_glm.quantization.decode_block``);
* ``glm_decode_stack`` (``decode_stack.cc``): that step for every block of the stack in one call, a plain C
  function called through ctypes (:func:`decode_stack_function`; ``paddle_glm.quantization.decode_stack``).

The sources are compiled by the system C++ compiler (``$CXX``, else ``g++``/``c++``; it needs
OpenMP, e.g. Debian's ``build-essential``) through Paddle's custom-operator toolchain
(``paddle.utils.cpp_extension``) into one library, once per Paddle version, Python version,
compiler, CPU and source, into ``<cache>/ops/<paddle version>-<hash>/`` where ``<cache>`` is
``$PADDLE_GLM_CACHE_DIR``, else ``$XDG_CACHE_HOME/paddle_glm``, else ``~/.cache/paddle_glm``.
A build happens in a private temporary directory that is renamed into place when complete, so
processes building at once never see half a library; the first rename wins and the others
use its result. Paddle hands an operator contiguous copies of strided inputs, so the callers below
need not make them contiguous (and an in-place input must not be a view). Without the library,
weight-only products take the tiled fallback, float products of up to 128 rows Paddle's own matmul
(unless numpy's BLAS takes them: ``linear.py``), decode attention Paddle's matmul-softmax
path and a quantized block's decode step the block's own ops.

Environment:

* ``PADDLE_GLM_CPU_OPERATORS=0`` (or its former name ``PADDLE_GLM_WEIGHT_ONLY_OPERATOR=0``): do not
  build or load them.
* ``PADDLE_GLM_CPU_OPERATORS_CFLAGS``: the target flags, instead of ``-march=native`` (used when
  the compiler accepts it); e.g. ``-march=x86-64-v2`` for a library that other CPUs can share.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
from typing import Callable, List, Optional, Tuple

import paddle

from .devices import chosen_cpu_threads
from .errors import GLMError
from .io_utils import make_temp_dir, remove_tree
from .openmp_wait import spin_when_idle

LIBRARY = "glm_cpu_operators"
OP_NAME, SMALL_BATCH_OP = "glm_weight_only_linear", "glm_small_batch_linear"
DECODE_ATTENTION_OP, DECODE_BLOCK_OP = "glm_decode_attention", "glm_decode_block"
SMALL_BATCH_ROWS = 128  # the most rows glm_small_batch_linear takes
_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
SOURCES = [os.path.join(_CSRC, name) for name in ("weight_only_linear.cc", "int4_integer_product.cc",
                                                       "small_batch_linear.cc", "decode_attention.cc",
                                                       "decode_block.cc", "decode_stack.cc")]
# included by the sources: part of the cache key
HEADERS = [os.path.join(_CSRC, name) for name in ("float_vectors.h", "row_streams.h", "weight_only_product.h",
                                                       "int4_integer_product.h", "decode_attention.h",
                                                       "decode_block.h")]
DISABLE_ENV, CFLAGS_ENV = "PADDLE_GLM_CPU_OPERATORS", "PADDLE_GLM_CPU_OPERATORS_CFLAGS"
OLD_DISABLE_ENV = "PADDLE_GLM_WEIGHT_ONLY_OPERATOR"  # the switch's name before the float operator joined
BUILD_TIMEOUT = 600  # seconds; a first build takes ~10-30 s
WEIGHT_BITS = {"weight_only_int8": 8, "weight_only_int4": 4}  # the operators' ``bits``
_state = {"status": None, "fallback_notice_shown": False, "library": None, "stack": None}
_lock = threading.Lock()  # one build per process, whichever thread asks first


def cache_root() -> str:
    """``$PADDLE_GLM_CACHE_DIR``, else ``$XDG_CACHE_HOME/paddle_glm``, else ``~/.cache/paddle_glm``."""
    chosen = os.environ.get("PADDLE_GLM_CACHE_DIR")
    if chosen:
        return os.path.abspath(chosen)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "paddle_glm")


def status() -> Tuple[bool, str]:
    """``(True, "")`` once the operators are loaded (building them on the first call), else ``(False, reason)``.

    Decided once per process.
    """
    with _lock:
        if _state["status"] is None:
            _state["status"] = _load_or_build()
    return _state["status"]


def run(x: paddle.Tensor, qweight: paddle.Tensor, scale: paddle.Tensor, quant_type: str,
        group_size: int, bias: Optional[paddle.Tensor] = None, activation_bits: int = 16) -> paddle.Tensor:
    """``x`` float32 ``[..., in]`` times the dequantized weight, transposed, plus ``bias`` float32 ``[out]`` when
    given: ``[..., out]`` (operator loaded; the leading dimensions are its rows, so a decode step needs no
    reshape). ``activation_bits``: 16 or 8, what int4's integer route rounds ``x`` to (``csrc/int4_integer_product.cc``;
    other routes compute in float32).

    Called the way the module ``paddle.utils.cpp_extension.load`` generates calls it.
    """
    spin_when_idle()
    return paddle._C_ops._run_custom_op(OP_NAME, x, qweight, scale, bias, WEIGHT_BITS[quant_type], int(group_size),
                                        int(activation_bits), chosen_cpu_threads())[0]


def decode_stack_function():
    """``glm_decode_stack`` (``csrc/decode_stack.cc``) from the loaded library through ctypes, or None without the
    library. Called twice a quantized decode step: once loaded, it returns without taking the lock."""
    if _state["stack"] is not None:
        return _state["stack"]
    if not status()[0]:
        return None
    with _lock:
        if _state["stack"] is None:
            function = ctypes.CDLL(_state["library"]).glm_decode_stack  # the library Paddle loaded: one copy
            function.restype = ctypes.c_int
            function.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_int,
                                 ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int64]
            _state["stack"] = function
    return _state["stack"]


def int4_integer_route(in_features: int = 64, group_size: int = 64) -> Tuple[bool, str]:
    """Whether int4 products of ``in_features`` inputs in groups of ``group_size`` take the integer route
    (``csrc/int4_integer_product.cc``, which decides), and why not: the operators not loaded, built without AVX2
    and FMA, or sizes the route does not take."""
    if not status()[0]:
        return False, f"the C++ CPU operators are not available ({status()[1]})"
    probe = ctypes.CDLL(_state["library"]).glm_int4_integer_route  # the library Paddle loaded
    probe.argtypes = [ctypes.c_int64, ctypes.c_int]
    taken = probe(int(in_features), int(group_size))
    if taken < 0:
        return False, "the C++ CPU operators were built without AVX2 and FMA"
    if not taken:
        return False, f"the route does not take {in_features} inputs in groups of {group_size}"
    return True, ""


def small_batch_linear(x: paddle.Tensor, weight: paddle.Tensor, bias: Optional[paddle.Tensor] = None,
                       transposed: bool = False) -> paddle.Tensor:
    """``x`` float32 ``[..., in]`` (at most :data:`SMALL_BATCH_ROWS` rows in its leading dimensions) times
    ``weight`` float32 ``[in, out]``, plus ``bias`` float32 ``[out]`` when given (``transposed``: times
    ``weight`` ``[out, in]`` transposed, as a tied output projection stores it; no bias):
    ``[..., out]`` (operators loaded; no gradient)."""
    spin_when_idle()
    return paddle._C_ops._run_custom_op(SMALL_BATCH_OP, x, weight, bias, chosen_cpu_threads(), int(transposed))[0]


def decode_attention(qkv: paddle.Tensor, keys: paddle.Tensor, values: paddle.Tensor, key_bias: paddle.Tensor,
                     index: paddle.Tensor, length: int) -> paddle.Tensor:
    """One decode step's attention (operators loaded; float32 CPU; no gradient): write the keys and values
    of ``qkv`` ``[b, 1, 3 * heads * d]`` into ``keys``/``values`` ``[B, heads, T, d]`` (in place, rows
    ``0..b-1``) at slot ``index`` (int64 ``[1]`` or ``[b]``), then attend over slots ``0..length-1`` with
    the additive ``key_bias`` ``[B, heads, 1, T]``: the context ``[b, 1, heads * d]``.

    ``keys`` and ``values`` must be contiguous: Paddle hands a custom operator a contiguous copy of a strided
    input, so a view's write would be lost."""
    check_cache_buffers("decode_attention", keys, values)
    spin_when_idle()
    return paddle._C_ops._run_custom_op(DECODE_ATTENTION_OP, qkv, keys, values, key_bias, index, int(length),
                                        chosen_cpu_threads())[0]


def decode_block(x: paddle.Tensor, params: List[paddle.Tensor], keys: paddle.Tensor, values: paddle.Tensor,
                 key_bias: paddle.Tensor, index: paddle.Tensor, length: int, quant_type: str, group_size: int,
                 epsilons: Tuple[float, float], activation_bits: int = 16) -> paddle.Tensor:
    """One decode step through a GLM block whose projections are weight-only quantized (operators loaded; float32
    CPU; no gradient): ``x`` ``[b, 1, hidden]`` -> ``[b, 1, hidden]``, writing the step's keys and values as
    :func:`decode_attention` does. ``params``: the first LayerNorm's weight and bias, then the weight, scale and
    bias of ``query_key_value``, ``dense``, ``dense_h_to_4h`` and ``dense_4h_to_h``, then the second LayerNorm's
    weight and bias; ``epsilons``: the two LayerNorms'; ``activation_bits``: :func:`run`'s."""
    check_cache_buffers("decode_block", keys, values)
    spin_when_idle()
    return paddle._C_ops._run_custom_op(DECODE_BLOCK_OP, x, params, keys, values, key_bias, index, int(length),
                                        WEIGHT_BITS[quant_type], int(group_size), int(activation_bits),
                                        float(epsilons[0]), float(epsilons[1]), chosen_cpu_threads())[0]


def check_cache_buffers(operator: str, keys: paddle.Tensor, values: paddle.Tensor) -> None:
    """Refuse views for the buffers an operator writes in place (Paddle would hand it a contiguous copy; the
    stack's call would write past a view's rows)."""
    if not (keys.is_contiguous() and values.is_contiguous()):
        raise GLMError(f"{operator}: the key and value buffers must be contiguous (they are written in place; "
                       "pass a cache's whole buffers, not views)")


def notice_fallback() -> None:
    """One line on stderr, once per process, naming why the slower tiled route runs."""
    if not _state["fallback_notice_shown"]:
        _state["fallback_notice_shown"] = True
        print(f"paddle_glm: the C++ CPU operators are not available ({status()[1]}); "
              "using the slower tiled dequantization", file=sys.stderr)


def _load_or_build() -> Tuple[bool, str]:
    for switch in (DISABLE_ENV, OLD_DISABLE_ENV):
        if os.environ.get(switch, "") == "0":
            return False, f"{switch}=0"
    compiler = find_compiler()
    if compiler is None:
        chosen = os.environ.get("CXX")
        return False, (f"CXX={chosen} is not an executable" if chosen else
                       "no C++ compiler (g++ or c++; Debian: apt install build-essential)")
    flags = target_flags(compiler)
    library = os.path.join(cache_root(), "ops", cache_key(compiler, flags), LIBRARY + ".so")
    if not os.path.exists(library):
        try:
            reason = build(compiler, flags, library)
        except (OSError, GLMError) as e:  # e.g. a cache directory we cannot write
            reason = f"cannot build in {os.path.dirname(os.path.dirname(library))}: {e}"
        if reason:
            return False, reason
    from paddle.utils.cpp_extension import load_op_meta_info_and_register_op  # imports setuptools: only here
    try:
        load_op_meta_info_and_register_op(library)
    except Exception as e:  # a library Paddle cannot load: say why, keep running on the fallback
        return False, f"loading {library} failed: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}"
    _state["library"] = library
    return True, ""


def find_compiler() -> Optional[str]:
    """The C++ compiler's path: ``$CXX`` if set (None if it does not exist), else ``g++`` or ``c++``."""
    chosen = os.environ.get("CXX")
    if chosen:
        return shutil.which(chosen)
    return shutil.which("g++") or shutil.which("c++")


def target_flags(compiler: str) -> List[str]:
    """``$PADDLE_GLM_CPU_OPERATORS_CFLAGS``, else ``-march=native`` if the compiler takes it, else none."""
    chosen = os.environ.get(CFLAGS_ENV)
    if chosen is not None:
        return shlex.split(chosen)
    probe = subprocess.run([compiler, "-march=native", "-x", "c++", "-E", "-", "-o", os.devnull],
                           input=b"", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return ["-march=native"] if probe.returncode == 0 else []


def cache_key(compiler: str, flags: List[str]) -> str:
    """``<paddle version>-<hash>``: one library per Paddle, Python, compiler, flags, CPU and source."""
    digest = hashlib.sha256()
    for source in SOURCES + HEADERS:
        with open(source, "rb") as f:
            digest.update(f.read())
    parts = [sys.version.split()[0], os.path.realpath(compiler), " ".join(flags + openmp_link_flags()),
             _cpu_description()]
    digest.update("\0".join(parts).encode())
    return f"{paddle.__version__}-{digest.hexdigest()[:16]}"


def _cpu_description() -> str:
    """The CPU's feature flags (what -march=native compiles for), or the machine name off Linux."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def build(compiler: str, flags: List[str], library: str,
          announce: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> str:
    """Compile the operators into ``library`` (its directory appears complete or not at all).

    Returns "" on success, else the one-line reason (the compiler's output is kept in a log file).
    """
    final_dir = os.path.dirname(library)
    ops_dir = os.path.dirname(final_dir)
    os.makedirs(ops_dir, exist_ok=True)
    announce("paddle_glm: building the C++ CPU operators (once, ~20 s)")
    tmp = make_temp_dir(ops_dir, ".build-")
    try:
        reason = _compile(compiler, flags, tmp, ops_dir)
        if reason:
            return reason
        stage = os.path.join(tmp, "stage")
        os.mkdir(stage)
        os.rename(os.path.join(tmp, "work", LIBRARY, LIBRARY + ".so"), os.path.join(stage, LIBRARY + ".so"))
        try:
            os.rename(stage, final_dir)
        except OSError:
            if not os.path.exists(library):  # not another process's finished build: a real failure
                raise
        return ""
    finally:
        remove_tree(tmp)


def openmp_link_flags() -> List[str]:
    """Link Paddle's own OpenMP runtime (Intel's libiomp5, which also serves GCC's GOMP_* calls) when
    the wheel ships it: the operator then shares one thread pool with Paddle's matmuls instead of
    two pools contending for the cores. Otherwise GCC's libgomp."""
    libs = os.path.join(os.path.dirname(os.path.abspath(paddle.__file__)), "libs")
    if os.path.exists(os.path.join(libs, "libiomp5.so")):
        return [f"-L{libs}", "-liomp5", f"-Wl,-rpath,{libs}"]
    return ["-fopenmp"]


def _compile(compiler: str, flags: List[str], tmp: str, ops_dir: str) -> str:
    """Run Paddle's JIT build in a child process with its output in a log; "" or the reason it failed."""
    script = ("import os, sys; from paddle.utils.cpp_extension import load; "
              f"load(name={LIBRARY!r}, sources=sys.argv[1].split(os.pathsep), build_directory=sys.argv[2], "
              f"extra_cxx_cflags=sys.argv[3:] + ['-O3', '-fopenmp'], extra_ldflags={openmp_link_flags()!r})")
    env = dict(os.environ, CC=compiler, CXX=compiler)
    os.mkdir(os.path.join(tmp, "work"))
    log_path = os.path.join(tmp, "build.log")
    with open(log_path, "wb") as log:
        try:
            done = subprocess.run([sys.executable, "-c", script, os.pathsep.join(SOURCES), os.path.join(tmp, "work"),
                                   *flags],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, timeout=BUILD_TIMEOUT, check=False)
            failed = f"the build exited with status {done.returncode}" if done.returncode else ""
        except subprocess.TimeoutExpired:
            failed = f"the build took over {BUILD_TIMEOUT} s"
    if not failed and not os.path.exists(os.path.join(tmp, "work", LIBRARY, LIBRARY + ".so")):
        failed = "the build produced no library"
    if failed:
        kept = os.path.join(ops_dir, "last-failed-build.log")
        os.replace(log_path, kept)
        return f"{failed} with {compiler}; its output: {kept}"
    return ""
