"""``paddle-glm serve``: an OpenAI-compatible completions server with batching, and a blank-filling page."""
from __future__ import annotations

import argparse
import logging
import os

from ..errors import GLMError
from .common import add_model_flags, info, load_model_and_tokenizer


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a model over HTTP (OpenAI completions subset, /v1/fill, a web page)",
        description="Serve MODEL_DIR over HTTP: POST /v1/completions (the OpenAI completions subset, streaming "
                    "with server-sent events), POST /v1/fill, GET /v1/models, GET /health, GET /metrics "
                    "(Prometheus) and a page at /. Requests join the running batch before its next decode step, "
                    "each prefilled and given its first token at once (continuous batching). Needs "
                    "the 'serve' extra: pip install 'paddle-glm[serve]'.")
    add_model_flags(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="most prompts decoded together (default 8); the continuous scheduler allocates a KV "
                             "cache of this many rows of the whole position table once, at startup")
    parser.add_argument("--scheduler", choices=("continuous", "static"), default="continuous",
                        help="continuous (default): requests join the running batch before its next decode step; "
                             "static: waiting requests run as one batch, and later ones wait for all of it")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="most prompts waiting; more get HTTP 429 (default 64)")
    parser.add_argument("--batch-window-ms", type=float, default=20.0,
                        help="static scheduler: a batch starts once no request has arrived for this long (at most 4 "
                             "times this after the oldest waiting request arrived; default 20)")
    parser.add_argument("--api-key", default=os.environ.get("PADDLE_GLM_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on /v1/ (default: $PADDLE_GLM_API_KEY, else none)")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20,
                        help="largest request body; larger ones get HTTP 400 (default 1 MiB)")
    parser.add_argument("--model-name", default=None, help="the model id in /v1/models (default: MODEL_DIR's name)")
    parser.add_argument("--shutdown-grace", type=float, default=10.0, metavar="SECONDS",
                        help="on SIGTERM/SIGINT, how long requests in flight may take to finish before they are "
                             "cancelled and the server exits (default 10)")
    parser.add_argument("--metrics-public", action="store_true",
                        help="serve /metrics without the API key (default: it needs the key when one is set)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serving.app import create_app
    except ImportError as e:
        raise GLMError(f"serve needs the 'serve' extra ({e.name} is missing): "
                       "pip install 'paddle-glm[serve]'") from None
    from ..serving.metrics import ServerMetrics

    if not 0 < args.port < 65536:
        raise GLMError(f"--port: expected 1..65535, got {args.port}")
    for flag, value, least in (("--max-batch", args.max_batch, 1), ("--max-queue", args.max_queue, 1),
                               ("--batch-window-ms", args.batch_window_ms, 0),
                               ("--max-body-bytes", args.max_body_bytes, 1),
                               ("--shutdown-grace", args.shutdown_grace, 0)):
        if not value >= least:  # NaN too
            raise GLMError(f"{flag}: expected at least {least}, got {value}")
    name = args.model_name or os.path.basename(os.path.normpath(args.model_dir))
    metrics = ServerMetrics(name)
    model, tokenizer = load_model_and_tokenizer(args)
    scheduler, how = _scheduler(args, model, tokenizer, metrics)
    _log_batches()
    info(f"serving {name} on http://{args.host}:{args.port}/ ({how}"
         f"{', API key required' if args.api_key else ''})")
    # uvicorn stops on SIGTERM/SIGINT, then raises the signal again: the CLI's handler reports it
    uvicorn.run(create_app(scheduler, name, args.api_key, args.max_body_bytes, metrics, args.metrics_public),
                host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=args.shutdown_grace)
    return 0


def _scheduler(args: argparse.Namespace, model, tokenizer, metrics):
    """The ``--scheduler`` on the model, and how it batches (for the startup line)."""
    from ..serving.engine import SlotBatch
    from ..serving.runner import ModelRunner
    from ..serving.scheduler import ContinuousScheduler, Scheduler

    runner = ModelRunner(model, tokenizer, metrics)
    if args.scheduler == "static":
        return (Scheduler(runner, args.max_batch, args.max_queue, args.batch_window_ms / 1000, metrics),
                f"static batches of up to {args.max_batch}")
    batch = SlotBatch(model, tokenizer, args.max_batch, metrics)
    return ContinuousScheduler(runner, batch, args.max_queue, metrics), f"continuous batching: {batch.describe()}"


def _log_batches() -> None:
    """The scheduler's lines (one per batch) on stderr, like uvicorn's, whatever the root logger is set to."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    log = logging.getLogger("paddle_glm.serve")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
