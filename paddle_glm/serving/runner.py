"""The model side of the server: a batch of rows through ``generate`` (the static scheduler), a fill job
through ``fill_blanks`` (both schedulers); the continuous scheduler's slots are in ``engine``.

Only the scheduler's model thread calls ``complete`` and ``fill``; ``prompt_tokens``
(validation) runs in the server's thread and only uses the tokenizer.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..generation import GenerationConfig, TokenCollector
from ..infilling import fill_blanks
from .rows import BatchFinished, BatchStreamer, FillCancelled, Row, Sampling


class _CancellableCounter(TokenCollector):
    """Counts a fill's tokens; at the first step after ``cancelled`` is set it raises :class:`FillCancelled`, which
    ends ``generate`` (and so ``fill_blanks``) there."""

    def __init__(self, cancelled: Optional[threading.Event]):
        super().__init__()
        self.cancelled = cancelled

    def put(self, value) -> None:
        if self.cancelled is not None and self.cancelled.is_set():
            raise FillCancelled(len(self.steps))
        super().put(value)


@dataclass
class BatchStats:
    """What one ``generate`` call did: rows, steps run, median seconds per decode step, rows whose client left."""

    rows: int
    steps: int
    step_seconds: Optional[float]
    cancelled: int


class ModelRunner:
    """Runs rows and fill jobs on one model and tokenizer."""

    def __init__(self, model, tokenizer, metrics=None):
        self.model = model
        self.tokenizer = tokenizer
        self.metrics = metrics
        self.position_rows = model.config.num_position_embeddings
        # Each request's fields are its settings: the model's generation_config.json (beams,
        # penalties) does not apply here. eos = <|endofpiece|>; rows past the tokenizer are banned.
        self.settings = GenerationConfig().resolved(model.config, tokenizer)

    def prompt_tokens(self, text: str) -> int:
        """Context tokens of ``text`` (``[CLS]`` and ``<|endoftext|>`` included)."""
        return len(self.tokenizer(text)["input_ids"])

    def complete(self, rows: Sequence[Row]) -> BatchStats:
        """Generate every row's span in one right-padded batch; results go to each row's sink.

        The batch runs to the largest ``max_tokens``; each row is cut at its own limit,
        stop string or ``<|endofpiece|>``, and ``generate`` is stopped once no row needs
        more tokens. All rows share ``rows[0].sampling`` (the scheduler groups them so).
        """
        tokenizer = self.tokenizer
        new_tokens = max(row.max_tokens for row in rows)
        batch = tokenizer([row.prompt for row in rows], padding=True, return_tensors="pd")
        inputs = tokenizer.build_inputs_for_generation(batch, max_gen_length=new_tokens)
        streamer = BatchStreamer(rows, tokenizer, self.metrics)
        with contextlib.suppress(BatchFinished):
            self.model.generate(**inputs, generation_config=self.settings, max_new_tokens=new_tokens,
                                streamer=streamer, **rows[0].sampling.generate_kwargs())
        return BatchStats(len(rows), len(streamer.step_times), streamer.step_seconds(), streamer.cancelled())

    def fill(self, text: str, max_tokens: int, sampling: Sampling,
             cancelled: Optional[threading.Event] = None) -> Tuple[str, List[str], int]:
        """``fill_blanks`` on one text: the completed text, the spans and the tokens generated. Raises
        :class:`FillCancelled` at the first decode step after ``cancelled`` is set (its client left)."""
        counter = _CancellableCounter(cancelled)
        completed, spans = fill_blanks(self.model, self.tokenizer, text, generation_config=self.settings,
                                       streamer=counter, max_new_tokens=max_tokens, **sampling.generate_kwargs())
        return completed, spans, len(counter.steps)

