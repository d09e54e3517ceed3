"""``paddle-glm serve`` on a free local port with the demo model, through the official ``openai`` client and
plain HTTP: results equal the CLI's and sequential greedy runs, batching, errors, the API key, the queue
bound and disconnects."""
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from conftest import randomized  # noqa: E402

from paddle_glm import GLMChineseTokenizer, GLMForConditionalGeneration  # noqa: E402
from paddle_glm.cli import main as cli_main  # noqa: E402
from paddle_glm.demo_cases import DEMO_CASES, DEMO_MODEL_DIR  # noqa: E402
from paddle_glm.serving.app import create_app  # noqa: E402
from paddle_glm.serving.engine import SlotBatch  # noqa: E402
from paddle_glm.serving.metrics import ServerMetrics  # noqa: E402
from paddle_glm.serving.rows import BatchFinished, BatchStreamer  # noqa: E402
from paddle_glm.serving.runner import BatchStats, ModelRunner  # noqa: E402
from paddle_glm.serving.scheduler import ContinuousScheduler, Scheduler  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tools" / "corpus" / "zh_corpus.txt"
API_KEY = "test-key-123"
MAX_BODY = 65536


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m paddle_glm serve MODEL`` (default: the demo model) on a free port, its log in a file."""

    def __init__(self, log_path: Path, *flags: str, model_dir: Path = DEMO_MODEL_DIR):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "paddle_glm", "serve", str(model_dir), "--port", str(self.port), *flags],
                stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONWARNINGS="ignore"))

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the server exited:\n{self.log()}"
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the server did not start in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def readme_section() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8").split("## Serving", 1)[1].split("\n## ", 1)[0]


def readme_commands(program: str):
    blocks = re.findall(r"```bash\n(.*?)```", readme_section(), flags=re.S)
    return [shlex.split(line.split("  #")[0]) for block in blocks for line in block.splitlines()
            if line.startswith(program)]


def readme_serve_flags():
    """The flags of the README's ``paddle-glm serve MODEL_DIR ...`` (its port replaced by a free one)."""
    argv = readme_commands("paddle-glm serve")[0]
    assert argv[:3] == ["paddle-glm", "serve", "MODEL_DIR"] and argv[3:5] == ["--port", "8000"]
    return argv[5:]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The README's server (with a small body limit) and one with an API key, started side by side."""
    logs = tmp_path_factory.mktemp("serve_logs")
    plain = ServerProcess(logs / "plain.log", *readme_serve_flags(), "--max-body-bytes", str(MAX_BODY))
    keyed = ServerProcess(logs / "keyed.log", "--api-key", API_KEY)
    try:
        plain.wait_ready()
        keyed.wait_ready()
        yield plain, keyed
    finally:
        plain.stop()
        keyed.stop()
    assert "Traceback" not in plain.log() + keyed.log()


@pytest.fixture(scope="module")
def server(servers):
    return servers[0]


@pytest.fixture(scope="module")
def demo():
    model = GLMForConditionalGeneration.from_pretrained(str(DEMO_MODEL_DIR), show_progress=False)
    return model, GLMChineseTokenizer.from_pretrained(str(DEMO_MODEL_DIR))


def alone(model, tokenizer, prompt: str, max_tokens: int) -> str:
    """The greedy span of one prompt run by itself with ``generate`` (as ``paddle-glm generate`` runs it)."""
    prompt = prompt if re.search(r"\[(s|g)?MASK\]", prompt) else prompt + "[gMASK]"
    inputs = tokenizer.build_inputs_for_generation(tokenizer(prompt, return_tensors="pd"), max_gen_length=max_tokens)
    banned = list(model.config.bad_words_id) + list(range(tokenizer.vocab_size, model.config.vocab_size))
    out = model.generate(**inputs, max_new_tokens=max_tokens, eos_token_id=tokenizer.eop_token_id,
                         bad_words_ids=banned)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    new = new[:new.index(tokenizer.eop_token_id)] if tokenizer.eop_token_id in new else new
    return tokenizer.decode(new, skip_special_tokens=True)


def good_request(url: str, **headers) -> None:
    response = httpx.post(url + "/v1/completions", json={"prompt": DEMO_CASES[0].text, "temperature": 0},
                          headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == DEMO_CASES[0].expected[0]


def test_openai_client_gets_the_fill_span_streamed_or_not(server, capsys):
    case = DEMO_CASES[0]
    assert cli_main(["fill", str(DEMO_MODEL_DIR), case.text]) == 0
    span = capsys.readouterr().out.splitlines()[1].removeprefix("[1] ")
    assert span == case.expected[0]

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["demo_model"]
    answer = client.completions.create(model="demo_model", prompt=case.text, temperature=0, max_tokens=64)
    assert answer.choices[0].text == span and answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens == len(GLMChineseTokenizer.from_pretrained(str(DEMO_MODEL_DIR)).encode(
        span, add_special_tokens=False)) + 1  # + <|endofpiece|>
    chunks = list(client.completions.create(model="demo_model", prompt=case.text, temperature=0, max_tokens=64,
                                            stream=True))
    assert len(chunks) > 2 and "".join(c.choices[0].text for c in chunks) == span
    assert chunks[-1].choices[0].finish_reason == "stop"
    with httpx.stream("POST", server.url + "/v1/completions", timeout=30,
                      json={"prompt": case.text, "temperature": 0, "stream": True}) as response:
        events = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    assert "".join(json.loads(e[6:])["choices"][0]["text"] for e in events[:-1]) == span


def test_concurrent_clients_get_their_sequential_greedy_answers_in_batches(server, demo):
    lines = [line.strip() for line in CORPUS.read_text(encoding="utf-8").splitlines() if len(line.strip()) > 12]
    prompts = []
    for i, line in enumerate(lines[::len(lines) // 16][:16]):
        # a [MASK] over two characters, or the first half of the line to continue ([gMASK] appended)
        prompts.append(line[:3 + i % 5] + "[MASK]" + line[5 + i % 5:] if i % 2 else line[:len(line) // 2])
    max_tokens = [6 + 5 * (i % 4) for i in range(16)]
    expected = [alone(*demo, p, n) for p, n in zip(prompts, max_tokens)]
    assert len(set(expected)) > 8  # different answers: rows cannot pass for one another

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    start = threading.Barrier(16)
    answers = [None] * 16
    before = len(server.log())

    def ask(i):
        start.wait()
        if i % 3 == 0:
            chunks = client.completions.create(model="m", prompt=prompts[i], temperature=0, max_tokens=max_tokens[i],
                                               stream=True)
            answers[i] = "".join(c.choices[0].text for c in chunks if c.choices)
        else:
            answers[i] = client.completions.create(model="m", prompt=prompts[i], temperature=0,
                                                   max_tokens=max_tokens[i]).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == expected
    deadline = time.monotonic() + 20  # a batch's log line follows its rows' answers (they leave it as they finish)
    while True:
        sizes = [int(n) for n in re.findall(r"batch of (\d+) rows? \(greedy[;)]", server.log()[before:])]
        if sum(sizes) >= 16 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sum(sizes) == 16 and max(sizes) > 1 and len(sizes) < 16, sizes


def test_bad_inputs_get_openai_errors_and_the_server_goes_on(server):
    url = server.url + "/v1/completions"
    good = {"prompt": "x[MASK]"}
    cases = [
        (dict(content=b"{not json"), 400, None),
        (dict(content=b"\xff\xfe\x00"), 400, None),
        (dict(content=b"[" * 50000), 400, None),
        (dict(json=[1, 2]), 400, None),
        (dict(json={"max_tokens": 5}), 400, "prompt"),
        (dict(json={"prompt": 5}), 400, "prompt"),
        (dict(json={**good, "max_tokens": 0}), 400, "max_tokens"),
        (dict(json={**good, "max_tokens": 257}), 400, "max_tokens"),  # the demo model has 257 positions
        (dict(json={**good, "max_tokens": "many"}), 400, "max_tokens"),
        (dict(json={**good, "temperature": -0.5}), 400, "temperature"),
        (dict(json={**good, "temperature": 2.5}), 400, "temperature"),
        (dict(json={**good, "top_p": 0}), 400, "top_p"),
        (dict(json={**good, "top_p": 1.5}), 400, "top_p"),
        (dict(json={"prompt": "长" * 300}), 400, "prompt"),  # longer than the position table
        (dict(json={"prompt": ["ok[MASK]", "长" * 300]}), 400, "prompt"),
        (dict(json={"prompt": "长" * MAX_BODY}), 400, None),
        (dict(content=iter([b'{"prompt": "', "长".encode() * MAX_BODY, b'"}'])), 400, None),  # chunked, no length
    ]
    for kwargs, status, param in cases:
        response = httpx.post(url, timeout=30, **kwargs)
        assert response.status_code == status, (kwargs.keys(), response.text)
        error = response.json()["error"]
        assert set(error) >= {"message", "type", "param"} and error["param"] == param, error
        assert error["message"] and error["type"] == "invalid_request_error"
        good_request(server.url)
    assert httpx.post(server.url + "/v1/fill", json={"text": "no blank here"}, timeout=30).status_code == 400
    assert httpx.get(server.url + "/v1/nothing", timeout=30).json()["error"]["message"]


def test_api_key(servers):
    keyed = servers[1]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        response = httpx.post(keyed.url + "/v1/completions", json={"prompt": "x[MASK]"}, headers=headers, timeout=30)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        good_request(keyed.url, Authorization=f"Bearer {API_KEY}")
    assert httpx.get(keyed.url + "/v1/models", timeout=30).status_code == 401
    assert httpx.get(keyed.url + "/health", timeout=30).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong").completions.create(model="m", prompt="x")
    answer = openai.OpenAI(base_url=keyed.url + "/v1", api_key=API_KEY).completions.create(
        model="m", prompt=DEMO_CASES[1].text, temperature=0)
    assert answer.choices[0].text == DEMO_CASES[1].expected[0]


def test_fill_endpoint_fills_every_blank(server):
    case = DEMO_CASES[4]
    response = httpx.post(server.url + "/v1/fill", json={"text": case.text}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["spans"] == list(case.expected)
    first, second = case.expected
    assert response.json()["text"] == case.text.replace("[MASK]", first, 1).replace("[MASK]", second)


def test_readme_requests_run(server):
    """The README's curl commands, against the README's server (on another port)."""
    commands = readme_commands("curl ")
    assert len(commands) >= 3
    for argv in commands:
        argv = [arg.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}") for arg in argv]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().endswith("data: [DONE]") or "error" not in json.loads(out.stdout), out.stdout


# ---- in-process servers with a stand-in runner: the queue bound and disconnects -----------------------------

class SlowRunner(ModelRunner):
    """Stands in for the model: one token every 20 ms through the real BatchStreamer, after ``gate`` opens."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.position_rows = 257
        self.gate, self.started, self.steps = threading.Event(), threading.Event(), []
        self.gate.set()

    def complete(self, rows):
        self.started.set()
        self.gate.wait(30)
        streamer = BatchStreamer(rows, self.tokenizer)
        token = self.tokenizer.encode("河", add_special_tokens=False)[0]
        try:
            for _ in range(max(row.max_tokens for row in rows)):
                time.sleep(0.02)
                streamer.put(np.full([len(rows)], token))
            streamer.end()
        except BatchFinished:
            pass
        self.steps.append(len(streamer.step_times))
        return BatchStats(len(rows), len(streamer.step_times), None, streamer.cancelled())


@contextmanager
def in_process(runner, app_options=None, scheduler=None, **scheduler_args):
    port = free_port()
    app = create_app(scheduler or Scheduler(runner, **scheduler_args), "slow", **(app_options or {}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_a_full_queue_answers_429(demo):
    runner = SlowRunner(demo[1])
    runner.gate.clear()
    with in_process(runner, max_batch=1, max_queue=1, window=0) as url:
        results = {}

        def post(name):
            results[name] = httpx.post(url + "/v1/completions", json={"prompt": "x[MASK]", "max_tokens": 2},
                                       timeout=30)

        first = threading.Thread(target=post, args=("running",))
        first.start()
        assert runner.started.wait(10)  # the first request left the queue for the model
        others = [threading.Thread(target=post, args=(name,)) for name in ("b", "c")]
        for t in others:
            t.start()
        assert wait_for(lambda: len(results) == 1)  # one of them waits in the queue, the other is refused
        refused = next(iter(results.values()))
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
        runner.gate.set()
        for t in [first, *others]:
            t.join(30)
        assert sorted(r.status_code for r in results.values()) == [200, 200, 429]


def test_a_client_that_disconnects_stops_costing_compute(demo):
    """All rows of the batch gone: generation stops (row dropping inside a running batch is the decode loop's
    job, through ``BatchStreamer.active_rows``; tests/test_serve_rows.py checks that contract)."""
    runner = SlowRunner(demo[1])
    with in_process(runner, max_batch=4, window=0) as url:
        with httpx.stream("POST", url + "/v1/completions", timeout=30,
                          json={"prompt": "x[MASK]", "max_tokens": 250, "stream": True}) as response:
            first = next(line for line in response.iter_lines() if line.startswith("data: "))
        assert json.loads(first[6:])["choices"][0]["text"] == "河"
        assert wait_for(lambda: len(runner.steps) == 1)
        with pytest.raises(httpx.ReadTimeout):  # a non-streaming client that gives up
            httpx.post(url + "/v1/completions", json={"prompt": "x[MASK]", "max_tokens": 250}, timeout=0.5)
        assert wait_for(lambda: len(runner.steps) == 2)
    assert all(steps < 60 for steps in runner.steps), runner.steps  # of 250 (5 s)


@pytest.mark.parametrize("scheduler_kind", ["static", "continuous"])
def test_a_fill_whose_client_leaves_stops_at_its_next_step(demo, scheduler_kind):
    """``/v1/fill`` on a real model (the demo's shape and tokenizer, random weights: each span runs to its
    max_tokens) whose forward takes >= 20 ms: a client that gives up after 0.5 s stops the fill at its next
    decode step, and the model thread then serves the next request. ``vllm:num_requests_running`` is 1 while
    the fill runs and 0 once it stopped."""
    model = randomized(GLMForConditionalGeneration(demo[0].config), seed=5, spread=True)
    forwards, running = [], []
    metrics = ServerMetrics("slow")
    gauge = lambda: metrics.registry.get_sample_value("vllm:num_requests_running", {"model_name": "slow"})  # noqa: E731

    def slow(layer, inputs, output):
        forwards.append(time.monotonic())
        running.append(gauge())
        time.sleep(0.02)

    model.glm.transformer.layers[0].register_forward_post_hook(slow)  # every forward and decode step
    runner = ModelRunner(model, demo[1])
    scheduler = (ContinuousScheduler(runner, SlotBatch(model, demo[1], 2), metrics=metrics)
                 if scheduler_kind == "continuous" else Scheduler(runner, max_batch=2, window=0, metrics=metrics))
    with in_process(runner, scheduler=scheduler) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/fill", json={"text": "天[MASK]地[MASK]", "max_tokens": 100}, timeout=0.5)
        assert wait_for(lambda: forwards and time.monotonic() - forwards[-1] > 1.0)  # the model went quiet
        stopped = len(forwards)
        assert 0 < stopped < 60, stopped  # of >= 200 forwards for 2 blanks x 100 tokens (>= 4 s)
        assert forwards[-1] - forwards[0] > 0.4  # it was still running when the client left (0.5 s)
        assert set(running) == {1} and wait_for(lambda: gauge() == 0), (set(running), gauge())
        response = httpx.post(url + "/v1/completions", json={"prompt": "天[MASK]", "max_tokens": 2}, timeout=30)
        assert response.status_code == 200 and len(forwards) > stopped


def test_bad_serve_flags_are_one_line_errors(tmp_path):
    from test_cli import assert_one_line_error, run_cli

    assert_one_line_error(*run_cli("serve", str(tmp_path / "missing"))[::2], "missing")
    assert_one_line_error(*run_cli("serve", str(DEMO_MODEL_DIR), "--max-batch", "0")[::2], "--max-batch")
    assert_one_line_error(*run_cli("serve", str(DEMO_MODEL_DIR), "--port", "70000")[::2], "--port")
