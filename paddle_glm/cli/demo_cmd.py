"""``paddle-glm demo``: the shipped tiny GLM, end to end, with no network."""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from .common import info, speed_line

DEMO_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo_model")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the embedded demo model (no downloads)",
        description="Load the small GLM shipped with the package (trained by tools/train_tiny.py on the corpus in "
                    "tools/corpus), convert it to safetensors in a temporary directory and reload it, fill blanks "
                    "in corpus sentences (one with two blanks), generate left to right from a [gMASK] prompt, and "
                    "print each result with the speed.")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..conversion import convert
    from ..demo_cases import FILL_CASES, GMASK_PROMPT
    from ..generation import TokenCollector
    from ..generation.api import bad_words_with_tokenizer
    from ..infilling import fill_blanks
    from ..model import GLMForConditionalGeneration
    from ..tokenizer import GLMChineseTokenizer

    start = time.perf_counter()
    model = GLMForConditionalGeneration.from_pretrained(DEMO_DIR, show_progress=False)
    print(f"loaded the demo model ({DEMO_DIR}, pdparams shards) in {time.perf_counter() - start:.2f} s")
    with tempfile.TemporaryDirectory(prefix="paddle-glm-demo-") as tmp:
        converted = os.path.join(tmp, "safetensors")
        report = convert(DEMO_DIR, converted, to="safetensors", verify=True, quiet=True)
        start = time.perf_counter()
        model = GLMForConditionalGeneration.from_pretrained(converted, show_progress=False)
        tokenizer = GLMChineseTokenizer.from_pretrained(converted)
        print(f"converted to safetensors ({report.summary()}), verified, reloaded in "
              f"{time.perf_counter() - start:.2f} s")

    collector, correct, start = TokenCollector(), 0, time.perf_counter()
    for text, expected in FILL_CASES:
        completed, spans = fill_blanks(model, tokenizer, text, max_new_tokens=32, streamer=collector)
        ok = spans == list(expected)
        correct += ok
        print(f"\n  {text}\n  -> {completed}\n     spans {spans} {'(correct)' if ok else f'(expected {list(expected)})'}")
    print(f"\nfilled {correct}/{len(FILL_CASES)} blank sentences as in the corpus")

    inputs = tokenizer.build_inputs_for_generation(tokenizer(GMASK_PROMPT, return_tensors="pd"), max_gen_length=48)
    out = model.generate(**inputs, eos_token_id=tokenizer.eop_token_id, streamer=collector,
                         bad_words_ids=bad_words_with_tokenizer(model.config, tokenizer))
    continuation = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:].tolist(), skip_special_tokens=True)
    print(f"\n  {GMASK_PROMPT}\n  -> {continuation}")
    info(speed_line(len(collector.steps), time.perf_counter() - start))
    return 0
