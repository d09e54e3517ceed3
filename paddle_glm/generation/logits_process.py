"""Logits processors and token choice: small functions on ``[rows, vocab]`` logits, on the device.

Nothing here reads a tensor back to the host: the checks a step needs (non-finite logits,
a row with every token banned) are returned as a device flag per row (:func:`row_problems`),
which the decode loop reads together with the step's tokens, its one host read per step.
Settings are scalars (one ``generate`` call) or ``[rows, 1]`` tensors (a server batch whose
rows each have their own), with the same functions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Union

import numpy as np
import paddle
import paddle.nn.functional as F

from ..errors import GLMError

NEG_INF = float("-inf")  # a banned token's logit: probability exactly 0
NON_FINITE, ALL_BANNED = 1, 2  # row_problems' codes
PerRow = Union[float, int, paddle.Tensor]  # a scalar for every row, or a [rows, 1] tensor


@dataclass
class LogitsSettings:
    """What to do to the next-token logits before choosing (HF's meanings).

    ``temperature``, ``top_k``, ``top_p`` and ``repetition_penalty`` are scalars or ``[rows, 1]``
    tensors (a tensor is always applied; a row's neutral value leaves it unchanged).
    """

    temperature: PerRow = 1.0
    top_k: PerRow = 0
    top_p: PerRow = 1.0
    repetition_penalty: PerRow = 1.0
    bad_words_ids: List[List[int]] = field(default_factory=list)
    eos_token_id: Optional[int] = None
    min_new_tokens: int = 0
    _banned: dict = field(default_factory=dict, repr=False, compare=False)  # vocab -> the single-token ban bias

    def ban_bias(self, vocab: int) -> Optional[paddle.Tensor]:
        """float32 ``[vocab]``: -inf at the single-token bad words, 0 elsewhere; built once per vocabulary."""
        if vocab not in self._banned:
            singles = [w[0] for w in self.bad_words_ids if len(w) == 1 and 0 <= w[0] < vocab]
            bias = np.zeros([vocab], dtype=np.float32)
            bias[singles] = NEG_INF
            self._banned[vocab] = paddle.to_tensor(bias) if singles else None
        return self._banned[vocab]


def _applies(value: PerRow, neutral: float) -> bool:
    return isinstance(value, paddle.Tensor) or value != neutral


def normalize_bad_words(bad_words_ids) -> List[List[int]]:
    """Accept ``[id, ...]`` (single tokens) or ``[[id, ...], ...]`` (token sequences)."""
    if bad_words_ids is None:
        return []
    return [[int(w)] if np.ndim(w) == 0 else [int(t) for t in w] for w in bad_words_ids]


def process_logits(logits: paddle.Tensor, sequences: paddle.Tensor, generated: int, settings: LogitsSettings,
                   sampling: bool) -> paddle.Tensor:
    """Apply the processors (and, when sampling, the temperature/top-k/top-p warpers), in HF's order.

    Args:
        logits: float ``[rows, vocab]`` for the next token.
        sequences: int64 ``[rows, length]``, every token so far (prompt included).
        generated: new tokens generated so far (for ``min_new_tokens``).
    """
    logits = logits.astype("float32")
    if _applies(settings.repetition_penalty, 1.0):
        logits = repetition_penalty(logits, sequences, settings.repetition_penalty)
    bias = settings.ban_bias(logits.shape[-1])
    if bias is not None:
        logits = logits + bias
    logits = ban_sequences(logits, sequences, [w for w in settings.bad_words_ids if len(w) > 1])
    if settings.eos_token_id is not None and generated < settings.min_new_tokens:
        logits = ban_token(logits, settings.eos_token_id)
    return warp_logits(logits, settings) if sampling else logits


def warp_logits(logits: paddle.Tensor, settings: LogitsSettings) -> paddle.Tensor:
    """Temperature, then top-k, then top-p (sampling only)."""
    if _applies(settings.temperature, 1.0):
        # shifted so that the best logit is 0: a small temperature cannot overflow to inf
        logits = (logits - logits.max(axis=-1, keepdim=True)) / settings.temperature
    if _applies(settings.top_k, 0):
        logits = top_k_filter(logits, settings.top_k)
    if _applies(settings.top_p, 1.0):
        logits = top_p_filter(logits, settings.top_p)
    return logits


def row_problems(logits: paddle.Tensor, scores: paddle.Tensor) -> paddle.Tensor:
    """int64 ``[rows]``: 0, or :data:`NON_FINITE` (the model's logits hold NaN/inf), or :data:`ALL_BANNED`
    (the processors banned every token). On the device: read it with the step's tokens."""
    non_finite = paddle.logical_not(paddle.isfinite(logits).all(axis=-1))
    all_banned = (scores == NEG_INF).all(axis=-1)
    return paddle.where(non_finite, paddle.full_like(non_finite, NON_FINITE, dtype="int64"),
                        all_banned.astype("int64") * ALL_BANNED)


def raise_problems(problems: np.ndarray, step: int) -> None:
    """GLMError for the first row :func:`row_problems` flagged (``problems`` read on the host)."""
    flagged = np.flatnonzero(problems)
    if not flagged.size:
        return
    row = int(flagged[0])
    if problems[row] == NON_FINITE:
        raise GLMError(f"step {step}: the model's next-token logits of row {row} are not finite "
                       "(NaN or inf); the weights or the inputs hold NaN/inf values")
    raise GLMError(f"step {step}: every token is banned for row {row} (bad_words_ids, and eos "
                   "while min_new_tokens is not reached): allow at least one token")


def repetition_penalty(logits: paddle.Tensor, sequences: paddle.Tensor, penalty: PerRow) -> paddle.Tensor:
    """CTRL's penalty (as HF/PaddleNLP): seen tokens' positive logits / penalty, negative ones * penalty."""
    seen = paddle.take_along_axis(logits, sequences, axis=1)  # [rows, length]
    seen = paddle.where(seen < 0, seen * penalty, seen / penalty)
    return paddle.put_along_axis(logits, sequences, seen, axis=1)


def ban_token(logits: paddle.Tensor, token_id: int) -> paddle.Tensor:
    if not 0 <= token_id < logits.shape[-1]:
        return logits
    column = paddle.arange(logits.shape[-1], dtype="int64") == token_id  # [vocab]
    return paddle.where(column, paddle.full_like(logits, NEG_INF), logits)


def ban_sequences(logits: paddle.Tensor, sequences: paddle.Tensor, words: List[List[int]]) -> paddle.Tensor:
    """Ban the last token of each multi-token bad word in the rows whose history ends with its prefix."""
    length, vocab = sequences.shape[1], logits.shape[-1]
    for word in words:
        prefix = word[:-1]
        if len(prefix) > length or not 0 <= word[-1] < vocab:
            continue
        tail = sequences[:, length - len(prefix):]  # [rows, len(prefix)]
        match = (tail == paddle.to_tensor(prefix, dtype="int64")).all(axis=-1, keepdim=True)  # [rows, 1]
        column = paddle.arange(vocab, dtype="int64") == word[-1]  # [vocab]
        logits = paddle.where(paddle.logical_and(match, column), paddle.full_like(logits, NEG_INF), logits)
    return logits


def top_k_filter(logits: paddle.Tensor, k: PerRow) -> paddle.Tensor:
    """Keep the ``k`` largest logits of each row (ties at the k-th value are kept; a row's ``k`` 0 keeps all)."""
    vocab = logits.shape[-1]
    if not isinstance(k, paddle.Tensor):
        kth = paddle.topk(logits, min(k, vocab), axis=-1)[0][:, -1:]  # [rows, 1]
    else:
        k = paddle.where(k > 0, paddle.minimum(k, paddle.full_like(k, vocab)), paddle.full_like(k, vocab))
        kth = paddle.take_along_axis(paddle.sort(logits, axis=-1, descending=True), k - 1, axis=1)  # [rows, 1]
    return paddle.where(logits < kth, paddle.full_like(logits, NEG_INF), logits)


def top_p_filter(logits: paddle.Tensor, top_p: PerRow) -> paddle.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``top_p`` (at least one)."""
    order = paddle.argsort(logits, axis=-1, descending=True)  # [rows, vocab]
    probs = F.softmax(paddle.take_along_axis(logits, order, axis=-1), axis=-1)
    mass_before = paddle.cumsum(probs, axis=-1) - probs  # probability of the better tokens
    drop_sorted = (mass_before >= top_p).astype("int32")
    drop = paddle.put_along_axis(paddle.zeros_like(drop_sorted), order, drop_sorted, axis=1)  # back to vocab order
    return paddle.where(drop.astype("bool"), paddle.full_like(logits, NEG_INF), logits)


def greedy_choice(logits: paddle.Tensor) -> paddle.Tensor:
    return paddle.argmax(logits, axis=-1)  # [rows]


def sample_choice(logits: paddle.Tensor, uniform: paddle.Tensor) -> paddle.Tensor:
    """Draw one token per row by inverse CDF, with one uniform in [0, 1) per row (``[rows, 1]``, made on
    the device: see :mod:`~paddle_glm.generation.device_random`)."""
    probs = F.softmax(logits, axis=-1)
    cdf = paddle.cumsum(probs, axis=-1)  # [rows, vocab]
    u = uniform.astype(cdf.dtype) * cdf[:, -1:]
    token = (cdf <= u).astype("int64").sum(axis=-1)  # first index whose cdf exceeds u
    # a zero-probability token can never be drawn, even at a rounding edge
    return paddle.minimum(token, paddle.argmax(cdf, axis=-1))
