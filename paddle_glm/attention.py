"""Attention backends and the one dispatch that picks between them.

Every decision the CUDA path makes lives in plain functions tested on CPU:
which backend for a (device, dtype, head_dim, mask) case, the tensor layout each
backend wants, and the conversion of a boolean mask into each backend's form
(additive bias or FlashMask ``startend_row_indices``). The CUDA
kernels themselves are thin calls to Paddle's documented APIs.

Backends:

* ``math``: matmul + softmax in ``[b, heads, s, d]`` layout. The CPU path (Paddle
  has only float32 kernels there). Measured ~9x faster than
  ``scaled_dot_product_attention``'s CPU path for one-token decode, which
  transposes the whole cache on every call.
* ``sdpa``: ``F.scaled_dot_product_attention`` in ``[b, s, heads, d]``; on CUDA it
  runs flash attention (no mask) or the memory-efficient kernel (additive float mask).
* ``flashmask``: ``F.flashmask_attention`` for masks where each key column is
  visible to one contiguous range of query rows (GLM's prefix-LM generation
  mask, with right padding). CUDA, fp16/bf16, SM >= 80 only.
* ``cpu_decode``: a decode step over a float32 ``bhsd`` cache on CPU, in eager mode, without
  gradients: the C++ operator ``glm_decode_attention`` (``cpu_operators``) writes the step's key and
  value and attends in one call (:meth:`KVCache.attend_step`), where the ``math`` ops cost ~0.45 ms a
  layer of glm-large in per-op dispatch. Chosen per step by :func:`decode_backend`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import paddle
import paddle.nn.functional as F

from . import cpu_operators
from .devices import cuda_capability, device_type, dtype_str
from .errors import GLMError

MATH, SDPA, FLASHMASK, CPU_DECODE = "math", "sdpa", "flashmask", "cpu_decode"
BHSD, BSHD = "bhsd", "bshd"  # [batch, heads, seq, dim] / [batch, seq, heads, dim]
LAYOUT = {MATH: BHSD, SDPA: BSHD, FLASHMASK: BSHD}
DECODE_BACKEND = {BHSD: MATH, BSHD: SDPA}  # a decode step (one query row) by cache layout: no FlashMask encoding
_HALF = ("float16", "bfloat16")  # the dtypes flash attention runs in
# Cache lengths are rounded up to a multiple of this: Paddle's memory-efficient attention
# needs the mask's key dimension divisible by 8 (else it falls back to the math kernel).
CACHE_ALIGN = 8


def select_backend(device: str, dtype: str, head_dim: int, mask_kind: str, query_len: int,
                   cuda_capability: int = 80) -> str:
    """The attention backend for one case.

    Args:
        device: "cpu" or "gpu" (Paddle's place type).
        dtype: the model's dtype name.
        head_dim: per-head size.
        mask_kind: "none" (every key visible), "intervals" (each key column visible to one
            contiguous range of rows, which FlashMask encodes) or "dense" (anything else).
        query_len: new tokens in this call (1 = a decode step).
        cuda_capability: major*10 + minor of the GPU (80 = A100).
    """
    if device != "gpu":
        return MATH
    flash_ok = dtype in _HALF and head_dim <= 256 and head_dim % 8 == 0 and cuda_capability >= 80
    if flash_ok and mask_kind == "intervals" and query_len > 1:
        return FLASHMASK
    return SDPA  # flash attention when mask_kind == "none" and flash_ok, else memory-efficient / math


def decode_backend(layout: str, buffer: paddle.Tensor, training: bool) -> str:
    """The backend of a decode step over a cache of ``layout`` whose buffers are like ``buffer``:
    ``cpu_decode`` for a float32 ``bhsd`` cache on CPU in eager mode, with no gradient to record and
    no dropout (``training`` False), once the C++ operators are loaded; else ``DECODE_BACKEND``'s."""
    if (paddle.in_dynamic_mode() and layout == BHSD and buffer.dtype == paddle.float32 and not training
            and buffer.place.is_cpu_place() and not paddle.is_grad_enabled() and cpu_operators.status()[0]):
        return CPU_DECODE
    return DECODE_BACKEND[layout]


def cache_layout(backend: str) -> str:
    """The KV-cache layout a backend reads without copying: bhsd for math, bshd for the fused kernels."""
    return LAYOUT[backend]


def cache_backend(attention_backend: Optional[str] = None) -> str:
    """The backend a new KV cache is laid out for: ``attention_backend`` when given, else the one this
    device's decode steps use (sdpa on a GPU, math on CPU)."""
    return attention_backend or (SDPA if device_type() == "gpu" else MATH)


def aligned_cache_length(length: int) -> int:
    """``length`` rounded up to a multiple of ``CACHE_ALIGN`` (the fused kernels want aligned key lengths)."""
    return -(-length // CACHE_ALIGN) * CACHE_ALIGN


def check_cache_layout(backend: str, layout: str) -> None:
    """Refuse a prefill whose backend reads another cache layout than the cache's."""
    if layout != cache_layout(backend):
        raise GLMError(f"attention backend {backend!r} reads a {cache_layout(backend)} cache, but this cache is "
                       f"{layout}; build it with new_cache(..., attention_backend=...)")


def flashmask_indices(mask: paddle.Tensor) -> Optional[paddle.Tensor]:
    """Encode a boolean ``[b, 1, q, k]`` mask as FlashMask ``startend_row_indices`` (causal=False).

    For each key column the visible query rows must be one range ``[lo, hi)``;
    the encoding is ``[hi, lo]`` per column (rows >= hi and rows < lo are masked),
    int32 ``[b, 1, k, 2]``. A column nobody sees is ``[0, 0]``. Returns None when
    some column's visible rows are not contiguous.

    For GLM's generation mask with context length S: a real context column is
    ``[S, 0]``, a padding column ``[0, 0]``, generated column j ``[S, j]``.
    """
    b, _, q, k = mask.shape
    visible = mask[:, 0].astype("int32")  # [b, q, k]
    count = visible.sum(axis=1).astype("int32")  # [b, k]
    rows = paddle.arange(q, dtype="int32").reshape([1, q, 1])  # [1, q, 1]
    lo = paddle.where(mask[:, 0], rows.expand([b, q, k]), paddle.full([b, q, k], q, "int32")).min(axis=1)  # [b, k]
    hi = paddle.where(mask[:, 0], rows.expand([b, q, k]) + 1, paddle.zeros([b, q, k], "int32")).max(axis=1)
    seen = count > 0
    if not bool(paddle.logical_or(paddle.logical_not(seen), (hi - lo) == count).all()):
        return None
    lts = paddle.where(seen, hi, paddle.zeros_like(hi))
    ute = paddle.where(seen, lo, paddle.zeros_like(lo))
    return paddle.stack([lts, ute], axis=-1).unsqueeze(1)  # [b, 1, k, 2]


@dataclass
class PreparedMask:
    """A mask in the form one backend consumes, built once per forward and shared by all layers."""

    backend: str
    bias: Optional[paddle.Tensor] = None  # math and sdpa: additive [b, 1, q, k], 0 or the dtype's minimum
    startend_row_indices: Optional[paddle.Tensor] = None  # flashmask: [b, 1, k, 2]


def additive_bias(mask: paddle.Tensor, dtype: str) -> paddle.Tensor:
    """0 where ``mask`` allows attention, the dtype's most negative finite value (exp() -> 0) elsewhere."""
    return paddle.where(mask, paddle.zeros([], dtype), paddle.full([], paddle.finfo(dtype).min, dtype))


def prepare_mask(mask: paddle.Tensor, dtype, head_dim: int, backend: Optional[str] = None) -> PreparedMask:
    """Pick the backend for this call (unless given) and turn the boolean ``[b, 1, q, k]`` mask into its form.

    On a GPU a decode step (one query row) goes straight to SDPA: no FlashMask encoding
    and no host synchronisation per step. A prefill pays one synchronisation to learn
    whether FlashMask can encode its mask.
    """
    dtype = dtype_str(dtype)
    indices = None
    if backend is None:
        if device_type() != "gpu":
            backend = MATH
        elif mask.shape[2] == 1:
            backend = SDPA
        else:
            indices = flashmask_indices(mask)
            kind = "none" if bool(mask.all()) else ("intervals" if indices is not None else "dense")
            backend = select_backend("gpu", dtype, head_dim, kind, mask.shape[2], cuda_capability())
            if kind == "none":
                return PreparedMask(SDPA)  # no mask at all: the flash kernel's fast path
    if backend == FLASHMASK:
        indices = indices if indices is not None else flashmask_indices(mask)
        if indices is None:
            raise GLMError("attention_backend='flashmask': this mask is not one range of rows per key column, "
                           "which is all FlashMask can express; use the default backend")
        return PreparedMask(FLASHMASK, startend_row_indices=indices)
    if backend not in (MATH, SDPA):
        raise GLMError(f"attention_backend: expected one of {MATH}, {SDPA}, {FLASHMASK}, got {backend!r}")
    # SDPA gets the additive form too: built once here rather than converted in every layer.
    return PreparedMask(backend, bias=additive_bias(mask, dtype))


def attend(q: paddle.Tensor, k: paddle.Tensor, v: paddle.Tensor, mask: PreparedMask,
           dropout: float = 0.0) -> paddle.Tensor:
    """Softmax attention with 1/sqrt(head_dim) scaling, in the backend's layout (see ``LAYOUT``).

    ``dropout`` > 0 drops attention probabilities (training only; the caller passes 0 in eval mode).

    Returns the context in the same layout as ``q``.
    """
    if mask.backend == MATH:
        # q [b, h, s, d] . k [b, h, t, d]^T -> scores [b, h, s, t]
        q = q * (q.shape[-1] ** -0.5)  # scale before the product: smaller intermediate values
        scores = paddle.matmul(q, k, transpose_y=True) + mask.bias
        probs = F.softmax(scores, axis=-1)
        if dropout:
            probs = F.dropout(probs, dropout)
        return paddle.matmul(probs, v)  # [b, h, s, d]
    if mask.backend == FLASHMASK:
        return F.flashmask_attention(q, k, v, startend_row_indices=mask.startend_row_indices, causal=False,
                                     dropout=dropout, training=dropout > 0)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.bias, dropout_p=dropout, training=dropout > 0)
