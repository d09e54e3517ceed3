"""``--tensor-parallel N``: run a command as N local processes started through ``paddle.distributed.launch``.

The starting process checks the model divides over N, starts the launcher on a small
entry script with the same command line (after ``--``, which the launcher passes
through untouched) and shows rank 0's stdout and stderr as its own; the other ranks
stay silent. A command started by the user's own ``python -m paddle.distributed.launch
... paddle-glm -- generate ...`` runs as one rank directly (``--tensor-parallel``
defaults to the job's size there).
"""
from __future__ import annotations

import argparse
import codecs
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

from ..errors import GLMError

OUTPUT_ENV = "PADDLE_GLM_TP_OUTPUT"  # directory where rank 0 writes what the starting process shows
_POLL_SECONDS = 0.05
_ENTRY = """import sys
sys.path[0] = {root!r}  # this file's directory -> the paddle_glm the starting process runs
from paddle_glm.cli import main
sys.exit(main())
"""


def add_tensor_parallel_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tensor-parallel", type=int, default=1, metavar="N",
                        help="split the model over N processes (one per GPU; on CPU they share the cores), started "
                             "through paddle.distributed.launch; only rank 0 prints (default 1; inside a launched "
                             "job, the job's size)")
    parser.set_defaults(runs_as_ranks=True)


def print_memory_per_rank(config, world: int) -> None:
    """``paddle-glm info --tensor-parallel N``: what one of N ranks holds (weights, and the KV cache of one sequence)."""
    from ..parallel import parameters_per_rank

    params = parameters_per_rank(config, world)
    kv = 2 * config.num_layers * config.max_sequence_length * config.hidden_size // world
    print(f"tensor parallel over {world} ranks: {params:,} parameters per rank; weights per rank float32 "
          f"{params * 4 / 1e9:.2f} GB, float16/bfloat16 {params * 2 / 1e9:.2f} GB; KV cache per sequence at "
          f"{config.max_sequence_length} tokens per rank float16/bfloat16 {kv * 2 / 1e9:.3f} GB")


def run_command(args: argparse.Namespace, argv: List[str]) -> int:
    """Run ``args.run(args)``: directly, as one rank of a launched job, or by launching ``--tensor-parallel`` ranks."""
    if not getattr(args, "runs_as_ranks", False):
        return args.run(args)
    from ..parallel import in_launched_job

    if in_launched_job():
        return _run_as_rank(args)
    if args.tensor_parallel < 1:
        raise GLMError(f"--tensor-parallel must be at least 1, got {args.tensor_parallel}")
    if args.tensor_parallel == 1:
        return args.run(args)
    _check_before_launch(args)
    return _launch(args.tensor_parallel, argv)


ADAPTER_WITH_TP = ("--adapter with --tensor-parallel is not supported: load the adapter in one process, "
                   "merge it (paddle_glm.lora.merge_lora) and save_pretrained the merged model")


def _check_before_launch(args: argparse.Namespace) -> None:
    """The errors every rank would meet, found before N processes start."""
    from ..config import GLMConfig
    from ..io_utils import require_local_dir
    from ..parallel import check_split
    from ..quantization.settings import QUANT_WITH_TP, recorded_quant_type

    _refuse_interactive(args)
    if getattr(args, "adapter", None):
        raise GLMError(ADAPTER_WITH_TP)
    require_local_dir(args.model_dir)
    if getattr(args, "quant_type", None) or recorded_quant_type(args.model_dir):
        raise GLMError(QUANT_WITH_TP)
    check_split(GLMConfig.from_pretrained(args.model_dir), args.tensor_parallel)


def _refuse_interactive(args: argparse.Namespace) -> None:
    if getattr(args, "command", None) == "generate" and args.prompt is None and not args.file:
        raise GLMError("tensor parallelism needs the prompt as an argument or --file (the ranks cannot share the "
                       "interactive input)")


def _run_as_rank(args: argparse.Namespace) -> int:
    from ..parallel import job_world

    _refuse_interactive(args)
    rank, world = job_world()  # before any redirection: Paddle prints its set-up notes here
    if args.tensor_parallel not in (1, world):
        raise GLMError(f"--tensor-parallel {args.tensor_parallel} in a job of {world} processes: give the job's size "
                       "or leave the flag out")
    args.tensor_parallel = world
    output = os.environ.get(OUTPUT_ENV)
    if rank != 0:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")
    elif output:
        sys.stdout = open(os.path.join(output, "stdout"), "w", encoding="utf-8", buffering=1)
        sys.stderr = open(os.path.join(output, "stderr"), "w", encoding="utf-8", buffering=1)
    return args.run(args)


def _launch(n: int, argv: List[str]) -> int:
    """Start ``n`` ranks running ``paddle-glm argv``; show rank 0's output; return the job's exit code."""
    work = tempfile.mkdtemp(prefix="paddle-glm-tp-")
    entry = os.path.join(work, "paddle_glm_rank.py")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(entry, "w", encoding="utf-8") as f:
        f.write(_ENTRY.format(root=root))
    logs = os.path.join(work, "logs")
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(n), "--log_dir", logs,
               entry, "--", *argv]
    streams = [_Forward(os.path.join(work, "stdout"), sys.stdout), _Forward(os.path.join(work, "stderr"), sys.stderr)]
    job = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=dict(os.environ, **{OUTPUT_ENV: work}))
    try:
        while job.poll() is None:
            for stream in streams:
                stream.copy()
            time.sleep(_POLL_SECONDS)
    except KeyboardInterrupt:
        job.terminate()
        job.wait()
        raise
    for stream in streams:
        stream.copy()
        stream.close()
    if job.returncode and not streams[1].copied:
        raise GLMError(f"a rank of the {n}-process job failed (exit code {job.returncode}) without a message from "
                       f"rank 0; the ranks' logs are in {logs}")
    shutil.rmtree(work, ignore_errors=True)
    return job.returncode


class _Forward:
    """Copies what rank 0 appends to a file onto one of our streams."""

    def __init__(self, path: str, target):
        self.path, self.target = path, target
        self.file: Optional[object] = None
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may arrive in parts
        self.copied = 0

    def copy(self) -> None:
        if self.file is None:
            if not os.path.exists(self.path):
                return
            self.file = open(self.path, "rb")
        text = self.decoder.decode(self.file.read())
        if text:
            self.target.write(text)
            self.target.flush()
            self.copied += len(text)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
