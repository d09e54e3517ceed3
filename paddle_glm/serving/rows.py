"""Completion rows: a request's prompt and settings, its text as tokens arrive, and the batch streamer."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from ..generation.detokenizer import IncrementalDetokenizer
from ..generation.streamers import BaseStreamer

GREEDY = "greedy"


@dataclass(frozen=True)
class Sampling:
    """How a row chooses tokens: ``temperature == 0`` is greedy (``top_p``/``top_k``/``seed`` unused)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: Optional[int] = None
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def batch_key(self):
        """Rows with equal keys may share a batch; ``None``: the row runs alone.

        Greedy rows batch with every greedy row of the same repetition penalty (a greedy row's
        tokens do not depend on the others). Unseeded sampling rows batch with rows of identical settings (one
        generator draws for the whole batch). A seeded row runs alone, so that the same
        seed gives the same text whatever else is waiting.
        """
        if self.greedy:
            return (GREEDY, self.repetition_penalty)
        if self.seed is not None:
            return None
        return ("sample", self.temperature, self.top_p, self.top_k, self.repetition_penalty)

    def generate_kwargs(self) -> dict:
        if self.greedy:
            return dict(do_sample=False, repetition_penalty=self.repetition_penalty)
        return dict(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed,
                    repetition_penalty=self.repetition_penalty)


class Sink:
    """Where a row's results go (the server's per-request channel); the model thread calls these."""

    def text(self, index: int, delta: str) -> None:
        raise NotImplementedError

    def finish(self, index: int, reason: str, completion_tokens: int) -> None:
        raise NotImplementedError

    def fail(self, status: int, message: str) -> None:
        raise NotImplementedError


class Row:
    """One prompt of a completion request, waiting in the queue or running in a batch.

    ``cancelled`` is set by the server when the client goes away; the batch then
    stops feeding the row (and the whole batch stops once no row is left).
    """

    def __init__(self, prompt: str, prompt_tokens: int, max_tokens: int, stop: Sequence[str], sampling: Sampling,
                 sink: Sink, index: int = 0):
        self.prompt = prompt
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.stop = tuple(stop)
        self.sampling = sampling
        self.sink = sink
        self.index = index
        self.arrived = time.monotonic()
        self.cancelled = threading.Event()


class RowText:
    """A row's generated text as tokens arrive, cut at ``<|endofpiece|>``, a stop string or ``max_tokens``.

    ``add`` returns the new text that is safe to send: text that could still turn
    out to be the start of a stop string, or an incomplete multi-byte character,
    is held back until the next token decides. The text comes from an
    :class:`~paddle_glm.generation.detokenizer.IncrementalDetokenizer` (a few ids per token).
    """

    def __init__(self, tokenizer, max_tokens: int, stop: Sequence[str]):
        self.eop_token_id = tokenizer.eop_token_id
        self.detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=True)
        self.max_tokens = max_tokens
        self.stop = [s for s in stop if s]
        self.tokens: List[int] = []
        self.text = ""  # the text decoded so far
        self.sent = 0  # characters of the text already returned
        self.finish_reason: Optional[str] = None

    @property
    def completion_tokens(self) -> int:
        """Tokens generated for this row (the closing ``<|endofpiece|>`` included)."""
        return len(self.tokens) + (1 if self.finish_reason == "stop_token" else 0)

    def add(self, token: int) -> str:
        if token == self.eop_token_id:
            self.finish_reason = "stop_token"
            return self._release(self.text + self.detokenizer.flush())
        self.tokens.append(token)
        self.text += self.detokenizer.add(token)
        cuts = [i for i in (self.text.find(s, max(0, self.sent - len(s))) for s in self.stop) if i >= 0]
        if cuts:
            self.finish_reason = "stop"
            return self._release(self.text[:min(cuts)])
        if len(self.tokens) >= self.max_tokens:
            self.finish_reason = "length"
            return self._release(self.text + self.detokenizer.flush())
        return self._release(self.text[:len(self.text) - self._held(self.text)])

    def _held(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins a stop string."""
        return max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)

    def _release(self, text: str) -> str:
        delta = text[self.sent:]
        self.sent = max(self.sent, len(text))
        return delta


class RowProgress:
    """A running row: its text (:class:`RowText`), its timing, and its results sent to the row's sink.

    Both schedulers route tokens through it; ``metrics`` (a
    :class:`~paddle_glm.serving.metrics.ServerMetrics`, optional) hears of each finished row.
    """

    def __init__(self, row: Row, tokenizer, metrics=None):
        self.row = row
        self.text = RowText(tokenizer, row.max_tokens, row.stop)
        self.metrics = metrics
        self.first_token: Optional[float] = None  # time.monotonic() of its first token

    @property
    def done(self) -> bool:
        """Finished (``<|endofpiece|>``, a stop string, ``max_tokens``) or its client went away."""
        return self.text.finish_reason is not None or self.row.cancelled.is_set()

    def add(self, token: int) -> None:
        """The row's next token: its new text to the sink (the first token always sends, its text or "" while
        that is held back, so that a client sees when generation began, as vLLM's chunks show it), and the
        finish when it ends the row."""
        first = self.first_token is None
        if first:
            self.first_token = time.monotonic()
        delta = self.text.add(token)
        if delta or (first and self.text.finish_reason is None):
            self.row.sink.text(self.row.index, delta)
        if self.text.finish_reason is not None:
            self.finish()

    def finish(self, reason: Optional[str] = None) -> None:
        """Send the finish (``reason`` when the row stops for a reason of the loop's, e.g. "length")."""
        if reason is not None:
            self.text.finish_reason = reason
        reason = "stop" if self.text.finish_reason == "stop_token" else self.text.finish_reason
        self.row.sink.finish(self.row.index, reason, self.text.completion_tokens)
        if self.metrics is not None:
            self.metrics.row_finished(self.row, self.first_token, self.text.completion_tokens)

    @property
    def cancelled(self) -> bool:
        """Its client went away before it finished."""
        return self.text.finish_reason is None and self.row.cancelled.is_set()


class BatchFinished(Exception):
    """Raised from ``BatchStreamer.put`` to end ``generate`` once no row of the batch needs more tokens."""


class FillCancelled(Exception):
    """A fill job stopped at a decode step because its client left; ``tokens``: what it had generated."""

    def __init__(self, tokens: int):
        super().__init__(f"cancelled after {tokens} tokens")
        self.tokens = tokens


class BatchStreamer(BaseStreamer):
    """Routes each decode step's tokens ``[batch]`` to the rows of a batch.

    A row is done when it finished (``<|endofpiece|>``, a stop string, its own
    ``max_tokens``) or its client went away. ``active_rows()`` says which rows still
    need tokens (one bool per row the loop is running); ``before_step`` drops the others
    from the decode loop's batch, which then passes only the kept rows, in order, to
    later ``put`` calls. When no row is left, ``put`` raises :class:`BatchFinished`.
    """

    def __init__(self, rows: Sequence[Row], tokenizer, metrics=None):
        self.rows = [RowProgress(row, tokenizer, metrics) for row in rows]
        self.live = list(range(len(self.rows)))  # the rows the decode loop is running, by index in self.rows
        self._last_active: Optional[List[bool]] = None
        self.step_times: List[float] = []

    def active_rows(self) -> List[bool]:
        self._last_active = [not self.rows[i].done for i in self.live]
        return self._last_active

    def before_step(self, state) -> None:
        """The decode loop's hook (see :func:`~paddle_glm.generation.decode.decode_n_tokens`): the rows
        that need no more tokens leave the batch before the next step."""
        state.drop_rows(self.active_rows())

    def put(self, value) -> None:
        self.step_times.append(time.perf_counter())
        tokens = np.asarray(value.numpy() if hasattr(value, "numpy") else value).reshape(-1).tolist()
        if len(tokens) != len(self.live):  # the loop dropped the rows active_rows() marked False
            if self._last_active is None or sum(self._last_active) != len(tokens):
                raise RuntimeError(f"BatchStreamer: got {len(tokens)} tokens for {len(self.live)} running rows")
            self.live = [i for i, keep in zip(self.live, self._last_active) if keep]
        for i, token in zip(self.live, tokens):
            if not self.rows[i].done:
                self.rows[i].add(int(token))
        if all(self.rows[i].done for i in self.live):
            raise BatchFinished

    def end(self) -> None:
        for progress in self.rows:
            if not progress.done:  # the loop ran out of steps (every row's max_tokens is covered: a safety net)
                progress.finish("length")

    def cancelled(self) -> int:
        """Rows dropped because their client went away before they finished."""
        return sum(progress.cancelled for progress in self.rows)

    def step_seconds(self) -> Optional[float]:
        """Median time between consecutive steps (decode steps, prefill excluded), None before two steps."""
        gaps = np.diff(self.step_times)
        return float(np.median(gaps)) if len(gaps) else None
