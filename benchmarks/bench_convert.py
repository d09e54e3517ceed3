"""Benchmark: ``paddle-glm convert`` pdparams -> safetensors on a glm-large-chinese-shaped checkpoint.

Generates (or reuses) ~1.42 GB of random fp32 weights in glm-large-chinese shapes, written with
our writer as PaddleNLP's 3 pdparams shards + index, then times the conversion in a subprocess
against ``cp -r`` of the same directory (alternating which goes first; ``sync`` before each
run). Reports wall seconds (including interpreter start-up, also timed alone as
``paddle-glm convert --help``), GB/s, the ratio to ``cp -r`` and the converter's peak RSS
against the issue's bound: largest input shard + largest output shard + 0.5 GB. Targets: RSS
within the bound, time <= 3x ``cp -r``. Exits 1 if a target is missed.

    python benchmarks/bench_convert.py [--model glm-large-chinese] [--work benchmarks/_work] [--rounds 3] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = "glm-large-chinese"
SHARDS = 3
OUTPUT_SHARD_SIZE = "500MB"  # 3 output shards too, like the input
RSS_ALLOWANCE = 0.5e9  # interpreter and libraries, per the issue
MAX_TIME_RATIO = 3.0


def preset_shapes(model: str):
    """The config of preset ``model`` and its ``(name, shape)`` list, from a model built without memory."""
    import paddle

    from paddle_glm import GLMConfig, GLMForConditionalGeneration

    config = GLMConfig.from_name(model)
    with paddle.LazyGuard():  # names and shapes only, no memory
        shapes = [(name, tuple(p.shape)) for name, p in GLMForConditionalGeneration(config).state_dict().items()]
    return config, shapes


def make_checkpoint(directory: str, model: str = MODEL, seed: int = 0) -> None:
    """Random fp32 weights of preset ``model`` in PaddleNLP's pdparams layout, ``SHARDS`` shards when the
    tensor sizes allow it (kept if already there)."""
    index = os.path.join(directory, "model_state.pdparams.index.json")
    if os.path.isfile(index):
        return
    from paddle_glm.checkpoint.writer import ShardedWriter, plan_shards
    from paddle_glm.io_utils import atomic_output_dir

    config, shapes = preset_shapes(model)
    sizes = [(name, int(np.prod(shape)) * 4) for name, shape in shapes]
    total = sum(n for _, n in sizes)
    step = max(1, total // 4096)
    shard_size = next((size for size in range(total // SHARDS, total, step) if len(plan_shards(sizes, size)) == SHARDS),
                      total // SHARDS)
    rng = np.random.default_rng(seed)
    print(f"generating {total / 1e9:.2f} GB of {model} weights in {directory} ...", file=sys.stderr)
    with atomic_output_dir(directory, overwrite=True) as tmp:
        writer = ShardedWriter(tmp, "pdparams", sizes, shard_size)
        for name, shape in shapes:
            writer.add(name, rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02))
        writer.finish()
        config.save_pretrained(tmp)


def _weight_sizes(directory: str, suffix: str):
    return [os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory) if n.endswith(suffix)]


def _timed(command) -> float:
    os.sync()  # write back the previous run's files first, so runs do not slow each other
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _converter() -> list:
    script = os.path.join(os.path.dirname(sys.executable), "paddle-glm")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "paddle_glm"]


def run(work: str, rounds: int, model: str = MODEL) -> dict:
    """Generate the input if needed, then time cp -r and the conversion ``rounds`` times each."""
    src = os.path.join(work, f"{model}-fp32-pdparams")
    make_checkpoint(src, model)
    copy_dst, convert_dst = os.path.join(work, "cp-out"), os.path.join(work, "convert-out")
    for leftover in (copy_dst, convert_dst):
        shutil.rmtree(leftover, ignore_errors=True)
    convert_cmd = _converter() + ["convert", src, convert_dst, "--to", "safetensors", "--max-shard-size",
                                  OUTPUT_SHARD_SIZE, "--quiet"]
    startup = _timed(_converter() + ["convert", "--help"])
    cp_times, convert_times = [], []
    for i in range(rounds):
        order = [("cp", copy_dst), ("convert", convert_dst)]
        for what, dst in order if i % 2 == 0 else order[::-1]:
            if what == "cp":
                cp_times.append(_timed(["cp", "-r", src, dst]))
            else:
                convert_times.append(_timed(convert_cmd))
                out_sizes = _weight_sizes(dst, ".safetensors")
            shutil.rmtree(dst)
    # ru_maxrss of children (KiB on Linux): the largest of the waited-for processes, i.e. the converter
    peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    in_sizes = _weight_sizes(src, ".pdparams")
    total = sum(in_sizes)
    seconds, cp_seconds = statistics.median(convert_times), statistics.median(cp_times)
    bound = max(in_sizes) + max(out_sizes) + RSS_ALLOWANCE
    return {
        "benchmark": "convert pdparams->safetensors",
        "model": model, "dtype": "float32", "input_shards": len(in_sizes), "output_shards": len(out_sizes),
        "bytes": total, "seconds": round(seconds, 3), "gb_per_s": round(total / seconds / 1e9, 3),
        "cp_seconds": round(cp_seconds, 3), "ratio_to_cp": round(seconds / cp_seconds, 2),
        "startup_seconds": round(startup, 3),
        "peak_rss_bytes": peak_rss, "rss_bound_bytes": int(bound),
        "largest_input_shard": max(in_sizes), "largest_output_shard": max(out_sizes),
        "rounds": rounds, "convert_runs": [round(t, 3) for t in convert_times],
        "cp_runs": [round(t, 3) for t in cp_times],
        "meets_targets": peak_rss <= bound and seconds <= MAX_TIME_RATIO * cp_seconds,
    }


def markdown(result: dict) -> str:
    """A header and one table row."""
    gb = 1e9
    return ("| benchmark | size | seconds (of which start-up) | GB/s | cp -r seconds | ratio to cp (target <= 3) | "
            "peak RSS | RSS bound | targets met |\n|---|---|---|---|---|---|---|---|---|\n"
            f"| {result['benchmark']} ({result['input_shards']} -> {result['output_shards']} shards) | "
            f"{result['bytes'] / gb:.2f} GB | {result['seconds']:.2f} ({result['startup_seconds']:.2f}) | "
            f"{result['gb_per_s']:.2f} | "
            f"{result['cp_seconds']:.2f} | {result['ratio_to_cp']:.2f}x | {result['peak_rss_bytes'] / gb:.2f} GB | "
            f"{result['rss_bound_bytes'] / gb:.2f} GB | {'yes' if result['meets_targets'] else 'NO'} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=os.path.join(HERE, "_work"), help="work directory (input is reused)")
    parser.add_argument("--model", default=MODEL, help="preset in configs/ (the targets are for glm-large)")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each of cp -r and convert")
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON to PATH")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    result = run(args.work, args.rounds, args.model)
    print(markdown(result))
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0 if result["meets_targets"] else 1


if __name__ == "__main__":
    sys.exit(main())
