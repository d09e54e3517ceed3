"""Commands that run as ranks: ``--tensor-parallel N`` (its flag and the checks made before N processes
start), and the dispatch of a command line to one process, to a rank of a launched job, or to a job
of N ranks started through :func:`paddle_glm.distributed.launch`.

A command started by the user's own ``python -m paddle.distributed.launch ... paddle-glm -- generate
...`` runs as one rank directly (``--tensor-parallel`` defaults to the job's size there).
"""
from __future__ import annotations

import argparse
from typing import List

from ..distributed import in_launched_job, launch, rank_and_world, run_as_rank
from ..errors import GLMError

ADAPTER_WITH_TP = ("--adapter with --tensor-parallel is not supported: load the adapter in one process, "
                   "merge it (paddle_glm.lora.merge_lora) and save_pretrained the merged model")


def add_tensor_parallel_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tensor-parallel", type=int, default=1, metavar="N",
                        help="split the model over N processes (one per GPU; on CPU they share the cores), started "
                             "through paddle.distributed.launch; only rank 0 prints (default 1; inside a launched "
                             "job, the job's size)")
    parser.set_defaults(runs_as_ranks=True)


def run_command(args: argparse.Namespace, argv: List[str]) -> int:
    """Run ``args.run(args)``: directly, as one rank of a launched job, or by launching ``--tensor-parallel`` ranks."""
    tensor_parallel = getattr(args, "runs_as_ranks", False)
    if in_launched_job():
        if tensor_parallel:
            _join_the_job(args)
        return run_as_rank(lambda: args.run(args))
    if not tensor_parallel or args.tensor_parallel == 1:
        return args.run(args)
    if args.tensor_parallel < 1:
        raise GLMError(f"--tensor-parallel must be at least 1, got {args.tensor_parallel}")
    _check_before_launch(args)
    return launch(args.tensor_parallel, argv)


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


def _join_the_job(args: argparse.Namespace) -> None:
    """A tensor-parallel command as a rank: ``--tensor-parallel`` is the job's size."""
    _refuse_interactive(args)
    world = rank_and_world()[1]
    if args.tensor_parallel not in (1, world):
        raise GLMError(f"--tensor-parallel {args.tensor_parallel} in a job of {world} processes: give the job's size "
                       "or leave the flag out")
    args.tensor_parallel = world
