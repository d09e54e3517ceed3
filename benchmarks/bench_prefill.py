"""Prefill time of one prompt on CPU (glm-large-chinese shape, random fp32 weights) on each float route of
``paddle_glm/linear.py``, measured side by side in one process: the routes the package takes (the C++
small-batch operator below ``linear.BLAS_ROWS`` rows, numpy's BLAS from there on) against the C++
operator up to 128 rows and Paddle's matmul above (no BLAS), at prompt lengths above the 32-row
threshold (40) and past the operator's 128 rows (256, 512).

    python benchmarks/bench_prefill.py [--model glm-large-chinese] [--lengths 40 256 512] [--rounds 5]
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


def prefill_seconds(model, ids: paddle.Tensor, pos: paddle.Tensor) -> float:
    """One forward pass over the prompt ``ids`` (the last token's logits only)."""
    start = time.perf_counter()
    with paddle.no_grad():
        model(ids, pos, None, last_token_only=True)
    return time.perf_counter() - start


def side_by_side(model, length: int, rounds: int) -> dict:
    """The fastest of ``rounds`` prefills of a ``length``-token prompt on the package's routes and with BLAS
    refused (the operator up to 128 rows, Paddle's matmul above), alternating."""
    ids = paddle.randint(100, 1000, [1, length])
    pos = paddle.stack([paddle.arange(length), paddle.zeros([length], "int64")]).unsqueeze(0)  # [1, 2, length]
    usable = linear_routes.usable_cores
    best = {"package_s": float("inf"), "no_blas_s": float("inf")}
    try:
        for i in range(rounds + 1):  # the first round warms up
            for key in best:
                linear_routes.usable_cores = usable if key == "package_s" else (lambda: sys.maxsize)
                seconds = prefill_seconds(model, ids, pos)
                best[key] = min(best[key], seconds) if i else best[key]
    finally:
        linear_routes.usable_cores = usable
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="glm-large-chinese")
    parser.add_argument("--lengths", type=int, nargs="+", default=[40, 256, 512])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    use_cpu_threads()
    paddle.seed(0)
    model = GLMForConditionalGeneration(GLMConfig.from_name(args.model))
    model.eval()
    rows = [f"| {args.model} prefill, s (fastest of {args.rounds}, alternating) | package's routes | BLAS refused | "
            "ratio |", "|---|---|---|---|"]
    out = {"benchmark": "prefill", "model": args.model}
    for length in args.lengths:
        best = side_by_side(model, length, args.rounds)
        rows.append(f"| {length} tokens | {best['package_s']:.3f} | {best['no_blas_s']:.3f} | "
                    f"{best['package_s'] / best['no_blas_s']:.2f} |")
        out[f"prefill_{length}"] = best
    print("\n".join(rows))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
