"""Shared pieces of the CLI subcommands: device/dtype flags, loading, timing lines."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Tuple

from ..errors import GLMError
from ..io_utils import require_local_dir


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="MODEL_DIR",
                        help="directory with config.json, the weights and cog-pretrain.model")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                        help="weights dtype (float16/bfloat16 need a CUDA GPU; default float32)")
    parser.add_argument("--device", default=None, help="cpu, gpu or gpu:N (default: Paddle's current device)")
    parser.add_argument("--adapter", metavar="DIR", help="a LoRA adapter (paddle-glm finetune --lora, or PaddleNLP's "
                        "peft) to merge into the model")


def add_generation_flags(parser: argparse.ArgumentParser, default_new_tokens: int) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--max-new-tokens", type=int, default=default_new_tokens,
                       help=f"new tokens per blank (default {default_new_tokens})")
    group.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    group.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    group.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = off)")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)")
    group.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (1 = off)")
    group.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL repetition penalty (1.0 = off)")
    group.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")


def generation_kwargs(args: argparse.Namespace) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
                top_k=args.top_k, top_p=args.top_p, num_beams=args.num_beams,
                repetition_penalty=args.repetition_penalty, seed=args.seed)


def load_model_and_tokenizer(args: argparse.Namespace) -> Tuple[object, object]:
    """Model and tokenizer from ``args.model_dir`` on ``args.device``; user errors become GLMError."""
    import paddle

    from ..model import GLMForConditionalGeneration
    from ..tokenizer import MODEL_FILE, GLMChineseTokenizer

    require_local_dir(args.model_dir)
    if args.device:
        try:
            paddle.set_device(args.device)
        except (ValueError, RuntimeError) as e:
            raise GLMError(f"--device {args.device}: {e}") from None
    if not os.path.isfile(os.path.join(args.model_dir, MODEL_FILE)):
        raise GLMError(f"{args.model_dir}: no tokenizer file {MODEL_FILE} in the model directory")
    tokenizer = GLMChineseTokenizer.from_pretrained(args.model_dir)
    start = time.perf_counter()
    model = GLMForConditionalGeneration.from_pretrained(args.model_dir, dtype=args.dtype)
    if args.adapter:
        from ..lora import load_adapter, merge_lora

        model = merge_lora(load_adapter(model, args.adapter))
    info(f"loaded {args.model_dir} ({args.dtype}) in {time.perf_counter() - start:.1f} s")
    return model, tokenizer


def info(message: str) -> None:
    """A status line on stderr (stdout carries the results)."""
    print(message, file=sys.stderr, flush=True)


def speed_line(tokens: int, seconds: float) -> str:
    return f"{tokens} tokens in {seconds:.2f} s ({tokens / max(seconds, 1e-9):.1f} tokens/s)"
