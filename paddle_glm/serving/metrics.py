"""The server's Prometheus metrics (``GET /metrics``), named as vLLM names them.

One registry per server (not the process-wide default, so that servers in one process
and tests do not share counts). Text format and parsing come from ``prometheus_client``.
"""
from __future__ import annotations

import time
from typing import Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "vllm:"  # vLLM's names, so that its dashboards read these as they are
# seconds: from 1 ms to 2 minutes, vLLM's buckets thinned
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0, 120.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """Counters, gauges and histograms of one server, updated by the routes and the model thread.

    * ``vllm:request_success_total{status}``: answered requests by HTTP status code;
    * ``vllm:prompt_tokens_total`` and ``vllm:generation_tokens_total``;
    * ``vllm:num_requests_running`` (rows in the running batch) and ``vllm:num_requests_waiting``;
    * ``vllm:time_to_first_token_seconds``, ``vllm:time_per_output_token_seconds`` and
      ``vllm:e2e_request_latency_seconds``: histograms over finished rows.
    """

    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        labels = dict(labelnames=["model_name"], registry=self.registry)
        self.requests = Counter(PREFIX + "request_success", "Requests answered, by HTTP status code",
                                labelnames=["model_name", "status"], registry=self.registry)
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens of the rows run", **labels)
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Tokens generated", **labels)
        self.running = Gauge(PREFIX + "num_requests_running", "Rows in the running batch", **labels)
        self.waiting = Gauge(PREFIX + "num_requests_waiting", "Rows (and fill jobs) waiting in the queue", **labels)
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds", "Seconds from arrival to the first token",
                              buckets=LATENCY_BUCKETS, **labels)
        self.tpot = Histogram(PREFIX + "time_per_output_token_seconds", "Seconds per token after the first",
                              buckets=LATENCY_BUCKETS, **labels)
        self.e2e = Histogram(PREFIX + "e2e_request_latency_seconds", "Seconds from arrival to the last token",
                             buckets=LATENCY_BUCKETS, **labels)
        self.model_name = model_name

    def request_answered(self, status: int) -> None:
        self.requests.labels(self.model_name, str(status)).inc()

    def queue(self, running: int, waiting: int) -> None:
        self.running.labels(self.model_name).set(running)
        self.waiting.labels(self.model_name).set(waiting)

    def row_finished(self, row, first_token: Optional[float], completion_tokens: int) -> None:
        """A row is done: its tokens and latencies (``row.arrived``/``first_token`` are ``time.monotonic()``)."""
        now = time.monotonic()
        self.prompt_tokens.labels(self.model_name).inc(row.prompt_tokens)
        self.generation_tokens.labels(self.model_name).inc(completion_tokens)
        self.e2e.labels(self.model_name).observe(now - row.arrived)
        if first_token is not None:
            self.ttft.labels(self.model_name).observe(first_token - row.arrived)
            if completion_tokens > 1:
                self.tpot.labels(self.model_name).observe((now - first_token) / (completion_tokens - 1))

    def text(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)


class CountStatuses:
    """ASGI middleware: counts the status of every ``/v1/`` response in ``metrics`` (outermost, so that
    the body limit's and the API key's answers count too)."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.request_answered(message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)
