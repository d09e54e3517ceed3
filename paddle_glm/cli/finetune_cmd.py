"""``paddle-glm finetune``: full or LoRA finetuning on JSON lines of src/tgt, on one or several processes."""
from __future__ import annotations

import argparse
import dataclasses
import os

from ..checkpoint.dtypes import DTYPE_NAMES
from .common import add_device_flag, use_device


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune", help="finetune a model (full or LoRA) on JSON lines of {\"src\", \"tgt\"}",
        description="Finetune MODEL_DIR on a JSON-lines file of {\"src\": text with a blank, \"tgt\": what fills "
                    "it} (PaddleNLP's format; a src without a mask token gets [gMASK] appended). Writes the model "
                    "(or, with --lora, the adapter) and the tokenizer into --out, and checkpoints into "
                    "--out/checkpoint-STEP.")
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="the model to start from")
    parser.add_argument("--train", required=True, help="training data, JSON lines")
    parser.add_argument("--eval", help="evaluation data, JSON lines (loss at --eval-steps and at the end)")
    parser.add_argument("--out", required=True, help="output directory (must be empty unless --overwrite/--resume)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out (the old one stays "
                        "until the new output is complete)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest --out/checkpoint-STEP")
    group = parser.add_argument_group("LoRA")
    group.add_argument("--lora", action="store_true", help="train a LoRA adapter on the qkv projections only")
    group.add_argument("--lora-rank", type=int, default=8, help="adapter rank r (default 8)")
    group.add_argument("--lora-alpha", type=float, default=None, help="scaling numerator (default 2 * rank)")
    group.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the adapters' input (default 0)")
    group = parser.add_argument_group("schedule")
    group.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    group.add_argument("--epochs", type=float, default=1.0, help="passes over --train (default 1)")
    group.add_argument("--batch-size", type=int, default=1, help="rows per process per micro-batch (default 1)")
    group.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    group.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default 3e-4)")
    group.add_argument("--warmup-ratio", type=float, default=0.0, help="share of the steps for linear warmup")
    group.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    group.add_argument("--max-grad-norm", type=float, default=1.0, help="global-norm clipping (0 = off; default 1)")
    group.add_argument("--label-smoothing", type=float, default=0.0, help="as PaddleNLP's GLM loss (default 0)")
    group.add_argument("--src-length", type=int, default=None, help="source tokens kept, cut on the left "
                       "(default min(608, max_sequence_length))")
    group.add_argument("--tgt-length", type=int, default=None, help="target span tokens, cut on the right "
                       "(default min(160, max_sequence_length))")
    group.add_argument("--seed", type=int, default=42, help="seeds initialisation, dropout and data order")
    group = parser.add_argument_group("engine")
    group.add_argument("--recompute", action="store_true", help="recompute activations in the backward pass")
    group.add_argument("--dtype", default="float32", choices=DTYPE_NAMES,
                       help="float16/bfloat16: paddle.amp O2 (CUDA GPU only; default float32)")
    add_device_flag(group)
    group.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this machine, started "
                       "through paddle.distributed.launch (--batch-size is per process)")
    group.add_argument("--eval-steps", type=int, default=0, help="evaluate every N steps (0 = at the end only)")
    group.add_argument("--save-steps", type=int, default=0, help="checkpoint every N steps (0 = none)")
    group.add_argument("--save-total-limit", type=int, default=None, metavar="N",
                       help="keep only the newest N checkpoints, deleting older ones (default: keep all)")
    parser.set_defaults(run=run, stop_note=last_checkpoint_note)


def finetune_args(args: argparse.Namespace):
    from ..training import FinetuneArgs

    names = {field.name for field in dataclasses.fields(FinetuneArgs)}
    return FinetuneArgs(**{name: value for name, value in vars(args).items() if name in names})


def run(args: argparse.Namespace) -> int:
    from ..distributed import in_launched_job, launch
    from ..errors import GLMError
    from ..training import finetune
    from ..training.loop import check_inputs, check_output_state
    from ..training.output import output_lock

    use_device(args.device)
    settings = finetune_args(args)
    if args.nproc < 1:
        raise GLMError(f"--nproc: must be at least 1, got {args.nproc}")
    args.replacing = args.overwrite and os.path.isdir(args.out) and bool(os.listdir(args.out))
    if args.nproc == 1 or in_launched_job():  # a rank of a job (however --nproc was spelled) trains, never launches
        finetune(settings)
        return 0
    check_inputs(settings)  # one clear error here rather than one per process
    with output_lock(settings.out):  # held for the ranks, which learn it from the environment
        check_output_state(settings)
        return launch(args.nproc, _without_nproc(args.argv))


def last_checkpoint_note(args: argparse.Namespace) -> str:
    """Where a stopped run can resume from (``--resume``); with ``--overwrite`` of an existing output the
    new run's checkpoints were temporary, and the old output is what is left."""
    from ..training.checkpoints import latest_checkpoint

    if getattr(args, "replacing", False):
        return f"--overwrite: {args.out} is left as it was"
    latest = latest_checkpoint(args.out)
    return f"the last complete checkpoint is {latest}" if latest else f"no checkpoint was written in {args.out}"


def _without_nproc(argv):
    """``argv`` minus ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out
