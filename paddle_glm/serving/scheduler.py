"""The request queue and the model thread, with two schedulers.

* :class:`ContinuousScheduler` (the default): waiting rows join the running batch before its next
  decode step, first come first served, into free cache slots, each prefilled and given its first
  token at once (:mod:`~paddle_glm.serving.engine`); a finished row frees its slot at once.
* :class:`Scheduler` (``--scheduler static``): waiting rows are run together as one ``generate``
  call, up to ``max_batch`` per batch; rows that arrive meanwhile wait for the whole batch.

Paddle runs one forward at a time, so a single worker thread owns the model; the
server's event loop only enqueues and reads results (through each row's sink).
The queue is bounded: ``submit`` raises :class:`QueueFull` when it holds
``max_queue`` rows (the server answers 429). A ``/v1/fill`` job runs alone.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, List, Optional, Sequence, Union

from ..errors import GLMError
from .rows import FillCancelled, Row, Sampling

log = logging.getLogger("paddle_glm.serve")
MAX_WINDOWS = 4  # the longest a waiting row is held for others: this many batching windows


class QueueFull(Exception):
    """The queue has no room for the request's rows."""


@dataclass
class FillJob:
    """A ``/v1/fill`` request: runs alone (its blanks are filled one after another)."""

    text: str
    max_tokens: int
    sampling: Sampling
    done: Callable[[Optional[tuple], Optional[tuple]], None]  # (result, None) or (None, (status, message))
    arrived: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)


Job = Union[Row, FillJob]


class _ModelThread:
    """The bounded queue and the model thread's life; subclasses define ``_loop``."""

    def __init__(self, runner, max_batch: int, max_queue: int, metrics=None):
        if max_batch < 1 or max_queue < 1:
            raise GLMError(f"max_batch and max_queue must be >= 1, got {max_batch}, {max_queue}")
        self.runner = runner
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.metrics = metrics
        self._pending: Deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="paddle-glm-model", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue a request's rows (or one fill job) together, or raise :class:`QueueFull`."""
        with self._cond:
            if len(self._pending) + len(jobs) > self.max_queue:
                raise QueueFull(f"the server's queue is full ({len(self._pending)} of {self.max_queue} rows waiting): "
                                "retry later")
            self._pending.extend(jobs)
            self._cond.notify_all()

    def _loop(self) -> None:
        raise NotImplementedError

    def _drop_cancelled_head(self) -> None:
        while self._pending and self._pending[0].cancelled.is_set():
            self._pending.popleft()  # its client went away while it waited

    def _report(self, running: int) -> None:
        if self.metrics is not None:
            self.metrics.queue(running, len(self._pending))

    def _run_fill(self, job: FillJob) -> None:
        start = time.perf_counter()
        try:
            result = self.runner.fill(job.text, job.max_tokens, job.sampling, job.cancelled)
        except FillCancelled as e:
            log.info("fill stopped after %d tokens in %.2f s: its client left", e.tokens, time.perf_counter() - start)
            return
        except GLMError as e:
            job.done(None, (400, str(e)))
            return
        except Exception as e:  # noqa: BLE001
            log.exception("fill failed")
            job.done(None, (500, str(e) or type(e).__name__))
            return
        log.info("fill of %d blanks: %d tokens in %.2f s", len(result[1]), result[2], time.perf_counter() - start)
        job.done(result, None)


class Scheduler(_ModelThread):
    """The static scheduler: batches waiting rows onto a runner
    (:class:`~paddle_glm.serving.runner.ModelRunner` or a stand-in).

    Args:
        runner: has ``complete(rows) -> BatchStats`` and ``fill(text, max_tokens, sampling, cancelled)``
            (``cancelled``: the job's event; the fill raises ``FillCancelled`` once it is set).
        max_batch: most rows per ``generate`` call.
        max_queue: most rows waiting (a request with a list of prompts counts each).
        window: while fewer than ``max_batch`` rows wait, the model thread starts a batch only once
            no row has arrived for this many seconds (or one decode step of the last batch, if
            longer) since it became free, and at most ``MAX_WINDOWS`` windows after it became free
            or the oldest row arrived.
    """

    def __init__(self, runner, max_batch: int = 8, max_queue: int = 64, window: float = 0.02, metrics=None):
        super().__init__(runner, max_batch, max_queue, metrics)
        if window < 0:
            raise GLMError(f"the batching window must be >= 0, got {window}")
        self.window = window
        self.history: Deque = deque(maxlen=1000)  # BatchStats of the latest batches
        self._free_since = 0.0  # when the model thread last finished a batch
        self._last_step = 0.0  # seconds per decode step of the last batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._report(len(batch))
            if isinstance(batch[0], FillJob):
                self._run_fill(batch[0])
            else:
                self._run_rows(batch)
            self._free_since = time.monotonic()
            self._report(0)

    def _next_batch(self) -> Optional[List[Job]]:
        """The oldest job and the waiting rows that may share its batch (None: stopping)."""
        with self._cond:
            while True:
                self._drop_cancelled_head()
                if self._stopping:
                    return None
                if not self._pending:
                    self._cond.wait()
                    continue
                # Gather while requests keep arriving, counting from when the model became free: the
                # clients of the batch that just ended come back one by one, and a request that waited
                # through that batch should not leave without them (the clients would split into
                # batches that alternate for good). A window of one decode step costs little next to
                # the steps of a whole request.
                window = max(self.window, self._last_step)
                since = max(self._free_since, self._pending[0].arrived)
                deadline = min(since + MAX_WINDOWS * window, max(self._free_since, self._pending[-1].arrived) + window)
                wait = deadline - time.monotonic()
                if len(self._pending) < self.max_batch and wait > 0:
                    self._cond.wait(wait)
                    continue
                return self._take()

    def _take(self) -> List[Job]:
        first = self._pending.popleft()
        key = None if isinstance(first, FillJob) else first.sampling.batch_key()
        batch, rest = [first], deque()
        while self._pending and key is not None and len(batch) < self.max_batch:
            job = self._pending.popleft()
            if isinstance(job, Row) and job.sampling.batch_key() == key and not job.cancelled.is_set():
                batch.append(job)
            elif not job.cancelled.is_set():
                rest.append(job)
        rest.extend(self._pending)
        self._pending = rest
        return batch

    def _run_rows(self, rows: List[Row]) -> None:
        start = time.perf_counter()
        try:
            stats = self.runner.complete(rows)
        except Exception as e:  # noqa: BLE001 - a failed batch fails its requests, never the server
            log.exception("batch of %s failed", _rows(len(rows)))
            for row in rows:
                row.sink.fail(400 if isinstance(e, GLMError) else 500, str(e) or type(e).__name__)
            return
        self.history.append(stats)
        self._last_step = stats.step_seconds or 0.0
        kind = "greedy" if rows[0].sampling.greedy else "sampling"
        step = f", {stats.step_seconds * 1000:.1f} ms per decode step" if stats.step_seconds else ""
        dropped = f", {_rows(stats.cancelled)} dropped (client gone)" if stats.cancelled else ""
        log.info("batch of %s (%s): %d steps in %.2f s%s%s", _rows(len(rows)), kind, stats.steps,
                 time.perf_counter() - start, step, dropped)


class ContinuousScheduler(_ModelThread):
    """Continuous batching: before each decode step, waiting rows join the running batch
    (first come, first served) while it has free slots, each prefilled and given its first token at
    once; rows that arrive during those prefills join too, up to ``max_batch`` rows between two
    decode steps of the running rows. A finished row leaves at once.

    Args:
        runner: a :class:`~paddle_glm.serving.runner.ModelRunner` (prompt lengths, fill jobs).
        batch: the :class:`~paddle_glm.serving.engine.SlotBatch` of ``max_batch`` cache slots.
        max_queue: most rows waiting.
        metrics: a :class:`~paddle_glm.serving.metrics.ServerMetrics` to keep up to date, or None.

    A fill job at the head of the queue waits until the running rows have finished, then runs
    alone (its blanks are filled one after another); rows behind it wait (first come, first served).
    """

    def __init__(self, runner, batch, max_queue: int = 64, metrics=None):
        super().__init__(runner, len(batch.slots), max_queue, metrics)
        self.batch = batch
        self._admitted = 0  # rows admitted since the running rows' last decode step

    def _loop(self) -> None:
        while True:
            work = self._next_work()
            if work is None:
                return
            if isinstance(work, FillJob):
                self._report(1)  # the fill runs alone
                self._run_fill(work)
                self._report(0)
                continue
            try:
                self.batch.step(work)
            except Exception as e:  # noqa: BLE001 - a failed step fails its rows, never the server
                log.exception("decode step failed")
                self.batch.fail_all(500, str(e) or type(e).__name__, work)
            self._report(self.batch.running)
            line = self.batch.finished_period()
            if line:
                log.info(line)

    def _next_work(self):
        """The rows joining at this step (maybe none), a fill job to run alone, or None: stopping."""
        with self._cond:
            while True:
                self._drop_cancelled_head()
                if self._stopping:
                    return None
                if self._pending and isinstance(self._pending[0], FillJob):
                    if not self.batch.running:
                        return self._pending.popleft()
                    self._admitted = 0
                    return []  # the running rows finish first
                joining = self._joining()
                if joining or self.batch.running:
                    self._admitted = self._admitted + len(joining) if joining else 0
                    return joining
                self._report(0)
                self._cond.wait()

    def _joining(self) -> List[Row]:
        """The waiting rows that join now, first come first served, into free slots; none once ``max_batch``
        rows have joined since the running rows' last decode step (rows that end at their first token free
        their slot at once, so a stream of them must not stall the running rows for good)."""
        joining: List[Row] = []
        if not self.batch.running:
            self._admitted = 0
        elif self._admitted >= len(self.batch.slots):
            return joining
        while self._pending and isinstance(self._pending[0], Row) and len(joining) < self.batch.free:
            row = self._pending.popleft()
            if not row.cancelled.is_set():
                joining.append(row)
        return joining


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"
