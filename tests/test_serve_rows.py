"""Serving internals without HTTP: a row's text and stop strings, the batch streamer's routing and row
dropping, the scheduler's grouping, and a disconnected row stopping the real model's decode loop."""
import threading

import numpy as np
import pytest

pytest.importorskip("fastapi")

from paddle_glm import GLMChineseTokenizer, GLMForConditionalGeneration  # noqa: E402
from paddle_glm.demo_cases import DEMO_MODEL_DIR  # noqa: E402
from paddle_glm.serving.rows import BatchFinished, BatchStreamer, Row, RowText, Sampling, Sink  # noqa: E402
from paddle_glm.serving.runner import BatchStats, ModelRunner  # noqa: E402
from paddle_glm.serving.scheduler import FillJob, QueueFull, Scheduler  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return GLMChineseTokenizer.from_pretrained(str(DEMO_MODEL_DIR))


class Recorder(Sink):
    """Collects a row's events; ``cancel_after`` tokens' worth of text cancels the row (a client leaving)."""

    def __init__(self, cancel_after=None):
        self.texts, self.finished, self.errors, self.row = {}, {}, [], None
        self.cancel_after = cancel_after

    def text(self, index, delta):
        self.texts[index] = self.texts.get(index, "") + delta
        if self.cancel_after is not None and len(self.texts[index]) >= self.cancel_after:
            self.row.cancelled.set()

    def finish(self, index, reason, completion_tokens):
        self.finished[index] = (reason, completion_tokens)

    def fail(self, status, message):
        self.errors.append((status, message))


DEFAULT_SAMPLING = Sampling()


def make_row(prompt="x[MASK]", max_tokens=8, stop=(), sampling=DEFAULT_SAMPLING, sink=None, index=0):
    sink = sink or Recorder()
    row = Row(prompt, 3, max_tokens, stop, sampling, sink, index)
    sink.row = row
    return row


def ids(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def test_row_text_holds_back_a_possible_stop_string_and_cuts_at_it(tokenizer):
    text = RowText(tokenizer, max_tokens=50, stop=["风雨声"])
    sent = [text.add(t) for t in ids(tokenizer, "夜来风雨")]
    assert "".join(sent) == "夜来" and text.finish_reason is None  # "风雨" may begin "风雨声"
    assert text.add(ids(tokenizer, "声")[0]) == "" and text.finish_reason == "stop"
    other = RowText(tokenizer, max_tokens=50, stop=["风雨声"])
    sent = [other.add(t) for t in ids(tokenizer, "夜来风雨，")]
    assert "".join(sent) == "夜来风雨，"  # released once it cannot be the stop string


def test_row_text_ends_at_endofpiece_or_max_tokens(tokenizer):
    text = RowText(tokenizer, max_tokens=50, stop=[])
    assert "".join(text.add(t) for t in ids(tokenizer, "黄河")) == "黄河"
    assert text.add(tokenizer.eop_token_id) == "" and text.finish_reason == "stop_token"
    assert text.completion_tokens == len(ids(tokenizer, "黄河")) + 1
    short = RowText(tokenizer, max_tokens=2, stop=[])
    two = ids(tokenizer, "黄河入海")[:2]
    assert "".join(short.add(t) for t in two) == tokenizer.decode(two)
    assert short.finish_reason == "length"


def test_streamer_routes_rows_and_stops_when_no_row_is_left(tokenizer):
    a, b = make_row(max_tokens=2, index=0), make_row(max_tokens=3, index=1)
    streamer = BatchStreamer([a, b], tokenizer)
    he, huang, ru = ids(tokenizer, "河黄入")
    streamer.put(np.array([he, huang]))
    streamer.put(np.array([he, huang]))  # row a reaches its max_tokens
    assert a.sink.finished == {0: ("length", 2)} and not b.sink.finished
    assert streamer.active_rows() == [False, True]
    with pytest.raises(BatchFinished):
        streamer.put(np.array([ru, tokenizer.eop_token_id]))  # row b ends; a's token is ignored
    assert a.sink.texts[0] == "河河" and b.sink.texts[1] == "黄黄" and b.sink.finished == {1: ("stop", 3)}


def test_streamer_follows_a_loop_that_drops_inactive_rows(tokenizer):
    """The contract for a decode loop that compacts the batch: after ``active_rows()``, ``put`` gets
    only the rows it marked True, in order."""
    rows = [make_row(max_tokens=10, index=i) for i in range(3)]
    streamer = BatchStreamer(rows, tokenizer)
    x, y = ids(tokenizer, "河海")
    streamer.put(np.array([x, x, x]))
    rows[1].cancelled.set()  # the client of row 1 went away
    assert streamer.active_rows() == [True, False, True]
    streamer.put(np.array([y, y]))  # the loop dropped row 1
    assert [r.sink.texts[i] for i, r in enumerate(rows)] == ["河海", "河", "河海"]
    assert streamer.active_rows() == [True, True]
    assert streamer.cancelled() == 1


class GroupingRunner:
    """Records the batches the scheduler forms, without a model."""

    def __init__(self):
        self.batches, self.gate = [], threading.Event()

    def complete(self, rows):
        self.gate.wait(10)
        self.batches.append([row.prompt for row in rows])
        for row in rows:
            row.sink.finish(row.index, "stop", 0)
        return BatchStats(len(rows), 0, None, 0)

    def fill(self, text, max_tokens, sampling, cancelled=None):
        self.batches.append([text])
        return text, [], 0


def test_scheduler_groups_compatible_rows_and_bounds_the_queue():
    runner = GroupingRunner()
    runner.gate.set()
    scheduler = Scheduler(runner, max_batch=3, max_queue=8, window=0)
    greedy, warm, seeded = Sampling(), Sampling(temperature=0.7), Sampling(temperature=0.7, seed=1)
    jobs = [make_row(f"g{i}", sampling=greedy) for i in range(4)] + [
        make_row("s0", sampling=warm), make_row("seeded", sampling=seeded), make_row("s1", sampling=warm),
        FillJob("fill", 4, greedy, lambda result, error: None)]
    jobs[2].cancelled.set()  # its client left while it waited: never run
    scheduler.submit(jobs)
    with pytest.raises(QueueFull):
        scheduler.submit([make_row("over")])
    scheduler.start()
    for _ in range(200):
        if sum(map(len, runner.batches)) == 7:
            break
        threading.Event().wait(0.02)
    scheduler.stop()
    assert runner.batches == [["g0", "g1", "g3"], ["s0", "s1"], ["seeded"], ["fill"]]


SPRING = "《春晓》孟浩然：春眠不觉晓，[gMASK]"  # the demo model continues it with 18 tokens


@pytest.fixture(scope="module")
def model():
    return GLMForConditionalGeneration.from_pretrained(str(DEMO_MODEL_DIR), show_progress=False)


def test_a_cancelled_row_stops_the_real_decode_loop(tokenizer, model):
    runner = ModelRunner(model, tokenizer)
    prompt = SPRING
    whole = make_row(prompt, max_tokens=64)
    full = runner.complete([whole])
    assert whole.sink.texts[0] == "处处闻啼鸟。夜来风雨声，花落知多少。" and full.steps >= 15
    leaving = make_row(prompt, max_tokens=64, sink=Recorder(cancel_after=2))
    stats = runner.complete([leaving])
    assert stats.steps == 2 and stats.cancelled == 1 and not leaving.sink.finished


def test_a_cancelled_row_is_dropped_from_a_running_batch(tokenizer, model):
    leaving = make_row(SPRING, max_tokens=64, sink=Recorder(cancel_after=2), index=0)
    staying = make_row(SPRING, max_tokens=64, index=1)
    batch = tokenizer([SPRING, SPRING], padding=True, return_tensors="pd")
    inputs = tokenizer.build_inputs_for_generation(batch, max_gen_length=64)
    streamer = BatchStreamer([leaving, staying], tokenizer)
    with pytest.raises(BatchFinished):
        model.generate(**inputs, max_new_tokens=64, eos_token_id=tokenizer.eop_token_id, streamer=streamer)
    assert staying.sink.texts[1] == "处处闻啼鸟。夜来风雨声，花落知多少。"
    assert streamer.live == [1]  # the loop dropped row 0 and fed only row 1 afterwards


def test_the_first_token_is_sent_even_when_its_text_is_held_back(tokenizer):
    """A byte that starts no character (text held back, "") is still sent as the row's first event; later held-back
    tokens send nothing; the first token's text goes as it is; a first token that ends the row sends only the finish."""
    from paddle_glm.serving.rows import RowProgress

    byte = tokenizer.convert_tokens_to_ids("<0xC0>")
    sink = EventLog()
    progress = RowProgress(Row("x[gMASK]", 3, 4, (), Sampling(), sink), tokenizer)
    progress.add(byte)
    progress.add(byte)
    assert sink.events == [("text", "")] and progress.first_token is not None
    word = tokenizer.convert_tokens_to_ids("春")
    sink = EventLog()
    RowProgress(Row("x[gMASK]", 3, 4, (), Sampling(), sink), tokenizer).add(word)
    assert sink.events == [("text", "春")]
    sink = EventLog()
    RowProgress(Row("x[gMASK]", 3, 4, (), Sampling(), sink), tokenizer).add(tokenizer.eop_token_id)
    assert sink.events == [("finish", "stop")]


class EventLog(Sink):
    def __init__(self):
        self.events = []

    def text(self, index, delta):
        self.events.append(("text", delta))

    def finish(self, index, reason, completion_tokens):
        self.events.append(("finish", reason))
