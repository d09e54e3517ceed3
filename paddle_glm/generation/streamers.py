"""Streamers in the HF/PaddleNLP shape: ``put(token_ids)`` after every step, ``end()`` at the end."""
from __future__ import annotations

import queue
import sys
from typing import List, Optional, TextIO

import numpy as np


class BaseStreamer:
    """Receives each step's new tokens (int64 ``[batch]``) through ``put`` and ``end()`` once at the end."""

    def put(self, value) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


def _token_list(value) -> List[int]:
    array = np.asarray(value.numpy() if hasattr(value, "numpy") else value).reshape(-1)
    return [int(t) for t in array]


class TokenCollector(BaseStreamer):
    """Keeps every step's tokens: ``steps[i]`` is the list of the batch's tokens at step ``i``."""

    def __init__(self):
        self.steps: List[List[int]] = []
        self.ended = False

    def put(self, value) -> None:
        self.steps.append(_token_list(value))

    def end(self) -> None:
        self.ended = True


class TextStreamer(BaseStreamer):
    """Prints the decoded text as it grows (batch of one), flushing after each step.

    Decodes the whole generated text each step and prints only the new suffix, so
    multi-piece characters appear once they are complete.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = False, file: Optional[TextIO] = None):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.file = file
        self.tokens: List[int] = []
        self._printed = 0

    def _delta(self, final: bool = False) -> str:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=self.skip_special_tokens)
        if text.endswith("\ufffd") and not final:  # an incomplete byte sequence: wait for the rest
            return ""
        delta, self._printed = text[self._printed:], len(text)
        return delta

    def put(self, value) -> None:
        tokens = _token_list(value)
        if len(tokens) != 1:
            raise ValueError("TextStreamer supports a batch of one; use TokenCollector for batches")
        self.tokens.extend(tokens)
        self.on_text(self._delta(), end=False)

    def end(self) -> None:
        self.on_text(self._delta(final=True), end=True)

    def on_text(self, text: str, end: bool) -> None:
        out = self.file or sys.stdout
        print(text, end="\n" if end else "", file=out, flush=True)


class TextIteratorStreamer(TextStreamer):
    """A TextStreamer whose text deltas are read by iterating over it, e.g. from a server thread.

    Run ``generate(..., streamer=s)`` in a worker thread and ``for piece in s: ...``
    in the serving thread; iteration stops when generation ends. ``timeout``
    (seconds) bounds each wait and raises ``queue.Empty`` when exceeded.
    """

    _END = object()

    def __init__(self, tokenizer, skip_special_tokens: bool = False, timeout: Optional[float] = None):
        super().__init__(tokenizer, skip_special_tokens)
        self.queue: "queue.Queue" = queue.Queue()
        self.timeout = timeout

    def on_text(self, text: str, end: bool) -> None:
        if text:
            self.queue.put(text)
        if end:
            self.queue.put(self._END)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        item = self.queue.get(timeout=self.timeout)
        if item is self._END:
            raise StopIteration
        return item
