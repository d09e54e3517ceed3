"""``paddle-glm fill``: fill every blank of a text, in order."""
from __future__ import annotations

import argparse
import time

from .common import (
    add_generation_flags,
    add_model_flags,
    generation_config,
    generation_overrides,
    info,
    load_model_and_tokenizer,
    speed_line,
)
from .ranks import add_tensor_parallel_flag


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "fill", help="fill every [MASK]/[sMASK]/[gMASK] of a text",
        description="Fill the blanks of TEXT one after another, each generated span fed back before the next "
                    "(GLM's multi-blank infilling). Prints the completed text, then each span.")
    add_model_flags(parser)
    parser.add_argument("text", metavar="TEXT", help="text with one or more [MASK], [sMASK] or [gMASK]")
    add_generation_flags(parser, default_new_tokens=64)
    add_tensor_parallel_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..generation import TokenCollector
    from ..infilling import fill_blanks

    overrides = generation_overrides(args)
    model, tokenizer = load_model_and_tokenizer(args)
    config = generation_config(model, args, overrides)
    counter = TokenCollector() if config.num_beams == 1 else None  # streamers do not run with beam search
    start = time.perf_counter()
    completed, spans = fill_blanks(model, tokenizer, args.text, streamer=counter, generation_config=config)
    seconds = time.perf_counter() - start
    print(completed)
    for i, span in enumerate(spans, 1):
        print(f"[{i}] {span}")
    info(speed_line(len(counter.steps), seconds) if counter else f"filled {len(spans)} blanks in {seconds:.2f} s")
    return 0
