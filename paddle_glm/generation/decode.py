"""Greedy and sampling decoding: prefill once, then one token per row per step through the KV cache."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import List, Optional, Tuple

import numpy as np
import paddle

from ..errors import GLMError
from ..kv_cache import KVCache
from .inputs import GenerationInputs
from .logits_process import LogitsSettings, greedy_choice, process_logits, sample_choice


@dataclass
class StepRecord:
    """Per-step outputs kept for ``return_dict_in_generate`` (after a streamer dropped rows, a step's
    entries have the rows still running only)."""

    logits: List[paddle.Tensor] = field(default_factory=list)  # raw model logits, [rows, vocab] each
    scores: List[paddle.Tensor] = field(default_factory=list)  # after the processors


class Stepper:
    """Runs the model on the next token(s) at sequence index ``start``, with or without a KV cache.

    With the cache, the first call prefills it with the prompt and every later call is one
    :meth:`~paddle_glm.GLMModel.decode_step` (``decode_step``: eager, or its ``paddle.jit.to_static``
    wrapper); without it (``use_cache=False``, the reference path) every call recomputes the
    whole sequence so far.
    """

    def __init__(self, model, inputs: GenerationInputs, batch: int, use_cache: bool, decode_step=None):
        self.model = model
        self.inputs = inputs
        self.cache = model.new_cache(batch, inputs.total) if use_cache else None
        self.decode_step = decode_step or model.decode_step

    def logits(self, sequences: paddle.Tensor, start: int) -> paddle.Tensor:
        """Next-token logits ``[rows, vocab]`` after feeding ``sequences[:, start:]``."""
        end = sequences.shape[1]
        pos, mask = self.inputs.position_ids, self.inputs.mask
        if self.cache is None:
            out = self.model(sequences, pos[:, :, :end], mask[:, :, :end, :end], last_token_only=True)
        elif start == 0:
            out = self.model(sequences, pos[:, :, :end], mask[:, :, :end, :end], cache=self.cache,
                             last_token_only=True)
            if end < self.inputs.total:
                self.cache.show(context_visibility(mask, end))
        else:  # one token per row; its sequence index is its cache slot
            index = paddle.full([1], start, dtype="int64")
            return self.decode_step(sequences[:, start:], pos[:, :, start:end], index, self.cache)
        return out.logits[:, -1]

    def reorder(self, index: paddle.Tensor) -> None:
        """Beam search: row i continues old row ``index[i]``."""
        if self.cache is not None:
            self.cache.reorder(index)

    def keep(self, index: paddle.Tensor) -> None:
        """Run only rows ``index`` from now on: the others are dropped from the inputs and the cache."""
        self.inputs = replace(self.inputs, input_ids=paddle.index_select(self.inputs.input_ids, index),
                              position_ids=paddle.index_select(self.inputs.position_ids, index),
                              mask=paddle.index_select(self.inputs.mask, index))
        self.reorder(index)


def context_visibility(mask: paddle.Tensor, prompt: int) -> paddle.Tensor:
    """Boolean ``[b, prompt]``: the prompt columns a generated token sees, from the generation mask's rows.

    Generated column j is visible to rows ``i >= j`` only (``prepare_inputs`` makes it so), and
    a decode step reveals its own cache slot, so one vector per row serves every step, provided
    that the generated rows agree on the prompt columns, which GLM's layout does.
    """
    context = mask[:, 0, prompt:, :prompt]  # [b, generated, prompt]
    first = context[:, :1]  # [b, 1, prompt]
    if not bool((context == first).all()):
        raise GLMError("attention_mask: the generated tokens' rows see different prompt columns; the KV cache "
                       "keeps one visibility vector per row (GLM's layout), so use use_cache=False for this mask")
    return first[:, 0]


def static_decode_step(model):
    """``model.decode_step`` under ``paddle.jit.to_static`` (traced at its first call, per input shape).

    The cache goes in as its tensors: an object argument would be traced once per object, with
    its tensors frozen in. Generation uses the eager ``model.decode_step``: this one traces again
    for every batch size and cache length (3-5 s on the glm-large shape on CPU), which a
    ``generate`` call of a few dozen tokens does not win back; per step the two are within
    ~5% on an idle 2-core CPU (``benchmarks/bench_generate.py``, "static vs eager decode step";
    under CPU contention the static step degrades less). Pass this as ``decode_step`` to
    :func:`decode` / :func:`~paddle_glm.generation.beam.beam_search` to use it.
    """
    def on_buffers(input_ids, position_ids, write_index, keys, values, key_bias, layout):
        return model.decode_step(input_ids, position_ids, write_index, KVCache(keys, values, key_bias, layout))

    compiled = paddle.jit.to_static(on_buffers, full_graph=True)

    def step(input_ids, position_ids, write_index, cache: KVCache) -> paddle.Tensor:
        return compiled(input_ids, position_ids, write_index, cache.keys, cache.values, cache.key_bias, cache.layout)

    return step


def decode(model, inputs: GenerationInputs, new_tokens: int, settings: LogitsSettings, *, sampling: bool,
           rng: Optional[np.random.Generator], eos_token_id: Optional[int], pad_token_id: int, use_cache: bool,
           streamer=None, record: Optional[StepRecord] = None, decode_step=None) -> paddle.Tensor:
    """Generate up to ``new_tokens`` tokens per row; returns the full sequences ``[b, prompt + generated]``.

    Rows stop independently at ``eos_token_id`` and are padded with ``pad_token_id``
    afterwards; the loop ends early once every row has stopped. ``decode_step`` replaces
    ``model.decode_step`` (e.g. :func:`static_decode_step`).

    A streamer with ``active_rows()`` (one bool per running row, e.g. the server's
    ``BatchStreamer``) is asked before each step; its False rows are dropped from the batch
    (sequences, inputs, KV cache), so that later steps compute, and ``put``, the kept rows
    only, in order. The loop ends once no row is kept. A dropped row is returned padded with
    ``pad_token_id`` from its drop on. ``put`` may raise to end the run; that goes through.
    """
    sequences = inputs.input_ids
    b = sequences.shape[0]
    stepper = Stepper(model, inputs, b, use_cache, decode_step)
    finished = paddle.zeros([b], dtype="bool")
    active_rows = getattr(streamer, "active_rows", None)
    running = list(range(b))  # the batch row of each row still running
    dropped: List[Tuple[int, paddle.Tensor]] = []  # (batch row, its sequence at the drop)
    start = 0
    for step in range(new_tokens):
        if active_rows is not None:
            keep = list(active_rows())
            if len(keep) != len(running):
                raise GLMError(f"streamer.active_rows() returned {len(keep)} flags for {len(running)} running rows")
            if not all(keep):
                dropped += [(running[i], sequences[i]) for i, k in enumerate(keep) if not k]
                running = [row for row, k in zip(running, keep) if k]
                if not running:
                    break
                index = paddle.to_tensor([i for i, k in enumerate(keep) if k], dtype="int64")
                sequences, finished = paddle.index_select(sequences, index), paddle.index_select(finished, index)
                stepper.keep(index)
        logits = stepper.logits(sequences, start)
        start = sequences.shape[1] if use_cache else 0
        scores = process_logits(logits, sequences, step, settings, sampling)
        token = sample_choice(scores, rng) if sampling else greedy_choice(scores)
        token = paddle.where(finished, paddle.full_like(token, pad_token_id), token)  # [rows]
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
    return with_dropped_rows(sequences, running, dropped, pad_token_id) if dropped else sequences


def with_dropped_rows(sequences: paddle.Tensor, running: List[int], dropped: List[Tuple[int, paddle.Tensor]],
                      pad_token_id: int) -> paddle.Tensor:
    """The whole batch ``[b, length]`` in its order: the running rows ``sequences`` ``[len(running), length]``
    and each dropped row's sequence padded with ``pad_token_id`` to ``length``."""
    length = sequences.shape[1]
    rows = dict(dropped)
    rows.update((row, sequences[i]) for i, row in enumerate(running))

    def padded(sequence: paddle.Tensor) -> paddle.Tensor:
        missing = length - sequence.shape[0]
        return paddle.concat([sequence, paddle.full([missing], pad_token_id, dtype=sequence.dtype)]) if missing \
            else sequence

    return paddle.stack([padded(rows[i]) for i in range(len(rows))])
