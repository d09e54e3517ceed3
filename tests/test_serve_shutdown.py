"""``paddle-glm serve`` against bad clients: a lone surrogate and more prompts than the queue can hold are
400s, a stalled body is a 408, and SIGTERM ends the server within its grace period even while a client
holds a half-sent body (real server, real sockets)."""
import asyncio
import re
import signal
import socket
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from process_tree import ROOT, assert_nothing_left, cli, kill_tree, stop, tree_env  # noqa: E402

from paddle_glm.serving.middleware import BodyLimit  # noqa: E402

DEMO = str(ROOT / "paddle_glm" / "demo_model")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _half_sent_body(port: int) -> socket.socket:
    """A client that announces 1000 bytes of body and sends 10."""
    client = socket.create_connection(("127.0.0.1", port))
    client.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 1000\r\n\r\n{\"prompt\":")
    return client


def _wait_ready(url: str, process, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not start")


def test_bad_prompts_are_400s_and_sigterm_ends_a_held_server(tmp_path):
    import subprocess

    port, env = _free_port(), tree_env(tmp_path)
    log = tmp_path / "log"
    with open(log, "w") as f:
        server = subprocess.Popen(cli("serve", DEMO, "--port", str(port), "--max-queue", "64", "--shutdown-grace", "2"),
                                  env=env, stdout=f, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, server)
        surrogate = httpx.post(url + "/v1/completions", content=b'{"prompt": "\\ud800abc", "max_tokens": 2}',
                               timeout=30)
        assert surrogate.status_code == 400, surrogate.text
        assert "prompt: holds '\\ud800'" in surrogate.json()["error"]["message"]
        many = httpx.post(url + "/v1/completions", json={"prompt": ["x"] * 1000, "max_tokens": 2}, timeout=30)
        assert many.status_code == 400, many.text
        assert "1000 prompts, more than the server's queue holds (64" in many.json()["error"]["message"]
        assert httpx.post(url + "/v1/completions", json={"prompt": "北京[MASK]", "max_tokens": 2},
                          timeout=60).status_code == 200
        held = _half_sent_body(port)
        time.sleep(0.5)
        code, seconds = stop(server, signal.SIGTERM, env)
        held.close()
    finally:
        kill_tree(server, env)
    text = log.read_text(errors="replace")
    assert code == 143 and seconds < 2 + 5, text  # the grace, then the model thread's stop
    assert text.rstrip().splitlines()[-1] == "paddle-glm serve: stopped by SIGTERM"
    assert "Traceback" not in text and "FatalError" not in text
    assert_nothing_left(env)


def _read_response(client):
    """The whole HTTP response: headers and body can arrive in separate packets."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _content_length(data):
        chunk = client.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode()


def _content_length(data):
    found = re.search(rb"content-length: *(\d+)", data, re.IGNORECASE)
    return int(found.group(1)) if found else 0


def test_a_stalled_body_gets_408():
    async def app(scope, receive, send):  # never reached: the body does not arrive
        raise AssertionError("the app saw a stalled body")

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(BodyLimit(app, 1 << 20, read_timeout=0.5), port=port, log_level="error"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        client = _half_sent_body(port)
        client.settimeout(10)
        start = time.time()
        answer = _read_response(client)
        client.close()
    finally:
        server.should_exit = True
        thread.join(10)
    assert answer.startswith("HTTP/1.1 408") and "stopped arriving for 0.5 s" in answer
    assert time.time() - start < 5
