"""Weight-only kernels on one glm-10b layer's projections (CPU), measured side by side in one run.

One layer = query_key_value 4096->12288, dense 4096->4096, dense_h_to_4h 4096->16384 and
dense_4h_to_h 16384->4096 (random weights). For batch 1 and 8, the median over ``--rounds``
rounds (the routes take turns within a round) of the ms per layer of:

* fp32 matmul (what glm-10b would cost if its 37 GiB of fp32 weights fit in memory);
* the tiled fallback (Paddle ops; what runs when the C++ operator cannot be built), int8 and int4;
* the C++ operator, int8 and int4 (groups of 64).

"s/token" is ms/layer x 48 layers: the projections of one decode step. The int8/int4 rooflines
are their weight bytes divided by the bandwidth the fp32 batch-1 product reached in the same
round. ``--portable`` also measures the operator built for a baseline x86-64 CPU (no AVX2 or
AVX-512: its plain-loop path) in a child process, beside fp32 there. Also: the throughput of
``quantize_weight`` on a 4096x16384 matrix.

Usage: python benchmarks/bench_quant_kernel.py [--rounds 5] [--portable] [--no-fallback] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List

import numpy as np
import paddle

from paddle_glm import cpu_operators
from paddle_glm.devices import cpu_thread_count, use_cpu_threads
from paddle_glm.quantization.kernels import INT4, INT8, quantize_weight, tiled_fallback

LAYER = {"query_key_value": (12288, 4096), "dense": (4096, 4096), "dense_h_to_4h": (16384, 4096),
         "dense_4h_to_h": (4096, 16384)}  # [out, in]
LAYERS = 48  # glm-10b
GROUP_SIZE = 64
PORTABLE_CFLAGS = "-march=x86-64"


def layer_weights(seed: int = 0) -> List[Dict[str, paddle.Tensor]]:
    """Per projection: the fp32 weight ``[in, out]`` (Paddle's Linear layout) and its int8/int4 forms."""
    rng = np.random.default_rng(seed)
    weights = []
    for out_features, in_features in LAYER.values():
        w = rng.standard_normal((out_features, in_features), dtype=np.float32) * 0.02
        q8, s8 = quantize_weight(w, INT8)
        q4, s4 = quantize_weight(w, INT4, GROUP_SIZE)
        weights.append({"fp32": paddle.to_tensor(np.ascontiguousarray(w.T)), "q8": paddle.to_tensor(q8),
                        "s8": paddle.to_tensor(s8), "q4": paddle.to_tensor(q4), "s4": paddle.to_tensor(s4)})
    return weights


def routes(fallback: bool, operator: bool) -> Dict[str, Callable]:
    """route name -> fn(x, weights of one projection)."""
    chosen = {"fp32": lambda x, w: paddle.matmul(x, w["fp32"])}
    if fallback:
        chosen["fallback_int8"] = lambda x, w: tiled_fallback(x, w["q8"], w["s8"], INT8)
        chosen["fallback_int4"] = lambda x, w: tiled_fallback(x, w["q4"], w["s4"], INT4, GROUP_SIZE)
    if operator:
        chosen["operator_int8"] = lambda x, w: cpu_operators.run(x, w["q8"], w["s8"], INT8, GROUP_SIZE)
        chosen["operator_int4"] = lambda x, w: cpu_operators.run(x, w["q4"], w["s4"], INT4, GROUP_SIZE)
    return chosen


def layer_ms(fn: Callable, weights, xs) -> float:
    """One pass over the layer's four projections, in ms."""
    start = time.perf_counter()
    for w, x in zip(weights, xs):
        fn(x, w)
    return (time.perf_counter() - start) * 1e3


def measure(batch: int, weights, chosen: Dict[str, Callable], rounds: int) -> List[Dict[str, float]]:
    """Per round, ms/layer of each route (one warm-up pass each first)."""
    rng = np.random.default_rng(batch)
    xs = [paddle.to_tensor(rng.standard_normal((batch, shape[1]), dtype=np.float32)) for shape in LAYER.values()]
    for fn in chosen.values():
        layer_ms(fn, weights, xs)
    return [{name: layer_ms(fn, weights, xs) for name, fn in chosen.items()} for _ in range(rounds)]


def weight_bytes() -> Dict[str, int]:
    """Bytes of weights (and scales) one layer reads per pass, per format."""
    sizes = {"fp32": 0, "int8": 0, "int4": 0}
    for out_features, in_features in LAYER.values():
        sizes["fp32"] += 4 * out_features * in_features
        sizes["int8"] += out_features * in_features + 4 * out_features
        sizes["int4"] += out_features * in_features // 2 + 4 * out_features * in_features // GROUP_SIZE
    return sizes


def summarize(per_round: List[Dict[str, float]], sizes: Dict[str, int]) -> Dict[str, float]:
    """Medians of ms/layer, and per-round ratios (vs fp32, vs the roofline) reduced to their medians."""
    r = {f"{name}_ms": statistics.median(one[name] for one in per_round) for name in per_round[0]}
    for name in per_round[0]:
        r[f"{name}_vs_fp32"] = statistics.median(one["fp32"] / one[name] for one in per_round)  # > 1: faster
        fmt = name.rsplit("_", 1)[-1]
        if fmt in ("int8", "int4"):  # roofline ms = bytes / (fp32 bytes / fp32 ms)
            r[f"{name}_of_roofline"] = statistics.median(
                sizes[fmt] / sizes["fp32"] * one["fp32"] / one[name] for one in per_round)
    r["fp32_GBps"] = sizes["fp32"] / (r["fp32_ms"] * 1e-3) / 1e9
    return r


def quantize_throughput() -> Dict[str, float]:
    """G values/s of quantize_weight on a 4096x16384 float32 matrix."""
    w = np.random.default_rng(0).standard_normal((4096, 16384), dtype=np.float32)
    result = {}
    for quant_type in (INT8, INT4):
        start = time.perf_counter()
        quantize_weight(w, quant_type, GROUP_SIZE)
        result[f"quantize_{quant_type[-4:]}_s"] = time.perf_counter() - start
    return result


def portable_child(rounds: int, batches: List[int]) -> Dict[str, Dict[str, float]]:
    """The operator built for a baseline x86-64 CPU, measured beside fp32 in a child process."""
    env = dict(os.environ, PADDLE_GLM_CPU_OPERATORS_CFLAGS=PORTABLE_CFLAGS)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--no-fallback", "--rounds", str(rounds),
           "--batches", *map(str, batches)]
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--no-fallback", action="store_true", help="skip the (slow) tiled fallback")
    parser.add_argument("--portable", action="store_true", help=f"also the operator built with {PORTABLE_CFLAGS}")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    paddle.set_device("cpu")
    use_cpu_threads()
    built, reason = cpu_operators.status()
    weights = layer_weights()
    sizes = weight_bytes()
    chosen = routes(not args.no_fallback, built)
    results = {f"B{b}": summarize(measure(b, weights, chosen, args.rounds), sizes) for b in args.batches}
    if args.child:
        print(json.dumps(results))
        return 0
    r = {"threads": cpu_thread_count(), "operator": built, "operator_reason": reason, "layers": LAYERS,
         "rounds": args.rounds, "cflags": os.environ.get(cpu_operators.CFLAGS_ENV, "-march=native"), **results}
    if args.portable:
        r["portable"] = portable_child(args.rounds, args.batches)
    r.update(quantize_throughput())
    print_table(r, args.batches)
    print(json.dumps(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


def print_table(r: Dict, batches: List[int]) -> None:
    """One row per route: ms/layer and s/token at each batch, speed vs fp32, fraction of the roofline."""
    head = " | ".join(f"ms/layer B={b} | s/token B={b} | speed vs fp32 B={b} | of roofline B={b}" for b in batches)
    print(f"| route (glm-10b layer, CPU, {r['threads']} threads) | {head} |")
    print("|---" * (1 + 4 * len(batches)) + "|")
    sections = [("", r)] + ([(f"portable ({PORTABLE_CFLAGS}) ", r["portable"])] if "portable" in r else [])
    for prefix, source in sections:
        for name in (k[:-3] for k in source[f"B{batches[0]}"] if k.endswith("_ms")):
            cells = []
            for b in batches:
                m = source[f"B{b}"]
                roof = m.get(f"{name}_of_roofline")
                cells += [f"{m[name + '_ms']:.1f}", f"{m[name + '_ms'] * LAYERS / 1e3:.2f}",
                          f"{m[name + '_vs_fp32']:.2f}x", "" if roof is None else f"{roof:.2f}"]
            print(f"| {prefix}{name} | " + " | ".join(cells) + " |")
    print(f"| quantize_weight 4096x16384 (s): int8 / int4 | {r['quantize_int8_s']:.2f} / {r['quantize_int4_s']:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
