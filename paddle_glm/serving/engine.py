"""Continuous batching, the model side: a fixed set of KV-cache slots that rows join and leave
between decode steps (vLLM's and TGI's scheme, PaddleNLP's "dynamic insertion").

The cache is allocated once, for ``max_batch`` rows of the whole position table. Each slot
keeps its own row's state as rows of device tensors: the token to feed, its write index
(the row's own sequence index), its positions for every index, its key visibility (the
cache's ``key_bias``), its sampling settings and its stream of random numbers. A decode step
runs every slot (free ones compute nothing anyone reads) with these tensors, so rows coming
and going change no shape; it attends over the slots the longest running row uses, rounded
up to :data:`WINDOW` (a view of the same buffers). A joining row is prefilled alone and
loaded into a free slot; its first token is chosen with the step's others. One device
read per step: every slot's token and problem flag.
"""
from __future__ import annotations

import logging
import time
from typing import List, Optional

import paddle

from ..errors import GLMError
from ..generation.config import GenerationConfig
from ..generation.decode import TokenChooser, context_visibility
from ..generation.device_random import row_keys
from ..generation.inputs import prepare_inputs
from ..generation.logits_process import LogitsSettings, normalize_bad_words
from .rows import Row, RowProgress

log = logging.getLogger("paddle_glm.serve")
WINDOW = 64  # a decode step attends over a multiple of this many cache slots


class SlotBatch:
    """``max_batch`` cache slots; :meth:`step` admits rows into free slots and runs one decode step."""

    def __init__(self, model, tokenizer, max_batch: int, metrics=None):
        self.model, self.tokenizer, self.metrics = model, tokenizer, metrics
        self.position_rows = model.config.num_position_embeddings
        settings = GenerationConfig().resolved(model.config, tokenizer)  # eos, and the bad words
        self.bad_words = normalize_bad_words(settings.bad_words_ids)
        self.cache = model.new_cache(max_batch, self.position_rows)  # once per server
        b, t = max_batch, self.cache.max_length
        self.tokens = paddle.zeros([b, 1], dtype="int64")  # the token each slot feeds next
        self.write_index = paddle.zeros([b], dtype="int64")  # its sequence index (= cache slot)
        self.positions = paddle.zeros([b, 2, t], dtype="int64")  # each slot's positions, every index
        self.history = paddle.zeros([b, t], dtype="int64")  # tokens so far (repetition penalty)
        self.keys = paddle.zeros([b], dtype="int64")  # random stream keys
        self.draws = paddle.zeros([b], dtype="int64")  # draws taken from each stream
        self.temperature, self.top_p = paddle.ones([b, 1]), paddle.ones([b, 1])
        self.top_k, self.penalty = paddle.zeros([b, 1], dtype="int64"), paddle.ones([b, 1])
        self.sampled = paddle.zeros([b], dtype="bool")
        self.slots: List[Optional[RowProgress]] = [None] * b
        self._banned: dict = {}  # the ban bias, built once (see LogitsSettings.ban_bias)
        self.lengths = [0] * b  # host copy of write_index
        self.period = _new_period()  # what the batch ran since it was last empty (for the log)

    @property
    def running(self) -> int:
        return sum(p is not None for p in self.slots)

    @property
    def free(self) -> int:
        return len(self.slots) - self.running

    def describe(self) -> str:
        """For the startup line: the cache's shape and memory."""
        return (f"a KV cache of {len(self.slots)} rows x {self.cache.max_length} slots allocated once "
                f"({self.cache.nbytes / 2 ** 20:.1f} MiB)")

    def step(self, joining: List[Row]) -> None:
        """Drop the rows whose client left, run one decode step for the running rows, admit ``joining``
        (at most :attr:`free`) into free slots, and give every running row its next token."""
        for i, progress in enumerate(self.slots):
            if progress is not None and progress.row.cancelled.is_set():
                self._release(i)
        decoding = [i for i, p in enumerate(self.slots) if p is not None]
        logits = self._decode(decoding) if decoding else None
        joined = [slot for slot in (self._admit(row) for row in joining) if slot is not None]
        if not decoding and not joined:
            return
        if joined:
            logits = self._with_prefills(logits, joined)
        self._choose(logits, decoding + [slot for slot, _ in joined])
        self.period["steps"] += 1
        self.period["peak"] = max(self.period["peak"], len(decoding) + len(joined))

    def _decode(self, decoding: List[int]) -> paddle.Tensor:
        """One decode step of every slot: logits ``[max_batch, vocab]`` (rows not in ``decoding`` unread)."""
        width = min(self.cache.max_length, -(-(max(self.lengths[i] for i in decoding) + 1) // WINDOW) * WINDOW)
        index = self.write_index.reshape([-1, 1, 1]).expand([-1, 2, 1])  # [b, 2, 1]
        positions = paddle.take_along_axis(self.positions, index, axis=2)  # [b, 2, 1]
        with paddle.no_grad():
            logits = self.model.decode_step(self.tokens, positions, self.write_index, self.cache.window(width))
        stepped = paddle.to_tensor([int(i in decoding) for i in range(len(self.slots))], dtype="int64")
        self.write_index = self.write_index + stepped  # the next token goes one slot further
        for i in decoding:
            self.lengths[i] += 1
        return logits

    def _admit(self, row: Row) -> Optional[tuple]:
        """Prefill ``row`` alone and load it into a free slot: ``(slot, its next-token logits [1, vocab])``,
        or None when its input is refused (the row gets a 400)."""
        slot = self.slots.index(None)
        try:
            batch = self.tokenizer([row.prompt], return_tensors="pd")
            batch = self.tokenizer.build_inputs_for_generation(batch, max_gen_length=row.max_tokens)
            inputs = prepare_inputs(batch["input_ids"], batch["position_ids"], batch["attention_mask"],
                                    row.max_tokens, self.position_rows, self.model.config.block_position_encoding)
            n0, total = inputs.prompt_length, inputs.total
            if total > self.cache.max_length:
                raise GLMError(f"the prompt's {n0} tokens and max_tokens={row.max_tokens} need {total} cache slots; "
                               f"this server has {self.cache.max_length}")
            prefill = self.model.new_cache(1, n0)
            with paddle.no_grad():
                out = self.model(inputs.input_ids, inputs.position_ids[:, :, :n0], inputs.mask[:, :, :n0, :n0],
                                 cache=prefill, last_token_only=True)
            visible = context_visibility(inputs.mask, n0) if total > n0 else paddle.ones([1, n0], dtype="bool")
        except GLMError as e:
            row.sink.fail(400, str(e))
            return None
        self.cache.load_row(slot, prefill, visible[0])
        self._load_state(slot, row, inputs)
        self.slots[slot] = RowProgress(row, self.tokenizer, self.metrics)
        self.period["rows"] += 1
        self.period["kinds"].add("greedy" if row.sampling.greedy else "sampling")
        self.period["start"] = self.period["start"] or time.monotonic()
        return slot, out.logits[:, -1]

    def _load_state(self, slot: int, row: Row, inputs) -> None:
        """The slot's device state for ``row``: positions, history, settings and random stream."""
        n0, total, t = inputs.prompt_length, inputs.total, self.cache.max_length
        ids = inputs.input_ids[0]
        self.positions[slot] = paddle.concat([inputs.position_ids[0], paddle.zeros([2, t - total], dtype="int64")],
                                             axis=1)
        self.history[slot] = paddle.concat([ids, ids[:1].expand([t - n0])])  # filler: a token already seen
        self.write_index[slot] = n0
        self.lengths[slot] = n0
        sampling = row.sampling
        self.sampled[slot] = not sampling.greedy
        self.temperature[slot] = 1.0 if sampling.greedy else sampling.temperature
        self.top_p[slot] = 1.0 if sampling.greedy else sampling.top_p
        self.top_k[slot] = 0 if sampling.greedy else sampling.top_k
        self.penalty[slot] = sampling.repetition_penalty
        self.keys[slot] = row_keys([sampling.seed], [row.index])[0]
        self.draws[slot] = 0

    def _with_prefills(self, logits: Optional[paddle.Tensor], joined: List[tuple]) -> paddle.Tensor:
        """The step's logits ``[max_batch, vocab]`` with the joining rows' prefill logits in their slots."""
        prefills = paddle.concat([row_logits for _, row_logits in joined])  # [joined, vocab]
        if logits is None:
            logits = paddle.zeros([len(self.slots), prefills.shape[-1]], dtype=prefills.dtype)
        index = paddle.to_tensor([slot for slot, _ in joined], dtype="int64")
        return paddle.scatter(logits, index, prefills.astype(logits.dtype), overwrite=True)

    def _choose(self, logits: paddle.Tensor, running: List[int]) -> None:
        """Every slot's next token (each row with its own settings and random stream); the one host read."""
        chooser = self._chooser([self.slots[i].row.sampling for i in running])
        token, _, problems = chooser.choose(logits, self.history, 0, draws=self.draws)
        self.tokens = token.unsqueeze(1)
        self.history = paddle.put_along_axis(self.history, self.write_index.unsqueeze(1), self.tokens, axis=1)
        self.draws = self.draws + 1
        b = len(self.slots)
        host = paddle.concat([token, problems]).numpy()  # the one read of this step
        for i in running:
            progress = self.slots[i]
            if host[b + i]:
                progress.row.sink.fail(500, "the model's next-token logits are not finite (NaN or inf)")
                self._release(i)
                continue
            progress.add(int(host[i]))
            if progress.done:
                self._release(i)

    def _chooser(self, samplings: list) -> TokenChooser:
        """This step's processors: per-row tensors, each only if some running row needs it."""
        sampled = [s for s in samplings if not s.greedy]
        settings = LogitsSettings(
            temperature=self.temperature if any(s.temperature != 1.0 for s in sampled) else 1.0,
            top_k=self.top_k if any(s.top_k for s in sampled) else 0,
            top_p=self.top_p if any(s.top_p < 1.0 for s in sampled) else 1.0,
            repetition_penalty=self.penalty if any(s.repetition_penalty != 1.0 for s in samplings) else 1.0,
            bad_words_ids=self.bad_words, _banned=self._banned)
        return TokenChooser(settings, self.sampled if sampled else False, self.keys)

    def _release(self, slot: int) -> None:
        """Free ``slot`` (its buffers stay; the next row overwrites them)."""
        self.slots[slot] = None
        self.write_index[slot] = 0
        self.lengths[slot] = 0

    def fail_all(self, status: int, message: str, joining: List[Row]) -> None:
        """A step failed: every running row and every row of ``joining`` gets the error; the slots are freed."""
        rows = [p.row for p in self.slots if p is not None]
        rows += [row for row in joining if all(row is not other for other in rows)]
        for row in rows:
            row.sink.fail(status, message)
        for i in range(len(self.slots)):
            if self.slots[i] is not None:
                self._release(i)

    def finished_period(self) -> Optional[str]:
        """When the batch has just emptied: a log line about the rows it ran since it was last empty."""
        period = self.period
        if self.running or not period["rows"]:
            return None
        kinds = " and ".join(sorted(period["kinds"]))
        self.period = _new_period()
        return (f"batch of {period['rows']} row{'s' if period['rows'] != 1 else ''} ({kinds}; continuous, at most "
                f"{period['peak']} at once): {period['steps']} steps in {time.monotonic() - period['start']:.2f} s")


def _new_period() -> dict:
    return {"rows": 0, "steps": 0, "peak": 0, "kinds": set(), "start": None}
