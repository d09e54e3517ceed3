"""Greedy and sampling decoding in gpt-fast's shape: :func:`prefill`, :func:`decode_one_token` and
:func:`decode_n_tokens`, on a :class:`DecodeRun` (the model, its inputs and its KV cache).

A step reads the device once: the step's tokens, each row's problem flag (non-finite logits,
every token banned) and whether every row has finished, in one small array.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import List, Optional, Tuple, Union

import paddle

from ..errors import GLMError
from ..kv_cache import KVCache
from .device_random import row_keys, uniforms
from .inputs import GenerationInputs
from .logits_process import (
    LogitsSettings,
    greedy_choice,
    process_logits,
    raise_problems,
    row_problems,
    sample_choice,
    warp_logits,
)


@dataclass
class StepRecord:
    """Per-step outputs kept for ``return_dict_in_generate`` (after a hook dropped rows, a step's
    entries have the rows still running only)."""

    logits: List[paddle.Tensor] = field(default_factory=list)  # raw model logits, [rows, vocab] each
    scores: List[paddle.Tensor] = field(default_factory=list)  # after the processors


class DecodeRun:
    """The model side of one decoding: its inputs, its KV cache and the decode-step function.

    With the cache (``use_cache``), :func:`prefill` fills it with the prompt and each
    :func:`decode_one_token` is one :meth:`~paddle_glm.GLMModel.decode_step` (eager, or
    ``decode_step``, e.g. :func:`static_decode_step`); without it (the reference path) every
    call recomputes the whole sequence so far.
    """

    def __init__(self, model, inputs: GenerationInputs, use_cache: bool, decode_step=None):
        self.model = model
        self.inputs = inputs
        self.cache = model.new_cache(inputs.batch_size, inputs.total) if use_cache else None
        self.decode_step = decode_step or model.decode_step

    def reorder(self, index: paddle.Tensor) -> None:
        """Row i continues old row ``index[i]`` (beam search); rows not in ``index`` are dropped."""
        if self.cache is not None:
            self.cache.reorder(index)

    def keep(self, index: paddle.Tensor) -> None:
        """Run only rows ``index`` from now on: the others leave the inputs and the cache."""
        self.inputs = replace(self.inputs, input_ids=paddle.index_select(self.inputs.input_ids, index),
                              position_ids=paddle.index_select(self.inputs.position_ids, index),
                              mask=paddle.index_select(self.inputs.mask, index))
        self.reorder(index)


def prefill(run: DecodeRun, sequences: paddle.Tensor) -> paddle.Tensor:
    """Next-token logits ``[rows, vocab]`` after the prompt ``sequences``; with a cache, fills it and
    sets which prompt columns the generated tokens see."""
    end = sequences.shape[1]
    pos, mask = run.inputs.position_ids, run.inputs.mask
    out = run.model(sequences, pos[:, :, :end], mask[:, :, :end, :end], cache=run.cache, last_token_only=True)
    if run.cache is not None and end < run.inputs.total:
        run.cache.show(context_visibility(mask, end))
    return out.logits[:, -1]


def decode_one_token(run: DecodeRun, sequences: paddle.Tensor) -> paddle.Tensor:
    """Next-token logits ``[rows, vocab]`` after feeding the last token of ``sequences``."""
    end = sequences.shape[1]
    pos, mask = run.inputs.position_ids, run.inputs.mask
    if run.cache is None:
        return run.model(sequences, pos[:, :, :end], mask[:, :, :end, :end], last_token_only=True).logits[:, -1]
    index = paddle.full([1], end - 1, dtype="int64")  # the token's sequence index is its cache slot
    return run.decode_step(sequences[:, end - 1:], pos[:, :, end - 1:end], index, run.cache)


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


class TokenChooser:
    """Logits to the next token of each row, on the device: the processors, then greedy or sampling.

    ``sampling`` is one bool for the batch or a bool ``[rows]`` tensor (greedy and sampled rows
    in one batch). Sampled rows draw from their own stream of device random numbers
    (``keys``, see :func:`~paddle_glm.generation.device_random.row_keys`): draw ``t`` of a row is
    the same whatever else shares its batch.
    """

    def __init__(self, settings: LogitsSettings, sampling: Union[bool, paddle.Tensor],
                 keys: Optional[paddle.Tensor] = None):
        self.settings, self.sampling, self.keys = settings, sampling, keys

    @classmethod
    def for_rows(cls, settings: LogitsSettings, sampling: bool, rows: int, seed: Optional[int]) -> TokenChooser:
        """A chooser for ``rows`` rows of one call, their streams derived from ``seed`` (None: a random one)."""
        return cls(settings, sampling, row_keys([seed] * rows) if sampling else None)

    def choose(self, logits: paddle.Tensor, sequences: paddle.Tensor, step: int,
               draws: Optional[paddle.Tensor] = None) -> Tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
        """``(tokens [rows], scores [rows, vocab], problems [rows])`` for step ``step`` (``draws``: each
        row's draw number, default ``step``)."""
        scores = process_logits(logits, sequences, step, self.settings, sampling=False)
        problems = row_problems(logits, scores)
        if self.sampling is False:
            return greedy_choice(scores), scores, problems
        counter = paddle.full([1], step, dtype="int64") if draws is None else draws
        warped = warp_logits(scores, self.settings)
        sampled = sample_choice(warped, uniforms(self.keys, counter))
        if self.sampling is True:
            return sampled, warped, problems
        return paddle.where(self.sampling, sampled, greedy_choice(scores)), warped, problems

    def keep(self, index: paddle.Tensor) -> None:
        if self.keys is not None:
            self.keys = paddle.index_select(self.keys, index)


@dataclass
class DecodeState:
    """What the loop carries from step to step; a hook may drop rows through :meth:`drop_rows`."""

    run: DecodeRun
    chooser: TokenChooser
    sequences: paddle.Tensor  # [rows, length] int64, the running rows
    finished: paddle.Tensor  # [rows] bool
    running: List[int]  # the batch row of each running row
    dropped: List[Tuple[int, paddle.Tensor]] = field(default_factory=list)  # (batch row, its sequence then)

    def drop_rows(self, keep: List[bool]) -> None:
        """Run only the rows whose ``keep`` flag is True (one flag per running row) from the next step on."""
        if len(keep) != len(self.running):
            raise GLMError(f"{len(keep)} row flags for {len(self.running)} running rows")
        if all(keep):
            return
        self.dropped += [(self.running[i], self.sequences[i]) for i, k in enumerate(keep) if not k]
        self.running = [row for row, k in zip(self.running, keep) if k]
        if not self.running:
            return
        index = paddle.to_tensor([i for i, k in enumerate(keep) if k], dtype="int64")
        self.sequences, self.finished = paddle.index_select(self.sequences, index), \
            paddle.index_select(self.finished, index)
        self.run.keep(index)
        self.chooser.keep(index)

    def whole_batch(self, pad_token_id: int) -> paddle.Tensor:
        """``[b, length]`` in the batch's order: the running rows and each dropped row padded to length."""
        if not self.dropped:
            return self.sequences
        length = self.sequences.shape[1]
        rows = dict(self.dropped)
        rows.update((row, self.sequences[i]) for i, row in enumerate(self.running))

        def padded(sequence: paddle.Tensor) -> paddle.Tensor:
            missing = length - sequence.shape[0]
            return paddle.concat([sequence, paddle.full([missing], pad_token_id, dtype=sequence.dtype)]) if missing \
                else sequence

        return paddle.stack([padded(rows[i]) for i in range(len(rows))])


def decode_n_tokens(state: DecodeState, logits: paddle.Tensor, new_tokens: int, *, eos_token_id: Optional[int],
                    pad_token_id: int, streamer=None, record: Optional[StepRecord] = None) -> paddle.Tensor:
    """Choose up to ``new_tokens`` tokens per row from the prefill's ``logits`` on; returns the whole
    batch's sequences ``[b, prompt + generated]`` (see :meth:`DecodeState.whole_batch`).

    Rows stop independently at ``eos_token_id`` and are padded with ``pad_token_id`` afterwards;
    the loop ends once every row has stopped. ``streamer.put`` gets each step's tokens as an
    int64 numpy array ``[rows]`` (read from the device with the step's flags). A streamer with
    ``before_step(state)`` (the server's) is called before each decode step and may drop rows
    with ``state.drop_rows``; the loop ends when it returns False or no row runs.
    """
    before_step = getattr(streamer, "before_step", None)
    for step in range(new_tokens):
        if step:
            if before_step is not None and (before_step(state) is False or not state.running):
                break
            logits = decode_one_token(state.run, state.sequences)
        token, scores, problems = state.chooser.choose(logits, state.sequences, step)
        token = paddle.where(state.finished, paddle.full_like(token, pad_token_id), token)  # [rows]
        state.sequences = paddle.concat([state.sequences, token.unsqueeze(1)], axis=1)
        if eos_token_id is not None:
            state.finished = paddle.logical_or(state.finished, token == eos_token_id)
        if record is not None:
            record.logits.append(logits)
            record.scores.append(scores)
        rows = token.shape[0]
        host = paddle.concat([token, problems, state.finished.all().astype("int64").reshape([1])]).numpy()
        raise_problems(host[rows:2 * rows], step)  # the one read of this step
        if streamer is not None:
            streamer.put(host[:rows])
        if host[-1] and eos_token_id is not None:
            break
    if streamer is not None:
        streamer.end()
    return state.whole_batch(pad_token_id)


def decode(model, inputs: GenerationInputs, new_tokens: int, chooser: TokenChooser, *,
           eos_token_id: Optional[int], pad_token_id: int, use_cache: bool, streamer=None,
           record: Optional[StepRecord] = None, decode_step=None) -> paddle.Tensor:
    """Prefill, then :func:`decode_n_tokens`: the full sequences ``[b, prompt + generated]``.
    ``decode_step`` replaces ``model.decode_step`` (e.g. :func:`static_decode_step`)."""
    run = DecodeRun(model, inputs, use_cache, decode_step)
    b = inputs.batch_size
    state = DecodeState(run, chooser, inputs.input_ids, paddle.zeros([b], dtype="bool"), list(range(b)))
    return decode_n_tokens(state, prefill(run, inputs.input_ids), new_tokens, eos_token_id=eos_token_id,
                           pad_token_id=pad_token_id, streamer=streamer, record=record)


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
