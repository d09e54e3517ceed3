"""Greedy and sampling decoding: prefill once, then one token per row per step through the KV cache."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import paddle

from .inputs import GenerationInputs
from .logits_process import LogitsSettings, greedy_choice, process_logits, sample_choice


@dataclass
class StepRecord:
    """Per-step outputs kept for ``return_dict_in_generate``."""

    logits: List[paddle.Tensor] = field(default_factory=list)  # raw model logits, [rows, vocab] each
    scores: List[paddle.Tensor] = field(default_factory=list)  # after the processors


class Stepper:
    """Runs the model on the next token(s) at sequence index ``start``, with or without a KV cache.

    With the cache, ``prefill`` writes the prompt's keys/values and ``step`` feeds one
    token per row; without it (``use_cache=False``, the reference path) every call
    recomputes the whole sequence so far.
    """

    def __init__(self, model, inputs: GenerationInputs, batch: int, use_cache: bool):
        self.model = model
        self.inputs = inputs
        self.cache = model.new_cache(batch, inputs.total) if use_cache else None

    def logits(self, sequences: paddle.Tensor, start: int) -> paddle.Tensor:
        """Next-token logits ``[rows, vocab]`` after feeding ``sequences[:, start:]``."""
        end = sequences.shape[1]
        pos, mask = self.inputs.position_ids, self.inputs.mask
        if self.cache is not None:
            # a prefill attends over its own keys, a decode step over the whole cache
            keys = end if start == 0 else self.cache.max_length
            out = self.model(sequences[:, start:], pos[:, :, start:end], mask[:, :, start:end, :keys],
                             cache=self.cache, last_token_only=True)
        else:
            out = self.model(sequences, pos[:, :, :end], mask[:, :, :end, :end], last_token_only=True)
        return out.logits[:, -1]

    def reorder(self, index: paddle.Tensor) -> None:
        """Beam search: row i continues old row ``index[i]``."""
        if self.cache is not None:
            self.cache.reorder(index)


def decode(model, inputs: GenerationInputs, new_tokens: int, settings: LogitsSettings, *, sampling: bool,
           rng: Optional[np.random.Generator], eos_token_id: Optional[int], pad_token_id: int, use_cache: bool,
           streamer=None, record: Optional[StepRecord] = None) -> paddle.Tensor:
    """Generate up to ``new_tokens`` tokens per row; returns the full sequences ``[b, prompt + generated]``.

    Rows stop independently at ``eos_token_id`` and are padded with ``pad_token_id``
    afterwards; the loop ends early once every row has stopped.
    """
    sequences = inputs.input_ids
    b = sequences.shape[0]
    stepper = Stepper(model, inputs, b, use_cache)
    finished = paddle.zeros([b], dtype="bool")
    start = 0
    for step in range(new_tokens):
        logits = stepper.logits(sequences, start)
        start = sequences.shape[1] if use_cache else 0
        scores = process_logits(logits, sequences, step, settings, sampling)
        token = sample_choice(scores, rng) if sampling else greedy_choice(scores)
        token = paddle.where(finished, paddle.full_like(token, pad_token_id), token)  # [b]
        sequences = paddle.concat([sequences, token.unsqueeze(1)], axis=1)
        if record is not None:
            record.logits.append(logits)
            record.scores.append(scores)
        if streamer is not None:
            streamer.put(token)
        if eos_token_id is not None:
            finished = paddle.logical_or(finished, token == eos_token_id)
            if bool(finished.all()):
                break
    if streamer is not None:
        streamer.end()
    return sequences
