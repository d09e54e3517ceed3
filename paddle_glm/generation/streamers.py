"""Streamers in the HF/PaddleNLP shape: ``put(token_ids)`` after every step, ``end()`` at the end."""
from __future__ import annotations

import queue
import sys
from typing import List, Optional, TextIO

import numpy as np

from .detokenizer import IncrementalDetokenizer


class BaseStreamer:
    """Receives each step's new tokens through ``put`` and ``end()`` once at the end.

    ``generate`` puts an int64 numpy array ``[batch]`` (read from the device with the step's
    flags, its one read); a paddle tensor or a list is accepted too.
    """

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

    The text comes from an :class:`~paddle_glm.generation.detokenizer.IncrementalDetokenizer`:
    multi-piece characters appear once they are complete, each step decodes a few ids only,
    and ``<|endofpiece|>`` (the stop token) is not printed.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = False, file: Optional[TextIO] = None):
        self.detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens)
        self.file = file

    def put(self, value) -> None:
        tokens = _token_list(value)
        if len(tokens) != 1:
            raise ValueError("TextStreamer supports a batch of one; use TokenCollector for batches")
        self.on_text(self.detokenizer.add(tokens[0]), end=False)

    def end(self) -> None:
        self.on_text(self.detokenizer.flush(), end=True)

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
        self.queue: queue.Queue = queue.Queue()
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
