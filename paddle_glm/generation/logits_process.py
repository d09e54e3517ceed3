"""Logits processors and token choice: small functions on ``[rows, vocab]`` logits."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import paddle
import paddle.nn.functional as F

from ..errors import GLMError

NEG_INF = float("-inf")  # a banned token's logit: probability exactly 0


@dataclass
class LogitsSettings:
    """What to do to the next-token logits before choosing (HF's meanings)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    bad_words_ids: List[List[int]] = field(default_factory=list)
    eos_token_id: Optional[int] = None
    min_new_tokens: int = 0


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
        generated: new tokens generated so far (for ``min_new_tokens``; errors name it as the step).

    Raises:
        GLMError: a row of ``logits`` is not finite, or the processors ban every token of a row.
    """
    logits = logits.astype("float32")
    non_finite = paddle.logical_not(paddle.isfinite(logits).all(axis=-1))  # [rows]: the model's own logits
    if settings.repetition_penalty != 1.0:
        logits = repetition_penalty(logits, sequences, settings.repetition_penalty)
    if settings.bad_words_ids:
        logits = ban_bad_words(logits, sequences, settings.bad_words_ids)
    if settings.eos_token_id is not None and generated < settings.min_new_tokens:
        logits = ban_tokens(logits, [settings.eos_token_id])
    _check_rows(non_finite, (logits == NEG_INF).all(axis=-1), generated)
    if sampling:
        if settings.temperature != 1.0:
            # shifted so that the best logit is 0: a small temperature cannot overflow to inf
            logits = (logits - logits.max(axis=-1, keepdim=True)) / settings.temperature
        if settings.top_k:
            logits = top_k_filter(logits, settings.top_k)
        if settings.top_p < 1.0:
            logits = top_p_filter(logits, settings.top_p)
    return logits


def _check_rows(non_finite: paddle.Tensor, nothing_allowed: paddle.Tensor, step: int) -> None:
    """Raise GLMError for a row of non-finite logits or a row whose every token is banned (one host sync)."""
    flags = paddle.stack([non_finite, nothing_allowed]).numpy()  # [2, rows]
    if flags[0].any():
        raise GLMError(f"step {step}: the model's next-token logits of row {int(flags[0].argmax())} are not finite "
                       "(NaN or inf); the weights or the inputs hold NaN/inf values")
    if flags[1].any():
        raise GLMError(f"step {step}: every token is banned for row {int(flags[1].argmax())} (bad_words_ids, and eos "
                       "while min_new_tokens is not reached): allow at least one token")


def repetition_penalty(logits: paddle.Tensor, sequences: paddle.Tensor, penalty: float) -> paddle.Tensor:
    """CTRL's penalty (as HF/PaddleNLP): seen tokens' positive logits / penalty, negative ones * penalty."""
    seen = paddle.take_along_axis(logits, sequences, axis=1)  # [rows, length]
    seen = paddle.where(seen < 0, seen * penalty, seen / penalty)
    return paddle.put_along_axis(logits, sequences, seen, axis=1)


def ban_tokens(logits: paddle.Tensor, token_ids: Sequence[int]) -> paddle.Tensor:
    vocab = logits.shape[-1]
    banned = np.zeros([vocab], dtype=bool)
    banned[[t for t in token_ids if 0 <= t < vocab]] = True
    return paddle.where(paddle.to_tensor(banned), paddle.full_like(logits, NEG_INF), logits)


def ban_bad_words(logits: paddle.Tensor, sequences: paddle.Tensor, bad_words: List[List[int]]) -> paddle.Tensor:
    """Ban single tokens everywhere, and the last token of a longer sequence where its prefix was just generated."""
    singles = [w[0] for w in bad_words if len(w) == 1]
    if singles:
        logits = ban_tokens(logits, singles)
    longer = [w for w in bad_words if len(w) > 1 and 0 <= w[-1] < logits.shape[-1]]
    if longer:
        history = sequences.numpy()
        ban = np.zeros(logits.shape, dtype=bool)
        for row, tokens in enumerate(history):
            for word in longer:
                prefix = word[:-1]
                if len(tokens) >= len(prefix) and list(tokens[len(tokens) - len(prefix):]) == prefix:
                    ban[row, word[-1]] = True
        logits = paddle.where(paddle.to_tensor(ban), paddle.full_like(logits, NEG_INF), logits)
    return logits


def top_k_filter(logits: paddle.Tensor, k: int) -> paddle.Tensor:
    """Keep the ``k`` largest logits of each row (ties at the k-th value are kept)."""
    k = min(k, logits.shape[-1])
    kth = paddle.topk(logits, k, axis=-1)[0][:, -1:]  # [rows, 1]
    return paddle.where(logits < kth, paddle.full_like(logits, NEG_INF), logits)


def top_p_filter(logits: paddle.Tensor, top_p: float) -> paddle.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``top_p`` (at least one)."""
    order = paddle.argsort(logits, axis=-1, descending=True)  # [rows, vocab]
    probs = F.softmax(paddle.take_along_axis(logits, order, axis=-1), axis=-1)
    mass_before = paddle.cumsum(probs, axis=-1) - probs  # probability of the better tokens
    drop_sorted = (mass_before >= top_p).astype("int32")
    drop = paddle.put_along_axis(paddle.zeros_like(drop_sorted), order, drop_sorted, axis=1)  # back to vocab order
    return paddle.where(drop.astype("bool"), paddle.full_like(logits, NEG_INF), logits)


def greedy_choice(logits: paddle.Tensor) -> paddle.Tensor:
    return paddle.argmax(logits, axis=-1)  # [rows]


def sample_choice(logits: paddle.Tensor, rng: np.random.Generator) -> paddle.Tensor:
    """Draw one token per row by inverse CDF with uniforms from ``rng`` (reproducible on any device)."""
    probs = F.softmax(logits, axis=-1)
    cdf = paddle.cumsum(probs, axis=-1)  # [rows, vocab]
    u = paddle.to_tensor(rng.random((logits.shape[0], 1)), dtype=cdf.dtype) * cdf[:, -1:]
    token = (cdf <= u).astype("int64").sum(axis=-1)  # first index whose cdf exceeds u
    # a zero-probability token can never be drawn, even at a rounding edge
    return paddle.minimum(token, paddle.argmax(cdf, axis=-1))
