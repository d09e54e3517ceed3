"""Prefill time of one prompt on CPU (glm-large-chinese shape, random fp32 weights) on each float route of
``paddle_glm/linear.py``, measured side by side in one process: the routes the package takes (the C++
small-batch operator up to 128 rows, numpy's BLAS above) against the C++ operator or Paddle's matmul
everywhere (no BLAS), at prompt lengths on both sides of the 128-row boundary.

    python benchmarks/bench_prefill.py [--model glm-large-chinese] [--lengths 40 256] [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import paddle

import paddle_glm.linear as linear_routes
from paddle_glm import GLMConfig, GLMForConditionalGeneration
from paddle_glm.devices import use_cpu_threads


def prefill_seconds(model, length: int, rounds: int) -> float:
    """The fastest of ``rounds`` forward passes over a ``length``-token prompt (last token's logits only)."""
    ids = paddle.randint(100, 1000, [1, length])
    pos = paddle.stack([paddle.arange(length), paddle.zeros([length], "int64")]).unsqueeze(0)  # [1, 2, length]
    best = float("inf")
    with paddle.no_grad():
        model(ids, pos, None, last_token_only=True)
        for _ in range(rounds):
            start = time.perf_counter()
            model(ids, pos, None, last_token_only=True)
            best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="glm-large-chinese")
    parser.add_argument("--lengths", type=int, nargs="+", default=[40, 256])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    use_cpu_threads()
    paddle.seed(0)
    model = GLMForConditionalGeneration(GLMConfig.from_name(args.model))
    model.eval()
    package_rows = linear_routes.BLAS_MIN_ROWS
    rows = [f"| {args.model} prefill, s (fastest of {args.rounds}) | package's routes | no BLAS | ratio |",
            "|---|---|---|---|"]
    out = {"benchmark": "prefill", "model": args.model}
    for length in args.lengths:
        linear_routes.BLAS_MIN_ROWS = package_rows
        ours = prefill_seconds(model, length, args.rounds)
        linear_routes.BLAS_MIN_ROWS = sys.maxsize  # the operator up to 128 rows, Paddle's matmul above
        without = prefill_seconds(model, length, args.rounds)
        linear_routes.BLAS_MIN_ROWS = package_rows
        rows.append(f"| {length} tokens | {ours:.3f} | {without:.3f} | {ours / without:.2f} |")
        out[f"prefill_{length}"] = {"package_s": ours, "no_blas_s": without}
    print("\n".join(rows))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
