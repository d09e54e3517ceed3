"""``paddle-glm demo``: the shipped tiny GLM, end to end, with no network."""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from .common import info, ready_cpu_operators, speed_line


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
    from ..demo_cases import DEMO_CASES, DEMO_MODEL_DIR
    from ..generation import TokenCollector
    from ..infilling import fill_blanks
    from ..model import GLMForConditionalGeneration
    from ..tokenizer import GLMChineseTokenizer

    source = str(DEMO_MODEL_DIR)
    start = time.perf_counter()
    GLMForConditionalGeneration.from_pretrained(source, show_progress=False)
    print(f"loaded the demo model ({source}: PaddleNLP pdparams shards) in {time.perf_counter() - start:.2f} s")
    with tempfile.TemporaryDirectory(prefix="paddle-glm-demo-") as tmp:
        converted = os.path.join(tmp, "safetensors")
        report = convert(source, converted, to="safetensors", verify=True, quiet=True)
        start = time.perf_counter()
        model = GLMForConditionalGeneration.from_pretrained(converted, show_progress=False)
        tokenizer = GLMChineseTokenizer.from_pretrained(converted)
        print(f"converted to safetensors ({report.summary()}) and reloaded it in "
              f"{time.perf_counter() - start:.2f} s")

    ready_cpu_operators()  # a first run builds them here, not inside the timed generation
    collector, correct, start = TokenCollector(), 0, time.perf_counter()
    for case in DEMO_CASES:
        completed, spans = fill_blanks(model, tokenizer, case.text, streamer=collector)
        ok = tuple(spans) == case.expected
        correct += ok
        verdict = "as in the corpus" if ok else f"the corpus has {list(case.expected)}"
        print(f"\n  {case.text}\n  -> {completed}\n     filled {spans}: {verdict}")
    info(speed_line(len(collector.steps), time.perf_counter() - start))
    print(f"\n{correct} of {len(DEMO_CASES)} texts filled exactly as in the training corpus")
    return 0
