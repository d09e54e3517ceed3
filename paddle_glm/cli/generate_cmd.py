"""``paddle-glm generate``: blank infilling or left-to-right generation from a prompt."""
from __future__ import annotations

import argparse
import sys
import time

from ..errors import GLMError
from .common import add_generation_flags, add_model_flags, generation_kwargs, info, load_model_and_tokenizer, \
    speed_line
from .launch import add_tensor_parallel_flag

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


def with_mask(prompt: str, tokenizer) -> str:
    """The prompt, with [gMASK] appended if it has no mask token (and a note saying so)."""
    if any(token in prompt for token in ("[MASK]", "[sMASK]", GMASK)):
        return prompt
    info(f"no mask token in the prompt: appending {GMASK} for left-to-right generation")
    return prompt + GMASK


def generate_one(model, tokenizer, prompt: str, args: argparse.Namespace) -> None:
    from ..generation import TextStreamer
    from ..generation.api import bad_words_with_tokenizer

    prompt = with_mask(prompt, tokenizer)
    inputs = tokenizer(prompt, return_tensors="pd")
    inputs = tokenizer.build_inputs_for_generation(inputs, max_gen_length=args.max_new_tokens)
    streamer = TextStreamer(tokenizer, skip_special_tokens=True) if args.stream else None
    start = time.perf_counter()
    out = model.generate(**inputs, eos_token_id=tokenizer.eop_token_id, streamer=streamer,
                         bad_words_ids=bad_words_with_tokenizer(model.config, tokenizer), **generation_kwargs(args))
    seconds = time.perf_counter() - start
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    if not args.stream:
        print(tokenizer.decode(new, skip_special_tokens=True), flush=True)
    info(speed_line(len(new), seconds))


def run(args: argparse.Namespace) -> int:
    if args.prompt is not None and args.file:
        raise GLMError("give the prompt as an argument or with --file, not both")
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                args.prompt = f.read().strip()
        except OSError as e:
            raise GLMError(f"--file {args.file}: {e.strerror}") from None
    model, tokenizer = load_model_and_tokenizer(args)
    if args.prompt is not None:
        generate_one(model, tokenizer, args.prompt, args)
        return 0
    info("enter a prompt per line (Ctrl-D to quit)")
    for line in sys.stdin:
        if line.strip():
            generate_one(model, tokenizer, line.strip(), args)
    return 0
