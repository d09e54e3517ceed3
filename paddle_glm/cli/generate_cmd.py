"""``paddle-glm generate``: blank infilling or left-to-right generation from a prompt."""
from __future__ import annotations

import argparse
import sys
import time

from ..errors import GLMError
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

GMASK = "[gMASK]"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate text for the first blank of a prompt",
        description="Generate the span for the first [MASK]/[sMASK]/[gMASK] of PROMPT. A prompt without any mask "
                    "token gets [gMASK] appended (left-to-right generation). Without PROMPT or --file, prompts are "
                    "read interactively, one per line.")
    add_model_flags(parser)
    parser.add_argument("prompt", metavar="PROMPT", nargs="?", help="the text (may contain [MASK], [sMASK], [gMASK])")
    parser.add_argument("--file", help="read the prompt from this UTF-8 file")
    parser.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    add_generation_flags(parser, default_new_tokens=128)
    add_tensor_parallel_flag(parser)
    parser.set_defaults(run=run)


def prompt_with_mask(prompt: str) -> str:
    """The prompt, with [gMASK] appended if it has no mask token (and a note saying so)."""
    from ..tokenizer import with_mask  # imports paddle: not at module level, so --help stays fast

    completed = with_mask(prompt)
    if completed != prompt:
        info(f"no mask token in the prompt: appending {GMASK} for left-to-right generation")
    return completed


def generate_one(model, tokenizer, prompt: str, config, stream: bool) -> None:
    from ..generation import TextStreamer

    prompt = prompt_with_mask(prompt)
    inputs = tokenizer(prompt, return_tensors="pd")
    # laid out for the prompt only: generate extends the span once it fits the position table
    inputs = tokenizer.build_inputs_for_generation(inputs, max_gen_length=1)
    streamer = TextStreamer(tokenizer, skip_special_tokens=True) if stream else None
    start = time.perf_counter()
    out = model.generate(**inputs, generation_config=config.resolved(model.config, tokenizer),
                         streamer=streamer)
    seconds = time.perf_counter() - start
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    if not stream:
        print(tokenizer.decode(new, skip_special_tokens=True), flush=True)
    info(speed_line(len(new), seconds))


def run(args: argparse.Namespace) -> int:
    overrides = generation_overrides(args)
    if args.prompt is not None and args.file:
        raise GLMError("give the prompt as an argument or with --file, not both")
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                args.prompt = f.read().strip()
        except OSError as e:
            raise GLMError(f"--file {args.file}: {e.strerror}") from None
    model, tokenizer = load_model_and_tokenizer(args)
    config = generation_config(model, args, overrides)
    if args.prompt is not None:
        generate_one(model, tokenizer, args.prompt, config, args.stream)
        return 0
    info("enter a prompt per line (Ctrl-D to quit)")
    failed = 0
    for number, line in enumerate(sys.stdin, 1):
        if line.strip():
            try:
                generate_one(model, tokenizer, line.strip(), config, args.stream)
            except GLMError as e:  # report it and go on with the next prompt
                failed += 1
                info(f"paddle-glm generate: error: line {number}: {e}")
    return 1 if failed else 0
