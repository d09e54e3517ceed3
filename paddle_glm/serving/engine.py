"""Continuous batching, the model side: a fixed set of KV-cache slots that rows join and leave
between decode steps (vLLM's and TGI's scheme, PaddleNLP's "dynamic insertion").

The cache is allocated once, for ``max_batch`` rows of the whole position table, and never
reallocated. Each row keeps its state as its slot's rows of device tensors: the token to
feed, its write index (the row's own sequence index), its positions for every index, its
key visibility (the cache's ``key_bias``), its sampling settings and its stream of random
numbers; a decode step takes them as tensors. The running rows are kept in the lowest
slots (a row leaving from the middle has the last one moved into its place), so that a step
runs the first ``n`` rows, as views of the buffers, and costs what ``n`` rows cost (on CPU a
batch-8 step costs ~1.8-2.4 batch-1 steps); it attends over the slots its longest row
uses, rounded up to :data:`WINDOW`. Joining rows go first: each is prefilled alone, loaded into
the next slot and given its first token at once, before the next decode step. One device read
per decode step (every running row's token and problem flag) and one per prefill.
"""
from __future__ import annotations

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

WINDOW = 64  # a decode step attends over a multiple of this many cache slots


class SlotBatch:
    """``max_batch`` cache slots; :meth:`step` either admits rows into free slots or runs one decode step."""

    def __init__(self, model, tokenizer, max_batch: int, metrics=None):
        self.model, self.tokenizer, self.metrics = model, tokenizer, metrics
        self.position_rows = model.config.num_position_embeddings
        settings = GenerationConfig().resolved(model.config, tokenizer)  # eos, and the bad words
        self.bad_words = normalize_bad_words(settings.bad_words_ids)
        self.cache = model.new_cache(max_batch, self.position_rows)  # once per server
        b, t = max_batch, self.cache.max_length
        self.state = {  # each slot's row of every tensor
            "tokens": paddle.zeros([b, 1], dtype="int64"),  # the token to feed next
            "write_index": paddle.zeros([b], dtype="int64"),  # its sequence index (= its cache slot)
            "positions": paddle.zeros([b, 2, t], dtype="int64"),  # positions and block positions, every index
            "history": paddle.zeros([b, t], dtype="int64"),  # tokens so far (the repetition penalty)
            "keys": paddle.zeros([b], dtype="int64"), "draws": paddle.zeros([b], dtype="int64"),  # random streams
            "temperature": paddle.ones([b, 1]), "top_p": paddle.ones([b, 1]),
            "top_k": paddle.zeros([b, 1], dtype="int64"), "penalty": paddle.ones([b, 1]),
            "sampled": paddle.zeros([b], dtype="bool"),
        }
        self.slots: List[Optional[RowProgress]] = [None] * b
        self.lengths = [0] * b  # host copy of write_index
        self._banned: dict = {}  # the ban bias, built once (see LogitsSettings.ban_bias)
        self.period = _new_period()  # what the batch ran since it was last empty (for the log)

    @property
    def running(self) -> int:
        """Running rows: they occupy slots ``0..running-1``."""
        return sum(p is not None for p in self.slots)

    @property
    def free(self) -> int:
        return len(self.slots) - self.running

    def describe(self) -> str:
        """For the startup line: the cache's shape and memory."""
        return (f"a KV cache of {len(self.slots)} rows x {self.cache.max_length} slots allocated once "
                f"({self.cache.nbytes / 2 ** 20:.1f} MiB)")

    def step(self, joining: List[Row]) -> None:
        """Drop the rows whose client left, then either admit ``joining`` (at most :attr:`free`), each prefilled
        into the next slot and given its first token at once, or, with no row joining, run one decode step
        that gives every running row its next token.

        Joining rows come first (vLLM V0's default order): a row's first token never waits for a decode step
        of the others, and the caller hands over the rows that arrived meanwhile before the next decode step
        (the scheduler bounds how many: :class:`~paddle_glm.serving.scheduler.ContinuousScheduler`)."""
        for i, progress in enumerate(self.slots):
            if progress is not None and progress.row.cancelled.is_set():
                self.slots[i] = None
        self._compact()
        if joining:
            for row in joining:
                slot = self.running
                prefill = None if row.cancelled.is_set() else self._admit(row)
                if prefill is not None:
                    self.period["peak"] = max(self.period["peak"], self.running)
                    self._choose(prefill, slot, slot + 1)
        elif self.running:
            self.period["peak"] = max(self.period["peak"], self.running)
            self._choose(self._decode(self.running), 0, self.running)
            self.period["steps"] += 1
        self._compact()

    def _decode(self, n: int) -> paddle.Tensor:
        """One decode step of rows ``0..n-1``: logits ``[n, vocab]``."""
        state = self.state
        width = min(self.cache.max_length, -(-(max(self.lengths[:n]) + 1) // WINDOW) * WINDOW)
        write_index = state["write_index"][:n]
        index = write_index.reshape([-1, 1, 1]).expand([-1, 2, 1])  # [n, 2, 1]
        positions = paddle.take_along_axis(state["positions"][:n], index, axis=2)  # [n, 2, 1]
        with paddle.no_grad():
            logits = self.model.decode_step(state["tokens"][:n], positions, write_index, self.cache.window(n, width))
        state["write_index"][:n] = write_index + 1  # the next token goes one slot further
        for i in range(n):
            self.lengths[i] += 1
        return logits

    def _admit(self, row: Row) -> Optional[paddle.Tensor]:
        """Prefill ``row`` alone and load it into the next slot: its next-token logits ``[1, vocab]``,
        or None when its input is refused (the row gets a 400)."""
        slot = self.running
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
        return out.logits[:, -1]

    def _load_state(self, slot: int, row: Row, inputs) -> None:
        """The slot's device state for ``row``: positions, history, settings and random stream."""
        state, sampling = self.state, row.sampling
        n0, total, t = inputs.prompt_length, inputs.total, self.cache.max_length
        ids = inputs.input_ids[0]
        state["positions"][slot] = paddle.concat([inputs.position_ids[0], paddle.zeros([2, t - total], "int64")], 1)
        state["history"][slot] = paddle.concat([ids, ids[:1].expand([t - n0])])  # filler: a token already seen
        state["write_index"][slot] = n0
        self.lengths[slot] = n0
        greedy = sampling.greedy  # a greedy row's warpers are neutral
        state["sampled"][slot] = not greedy
        state["temperature"][slot] = 1.0 if greedy else sampling.temperature
        state["top_p"][slot] = 1.0 if greedy else sampling.top_p
        state["top_k"][slot] = 0 if greedy else sampling.top_k
        state["penalty"][slot] = sampling.repetition_penalty
        state["keys"][slot] = row_keys([sampling.seed], [row.index])[0]
        state["draws"][slot] = 0

    def _choose(self, logits: paddle.Tensor, lo: int, hi: int) -> None:
        """Rows ``lo..hi-1``'s next tokens from their ``logits`` ``[hi - lo, vocab]`` (each row with its own
        settings and random stream); the one host read of a decode step or a prefill."""
        state = self.state
        chooser = self._chooser([self.slots[i].row.sampling for i in range(lo, hi)], lo, hi)
        index = state["write_index"][lo:hi].unsqueeze(1)  # [rows, 1]
        token, _, problems = chooser.choose(logits, state["history"][lo:hi], 0, draws=state["draws"][lo:hi])
        state["tokens"][lo:hi] = token.unsqueeze(1)
        state["history"][lo:hi] = paddle.put_along_axis(state["history"][lo:hi], index, token.unsqueeze(1), axis=1)
        state["draws"][lo:hi] = state["draws"][lo:hi] + 1
        host = paddle.concat([token, problems]).numpy()  # the one read: tokens, then problem flags
        for j, i in enumerate(range(lo, hi)):
            progress = self.slots[i]
            if host[hi - lo + j]:
                progress.row.sink.fail(500, "the model's next-token logits are not finite (NaN or inf)")
                self.slots[i] = None
                continue
            progress.add(int(host[j]))
            if progress.done:
                self.slots[i] = None

    def _chooser(self, samplings: list, lo: int, hi: int) -> TokenChooser:
        """The processors for rows ``lo..hi-1``: per-row tensors, each only if a row needs it."""
        state = self.state
        sampled = [s for s in samplings if not s.greedy]
        settings = LogitsSettings(
            temperature=state["temperature"][lo:hi] if any(s.temperature != 1.0 for s in sampled) else 1.0,
            top_k=state["top_k"][lo:hi] if any(s.top_k for s in sampled) else 0,
            top_p=state["top_p"][lo:hi] if any(s.top_p < 1.0 for s in sampled) else 1.0,
            repetition_penalty=state["penalty"][lo:hi] if any(s.repetition_penalty != 1.0 for s in samplings) else 1.0,
            bad_words_ids=self.bad_words, _banned=self._banned)
        return TokenChooser(settings, state["sampled"][lo:hi] if sampled else False, state["keys"][lo:hi])

    def _compact(self) -> None:
        """Keep the running rows in the lowest slots: the last one moves into each gap."""
        while None in self.slots[:self.running]:
            gap, last = self.slots.index(None), max(i for i, p in enumerate(self.slots) if p is not None)
            self.cache.move_row(last, gap, self.lengths[last] + 1)
            for tensor in self.state.values():
                tensor[gap] = tensor[last]
            self.slots[gap], self.slots[last] = self.slots[last], None
            self.lengths[gap] = self.lengths[last]

    def fail_all(self, status: int, message: str, joining: List[Row]) -> None:
        """A step failed: every running row and every row of ``joining`` gets the error; the slots are freed."""
        rows = [p.row for p in self.slots if p is not None]
        rows += [row for row in joining if all(row is not other for other in rows)]
        for row in rows:
            row.sink.fail(status, message)
        self.slots = [None] * len(self.slots)

    def finished_period(self) -> Optional[str]:
        """When the batch has just emptied: a log line about the rows it ran since it was last empty."""
        period = self.period
        if self.running or not period["rows"]:
            return None
        kinds = " and ".join(sorted(period["kinds"]))
        self.period = _new_period()
        seconds = time.monotonic() - period["start"]
        return (f"batch of {period['rows']} row{'s' if period['rows'] != 1 else ''} ({kinds}; continuous, at most "
                f"{period['peak']} at once): {period['steps']} decode steps in {seconds:.2f} s")


def _new_period() -> dict:
    return {"rows": 0, "steps": 0, "peak": 0, "kinds": set(), "start": None}
