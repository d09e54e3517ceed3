"""Weight-only int8/int4 quantization on CPU: memory, disk size and decode speed, measured side by side in one run.

glm-large-chinese (random fp32 weights, 3 pdparams shards, as ``bench_convert.py`` makes them):

* ``paddle-glm quantize`` to int8 and int4 (groups of 64): on-disk size against fp32's
  (targets <= 0.27x for int8, <= 0.16x for int4);
* peak RSS of ``from_pretrained(fp32, quant_type=...)`` (quantize-on-load; bound: the quantized
  model + the largest shard + 1 GB) and of ``from_pretrained(quantized checkpoint)`` (bound: its
  size + 1 GB), each in a fresh process;
* decode seconds per token (median gap between streamer callbacks, 256-token context) at batch 1
  and batch 8 for fp32, int8 and int4, against each one's bandwidth roofline: the bytes of
  weights a token reads divided by the bandwidth of the fp32 GEMV pass measured in the same
  round (``bench_generate.roofline_seconds``). Targets: int8 >= 0.7 of its roofline at batch 1
  and faster than fp32; int4 >= 0.5 of its roofline. With the operators, also int4 with its activations
  rounded to int8 (``--int8-activations``, ``int4_a8``; reported beside the targets, which are the
  default's). Then the same with the C++ operators switched
  off (``PADDLE_GLM_CPU_OPERATORS=0``): int8/int4 on the tiled fallback, fp32 on Paddle's matmul. Also
  the batch-1 fractions of a roofline that counts the KV cache a step reads besides the weights, and the
  block products' own rate read from memory and from the CPU's caches (what the kernel computes at).

``--glm-10b`` (minutes, ~14 GB): glm-10b-chinese at full size as a 7-shard fp16 safetensors
checkpoint of sparse files (real names and shapes, data reading as zeros, no disk used),
``paddle-glm quantize`` to int8 (and int4 unless ``--glm-10b-int8-only``), then 8 decode tokens
from the quantized checkpoint and from the fp16 checkpoint with ``quant_type``: peak RSS
(targets <= 14 GB int8, <= 10 GB int4) and seconds per token (target int8 <= 0.6), against the roofline
of the bytes of weights a token reads over the fp32 GEMV bandwidth on glm-10b's layer shapes,
measured in a fresh process right after the decodes (targets int8 >= 0.7, int4 >= 0.5).

    python benchmarks/bench_quant.py [--model glm-large-chinese] [--work benchmarks/_work] [--rounds 3]
                                     [--tokens 16] [--glm-10b | --glm-10b-only [--glm-10b-int8-only]]
                                     [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from bench_convert import MODEL, make_checkpoint, preset_shapes
from bench_generate import contexts_for

from paddle_glm import GLMConfig
from paddle_glm.attention import aligned_cache_length

GB = 1e9
SLACK = 1e9  # the "+ 1 GB"
QUANT_TYPES = ("weight_only_int8", "weight_only_int4")
SHORT = {"weight_only_int8": "int8", "weight_only_int4": "int4", None: "fp32"}
LABELS = {"fp32": "fp32", "int8": "int8", "int4": "int4", "int4_a8": "int4, int8 activations"}
DISK_TARGETS = {"weight_only_int8": 0.27, "weight_only_int4": 0.16}
ROOFLINE_TARGETS = {"weight_only_int8": 0.7, "weight_only_int4": 0.5}
GLM_10B, GLM_10B_SHARDS = "glm-10b-chinese", 7
RSS_TARGETS_10B = {"weight_only_int8": 14e9, "weight_only_int4": 10e9}
SPEED_TARGET_10B = 0.6  # s/token, int8
OPERATOR_SWITCH = "PADDLE_GLM_CPU_OPERATORS"  # "0": the kernels' tiled fallback

# A fresh process: load (and optionally decode), report peak RSS (VmHWM) and timings as one JSON line.
_LOAD_CHILD = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import psutil
sys.path.insert(0, sys.argv[1])
from bench_quant import peak_rss, decode_seconds_per_token, weight_bytes_per_token
from paddle_glm import GLMForConditionalGeneration
path, quant_type, tokens = sys.argv[2], sys.argv[3] or None, int(sys.argv[4])
after_import = psutil.Process().memory_info().rss
start = time.perf_counter()
model = GLMForConditionalGeneration.from_pretrained(path, quant_type=quant_type, show_progress=False)
out = {"after_import": after_import, "load_s": time.perf_counter() - start, "load_peak": peak_rss(),
       "model_bytes": sum(int(p.numel()) * p.element_size() for p in model.state_dict().values()),
       "weight_bytes": weight_bytes_per_token(model)}
if tokens:
    out["s_per_token"] = decode_seconds_per_token(model, 1, 16, tokens)
out["peak"] = peak_rss()
print(json.dumps(out))
"""


def peak_rss() -> int:
    """This process's peak resident set size in bytes (VmHWM)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def decode_seconds_per_token(model, batch: int, context: int, tokens: int) -> float:
    """Median seconds between consecutive new tokens of a greedy ``generate`` of ``batch`` rows."""
    from bench_generate import StepTimer, glm_inputs

    ids, pos, mask = glm_inputs(batch, context, tokens + 1, model.config.vocab_size)
    timer = StepTimer()
    model.generate(ids, pos, mask, max_new_tokens=tokens + 1, eos_token_id=None, bad_words_ids=[], streamer=timer)
    return timer.per_token()


def product_rates(model, passes: int = 5) -> dict:
    """Stored bytes per second of a model's weight-only block products at batch 1 (the C++ operator's kernel, the
    one the fused decode block runs, each product a call of its own): every layer's in turn (read from memory) and
    the first layer's four over and over (from the CPU's last-level cache, when a layer fits it: glm-large's
    12.6 MB of int8 in this machine's 32 MB; the rate the kernel computes at when memory is not what limits it)."""
    import paddle

    from paddle_glm import cpu_operators
    from paddle_glm.quantization.layers import QuantizedLinear

    layers = [layer for block in model.glm.transformer.layers for layer in block.sublayers()
              if isinstance(layer, QuantizedLinear)]
    inputs = {n: paddle.ones([1, 1, n]) for n in {layer.in_features for layer in layers}}

    def rate(chosen) -> float:
        stored = sum(int(layer.weight.numel()) * layer.weight.element_size() for layer in chosen)
        best = float("inf")
        for _ in range(passes):
            start = time.perf_counter()
            for layer in chosen:
                cpu_operators.run(inputs[layer.in_features], layer.weight, layer.weight_scale, layer.quant_type,
                                  layer.group_size, layer.bias, layer.activation_bits)
            best = min(best, time.perf_counter() - start)
        return stored / best

    return {"memory": rate(layers), "cache": rate(layers[:4] * (len(layers) // 4))}


def block_product_bytes(model) -> int:
    """Stored bytes of the weights :func:`product_rates` reads (the blocks' projections, without their scales)."""
    from paddle_glm.quantization.layers import QuantizedLinear

    return sum(int(layer.weight.numel()) * layer.weight.element_size() for layer in model.sublayers()
               if isinstance(layer, QuantizedLinear))


def fractions(speed: dict, int8_block_bytes: int, int4_block_bytes: int) -> dict:
    """The ratios of a speed run, from its median seconds and median bandwidth (so that each printed fraction is the
    printed seconds' against the printed basis): each type's fraction of its roofline at batch 1 and 8, int8's and
    int4's at batch 1 against the weights and the KV cache, int8's speed-up over fp32, and the seconds the block
    products alone take at their rate from memory."""
    bandwidth, out = speed["bandwidth"], {"int8_vs_fp32_b1": speed["fp32_b1_s"] / speed["int8_b1_s"]}
    for name in (name for name in LABELS if f"{name}_b1_s" in speed):
        for batch in (1, 8):
            out[f"{name}_b{batch}_roofline_fraction"] = speed[f"{name}_weight_bytes"] / bandwidth / speed[
                f"{name}_b{batch}_s"]
    for name, block_bytes in (("int8", int8_block_bytes), ("int4", int4_block_bytes), ("int4_a8", int4_block_bytes)):
        if f"{name}_b1_s" not in speed:
            continue
        out[f"{name}_b1_with_cache_fraction"] = ((speed[f"{name}_weight_bytes"] + speed["cache_bytes"]) / bandwidth
                                                 / speed[f"{name}_b1_s"])
        out[f"{name}_block_product_bytes"] = block_bytes
        if f"{name}_products_memory_rate" in speed:
            out[f"{name}_block_products_s"] = block_bytes / speed[f"{name}_products_memory_rate"]
    return out


def cache_bytes_per_token(model, context: int, tokens: int) -> int:
    """Bytes of KV cache a batch-1 decode step of :func:`decode_seconds_per_token` reads: every layer's keys and
    values over the slots it attends (``generate``'s cache: ``context`` tokens, the start token and ``tokens + 1``
    new ones, the last of which is never fed)."""
    c = model.config
    slots = aligned_cache_length(context + 1 + tokens)
    return 2 * c.num_layers * c.hidden_size * slots * 4


def weight_bytes_per_token(model) -> int:
    """Bytes of weights a decode step reads: every matrix (quantized: integers and scales) but the position
    tables, the output projection included (tied to the word embeddings)."""
    return sum(int(p.numel()) * p.element_size() for name, p in model.state_dict().items()
               if name.endswith(("weight", "weight_scale")) and "position" not in name and "layernorm" not in name)


def run_child(script: str, args, env=None) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", script, here, *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})))
    if proc.returncode:
        raise SystemExit(f"child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cli_peak(args) -> dict:
    """``paddle-glm ARGS`` in a child; its wall seconds and peak RSS (the children's ru_maxrss, read in a
    fresh wrapper process so earlier children do not count)."""
    wrapper = ("import json, resource, subprocess, sys, time; start = time.perf_counter(); "
               "proc = subprocess.run([sys.executable, '-m', 'paddle_glm', *sys.argv[1:]], capture_output=True, "
               "text=True); print(proc.stderr[-2000:], file=sys.stderr); "
               "print(json.dumps({'code': proc.returncode, 'seconds': time.perf_counter() - start, "
               "'peak': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))")
    proc = subprocess.run([sys.executable, "-c", wrapper, *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["code"]:
        raise SystemExit(f"paddle-glm {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return result


def directory_bytes(path: str, suffixes=(".pdparams", ".safetensors")) -> int:
    """Apparent size of the weight files in ``path``."""
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path) if n.endswith(suffixes))


# Decode speed of fp32, int8 and int4 in one process (the operator switch applies to the whole child).
_SPEED_CHILD = r"""
import json, statistics, sys, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, sys.argv[1])
import paddle
from bench_generate import roofline_seconds
from bench_quant import (block_product_bytes, cache_bytes_per_token, decode_seconds_per_token, fractions,
                         product_rates, weight_bytes_per_token)
from paddle_glm import GLMForConditionalGeneration
from paddle_glm.quantization.kernels import operator_status
from paddle_glm.quantization.rewrite import use_int8_activations
src, int8_dir, int4_dir, rounds, tokens, context = sys.argv[2], sys.argv[3], sys.argv[4], *map(int, sys.argv[5:8])
paths = [("fp32", src), ("int8", int8_dir), ("int4", int4_dir)] + ([("int4_a8", int4_dir)] if operator_status()[0]
                                                                    else [])
models = {name: GLMForConditionalGeneration.from_pretrained(path, show_progress=False) for name, path in paths}
if "int4_a8" in models:
    use_int8_activations(models["int4_a8"])
fp32_bytes = weight_bytes_per_token(models["fp32"])
for model in models.values():  # warm-up: first-call costs (allocations, the operator's load) stay out
    decode_seconds_per_token(model, 8, context, 2)
per_round = []
for _ in range(rounds):
    one = {"bandwidth": fp32_bytes / roofline_seconds(models["fp32"])}  # bytes/s of the fp32 GEMV, this round
    for name, model in models.items():
        for batch in (1, 8):
            one[f"{name}_b{batch}_s"] = decode_seconds_per_token(model, batch, context, tokens)
    for name in ("int8", "int4", "int4_a8") if operator_status()[0] else ():
        rates = product_rates(models[name])
        one[f"{name}_products_memory_rate"], one[f"{name}_products_cache_rate"] = rates["memory"], rates["cache"]
    per_round.append(one)
out = {key: statistics.median(r[key] for r in per_round) for key in per_round[0]}
out.update({f"{name}_weight_bytes": weight_bytes_per_token(m) for name, m in models.items()})
out["cache_bytes"] = cache_bytes_per_token(models["fp32"], context, tokens)
out["context"] = context
out.update(fractions(out, block_product_bytes(models["int8"]), block_product_bytes(models["int4"])))
out["operator"] = list(operator_status())
print(json.dumps(out))
"""


# The fp32 GEMV bandwidth on glm-10b's shapes: one layer's four matrices (0.8 GB, beyond any cache) in Paddle's
# Linear layout: the fastest of 8 passes with Paddle's matmul and 8 with paddle_glm.linear's route.
_BANDWIDTH_CHILD = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import paddle
from paddle_glm import GLMConfig
from paddle_glm.devices import use_cpu_threads
from paddle_glm.linear import linear
use_cpu_threads()
h = GLMConfig.from_name(sys.argv[2]).hidden_size
weights = [paddle.randn([i, o]) for i, o in ((h, 3 * h), (h, h), (h, 4 * h), (4 * h, h))]  # [in, out]
x = {h: paddle.randn([1, 1, h]), 4 * h: paddle.randn([1, 1, 4 * h])}
best = float("inf")
with paddle.no_grad():
    for product in (paddle.matmul, linear):
        for _ in range(8):
            start = time.perf_counter()
            for w in weights:
                product(x[w.shape[0]], w)
            best = min(best, time.perf_counter() - start)
print(json.dumps({"bandwidth": sum(int(w.numel()) * 4 for w in weights) / best}))
"""


def glm_10b_bandwidth() -> float:
    """Bytes/s of the fp32 GEMV on glm-10b's layer shapes (the glm-10b rooflines' basis), in a fresh process."""
    return run_child(_BANDWIDTH_CHILD, [GLM_10B])["bandwidth"]


def speed(work_dirs: dict, rounds: int, tokens: int, context: int, fallback: bool) -> dict:
    env = {OPERATOR_SWITCH: "0"} if fallback else {}
    return run_child(_SPEED_CHILD, [work_dirs["fp32"], work_dirs["weight_only_int8"], work_dirs["weight_only_int4"],
                                    rounds, tokens, context], env)


def quantize_all(src: str, work: str, model: str, quant_types) -> dict:
    """``paddle-glm quantize`` SRC into one directory per quant type (reused when there); seconds and peak RSS."""
    out = {}
    for quant_type in quant_types:
        dst = os.path.join(work, f"{model}-{SHORT[quant_type]}")
        result = {"dir": dst}
        if not os.path.isfile(os.path.join(dst, "config.json")):
            result.update(run_cli_peak(["quantize", src, dst, "--quant-type", quant_type, "--quiet", "--overwrite"]))
        result["disk_bytes"] = directory_bytes(dst)
        out[quant_type] = result
    return out


def largest_shard(path: str) -> int:
    return max(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path)
               if n.endswith((".pdparams", ".safetensors")))


def memory(src: str, quantized: dict, tokens: int = 0) -> dict:
    """Peak RSS of quantize-on-load from ``src`` and of loading each quantized checkpoint, against the bounds."""
    out = {}
    for quant_type, q in quantized.items():
        on_load = run_child(_LOAD_CHILD, [src, quant_type, tokens])
        on_load["bound"] = on_load["model_bytes"] + largest_shard(src) + SLACK
        loaded = run_child(_LOAD_CHILD, [q["dir"], "", tokens])
        loaded["bound"] = q["disk_bytes"] + SLACK
        for result in (on_load, loaded):
            result["within_bound"] = result["peak"] <= result["bound"]
        out[quant_type] = {"on_load": on_load, "checkpoint": loaded}
    return out


def make_sparse_checkpoint(directory: str, model: str = GLM_10B, shards: int = GLM_10B_SHARDS) -> None:
    """Preset ``model`` as fp16 safetensors in ``shards`` files + index, with the real names and shapes, written
    as headers only: each file is ``truncate``d to its full size, so its data reads as zeros and takes no disk."""
    if os.path.isfile(os.path.join(directory, "model.safetensors.index.json")):
        return
    from paddle_glm.checkpoint.writer import plan_shards, shard_names
    from paddle_glm.io_utils import atomic_output_dir

    config, shapes = preset_shapes(model)
    sizes = [(name, int(np.prod(shape)) * 2) for name, shape in shapes]
    total = sum(n for _, n in sizes)
    shard_size = next(size for size in range(total // shards, total, max(1, total // 4096))
                      if len(plan_shards(sizes, size)) == shards)
    groups = plan_shards(sizes, shard_size)
    files = shard_names("safetensors", len(groups))
    shape_of = dict(shapes)
    with atomic_output_dir(directory, overwrite=True) as tmp:
        for group, file in zip(groups, files):
            header, offset = {"__metadata__": {"format": "np"}}, 0
            for name in group:
                nbytes = int(np.prod(shape_of[name])) * 2
                header[name] = {"dtype": "F16", "shape": list(shape_of[name]),
                                "data_offsets": [offset, offset + nbytes]}
                offset += nbytes
            blob = json.dumps(header, separators=(",", ":")).encode()
            blob += b" " * (-len(blob) % 8)
            with open(os.path.join(tmp, file), "wb") as f:
                f.write(len(blob).to_bytes(8, "little") + blob)
                f.truncate(8 + len(blob) + offset)  # a hole: reads as zeros
        weight_map = {name: file for group, file in zip(groups, files) for name in group}
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        config.save_pretrained(tmp)


def glm_10b(work: str, quant_types, tokens: int = 8) -> dict:
    """The glm-10b figures: quantize the sparse fp16 checkpoint, then decode from each quantized checkpoint and
    from the fp16 one quantized on load, in fresh processes."""
    src = os.path.join(work, f"{GLM_10B}-fp16-sparse")
    make_sparse_checkpoint(src)
    out = {"fp16_bytes": directory_bytes(src), "largest_shard": largest_shard(src)}
    for quant_type in quant_types:
        q = quantize_all(src, work, GLM_10B, [quant_type])[quant_type]
        _progress(f"glm-10b {quant_type}: quantize", q)
        q["from_checkpoint"] = run_child(_LOAD_CHILD, [q["dir"], "", tokens])
        _progress(f"glm-10b {quant_type}: from the quantized checkpoint", q["from_checkpoint"])
        q["from_fp16"] = run_child(_LOAD_CHILD, [src, quant_type, tokens])
        _progress(f"glm-10b {quant_type}: from fp16, quantized on load", q["from_fp16"])
        q["rss_target"] = RSS_TARGETS_10B[quant_type]
        q["meets_rss_target"] = max(q["from_checkpoint"]["peak"], q["from_fp16"]["peak"]) <= q["rss_target"]
        q["bandwidth"] = glm_10b_bandwidth()  # measured right after the decodes it is the basis of
        _progress(f"glm-10b {quant_type}: fp32 GEMV bandwidth", {"bandwidth": q["bandwidth"]})
        for run in (q["from_checkpoint"], q["from_fp16"]):
            run["roofline_fraction"] = run["weight_bytes"] / q["bandwidth"] / run["s_per_token"]
        out[quant_type] = q
    return out


def _progress(what: str, result: dict) -> None:
    """A figure as soon as it is measured (the glm-10b part takes many minutes), on stderr."""
    print(f"{what}: {json.dumps(result)}", file=sys.stderr, flush=True)


def targets(r: dict) -> dict:
    """Which of the issue's targets this run met."""
    met = {}
    for quant_type in QUANT_TYPES:
        short = SHORT[quant_type]
        met[f"{short}_disk"] = r["disk_ratio"][quant_type] <= DISK_TARGETS[quant_type]
        met[f"{short}_rss"] = all(m["within_bound"] for m in r["memory"][quant_type].values())
        met[f"{short}_roofline_b1"] = r["speed"][f"{short}_b1_roofline_fraction"] >= ROOFLINE_TARGETS[quant_type]
    met["int8_faster_than_fp32"] = r["speed"]["int8_vs_fp32_b1"] > 1
    if "glm_10b" in r:
        met.update(targets_glm_10b(r["glm_10b"]))
    return met


def targets_glm_10b(g: dict) -> dict:
    """The glm-10b targets this run met (each from the slower of the two loads)."""
    met = {}
    for quant_type in QUANT_TYPES:
        if quant_type not in g:
            continue
        q, short = g[quant_type], SHORT[quant_type]
        met[f"glm10b_{short}_rss"] = q["meets_rss_target"]
        runs = (q["from_checkpoint"], q["from_fp16"])
        slower = min(run["roofline_fraction"] for run in runs)
        met[f"glm10b_{short}_roofline_b1"] = slower >= ROOFLINE_TARGETS[quant_type]
        if quant_type == "weight_only_int8":
            met["glm10b_int8_speed"] = max(run["s_per_token"] for run in runs) <= SPEED_TARGET_10B
    return met


def markdown(r: dict) -> str:
    """Tables: sizes and memory, speed (operator and fallback), glm-10b."""
    rows = [f"| {r['model']} | on disk (ratio to fp32; target) | quantize-on-load peak RSS / bound | quantized "
            "checkpoint load peak RSS / bound |", "|---|---|---|---|"]
    for quant_type in QUANT_TYPES:
        m = r["memory"][quant_type]
        rows.append(f"| {SHORT[quant_type]} | {r['quantized'][quant_type]['disk_bytes'] / GB:.3f} GB "
                    f"({r['disk_ratio'][quant_type]:.3f}x; <= {DISK_TARGETS[quant_type]}) | "
                    f"{m['on_load']['peak'] / GB:.2f} / {m['on_load']['bound'] / GB:.2f} GB | "
                    f"{m['checkpoint']['peak'] / GB:.2f} / {m['checkpoint']['bound'] / GB:.2f} GB |")
    rows += ["", f"| {r['model']} decode | route | batch 1 s/token (fraction of its roofline) | batch 8 s/step "
             "(fraction) |", "|---|---|---|---|"]
    for route in ("speed", "speed_fallback"):
        s = r[route]
        label = "C++ operator" if route == "speed" else "tiled fallback"
        fp32_label = "small-batch operator" if route == "speed" else "Paddle's matmul"  # PADDLE_GLM_CPU_OPERATORS=0
        for name in ("fp32", "int8", "int4", "int4_a8"):
            if f"{name}_b1_s" not in s:
                continue
            rows.append(f"| {LABELS[name]} | {fp32_label if name == 'fp32' else label} | {s[f'{name}_b1_s']:.4f} "
                        f"({s[f'{name}_b1_roofline_fraction']:.2f}) | {s[f'{name}_b8_s']:.4f} "
                        f"({s[f'{name}_b8_roofline_fraction']:.2f}) |")
    rows.append(f"\nfp32 GEMV bandwidth (the rooflines' basis): {r['speed']['bandwidth'] / GB:.1f} GB/s; int8 is "
                f"{r['speed']['int8_vs_fp32_b1']:.2f}x as fast as fp32 at batch 1. Targets: int8 >= 0.7 and int4 "
                ">= 0.5 of their rooflines at batch 1.")
    s = r["speed"]
    rows.append(f"\nA batch-1 step also reads {s['cache_bytes'] / GB:.3f} GB of KV cache ({s['context']}-token "
                f"context), which "
                f"the weights-only rooflines leave out; against the weights and the cache, int8 reaches "
                f"{s['int8_b1_with_cache_fraction']:.2f} and int4 {s['int4_b1_with_cache_fraction']:.2f}.")
    if "int4_a8_b1_s" in s:
        rows.append(f"\nint4 with its activations rounded to int8 (`--int8-activations`, off by default): "
                    f"{s['int4_a8_b1_roofline_fraction']:.2f} of its roofline at batch 1 "
                    f"({s['int4_b1_s'] / s['int4_a8_b1_s']:.2f}x int4's speed; "
                    f"{s['int4_a8_b1_with_cache_fraction']:.2f} with the KV cache); the targets are the default's.")
    if "int4_products_cache_rate" in s:
        rows.append(f"\nThe block products alone at batch 1 (each a call of its own), stored GB/s from memory / "
                    f"from the CPU's caches (one layer's, over and over): int8 "
                    f"{s['int8_products_memory_rate'] / GB:.1f} / {s['int8_products_cache_rate'] / GB:.1f}, int4 "
                    f"{s['int4_products_memory_rate'] / GB:.1f} / "
                    f"{s['int4_products_cache_rate'] / GB:.1f}" + (
                        f", int4 with int8 activations {s['int4_a8_products_memory_rate'] / GB:.1f} / "
                        f"{s['int4_a8_products_cache_rate'] / GB:.1f}" if "int4_a8_products_memory_rate" in s else "")
                    + f" (the fp32 basis: {s['bandwidth'] / GB:.1f}); from "
                    f"memory they take {s['int8_block_products_s'] * 1e3:.1f} ms (int8) and "
                    f"{s['int4_block_products_s'] * 1e3:.1f} ms (int4) of a step. A rate no faster from cache than "
                    "from memory is the kernel's arithmetic, not the memory.")
    if "glm_10b" in r:
        rows += ["", markdown_glm_10b(r["glm_10b"])]
    missed = [name for name, ok in r["targets"].items() if not ok]
    rows.append("\nTargets met: " + ("all" if not missed else "all but " + ", ".join(missed)) + ".")
    return "\n".join(rows)


def markdown_glm_10b(g: dict) -> str:
    """The glm-10b-chinese table: quantize, then load and decode from the quantized and the fp16 checkpoints."""
    rows = [f"| glm-10b-chinese (fp16 {g['fp16_bytes'] / GB:.1f} GB, 7 sparse shards) | quantize: s, peak "
             "RSS | on disk | from the quantized checkpoint: peak RSS, s/token (fraction of the roofline) | from fp16 "
             "with quant_type: peak RSS, s/token (fraction) | RSS target |", "|---|---|---|---|---|---|"]
    for quant_type in QUANT_TYPES:
        if quant_type not in g:
            continue
        q = g[quant_type]
        quantize = f"{q['seconds']:.0f} s, {q['peak'] / GB:.2f} GB" if "seconds" in q else "(reused)"
        rows.append(f"| {SHORT[quant_type]} | {quantize} | {q['disk_bytes'] / GB:.2f} GB | "
                    f"{_load_cell(q['from_checkpoint'])} | {_load_cell(q['from_fp16'])} | "
                    f"<= {q['rss_target'] / GB:.0f} GB |")
    bandwidths = ", ".join(f"{g[qt]['bandwidth'] / GB:.1f} GB/s (after {SHORT[qt]})" for qt in QUANT_TYPES if qt in g)
    rows.append(f"\nfp32 GEMV bandwidth on glm-10b's layer shapes (the rooflines' basis, measured right after each "
                f"type's decodes): {bandwidths}. Targets: int8 >= 0.7 and int4 >= 0.5 of their rooflines, int8 <= "
                f"{SPEED_TARGET_10B} s/token.")
    missed = [name for name, ok in targets_glm_10b(g).items() if not ok]
    rows.append("\nglm-10b targets met: " + ("all" if not missed else "all but " + ", ".join(missed)) + ".")
    return "\n".join(rows)


def _load_cell(run: dict) -> str:
    return f"{run['peak'] / GB:.2f} GB, {run['s_per_token']:.3f} ({run['roofline_fraction']:.2f})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "_work"))
    parser.add_argument("--model", default=MODEL, help="preset in configs/ (the targets are for glm-large)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the speed measurement (medians reported)")
    parser.add_argument("--tokens", type=int, default=16, help="decode steps per speed measurement")
    parser.add_argument("--glm-10b", action="store_true", help="also the full-size glm-10b-chinese part (~14 GB)")
    parser.add_argument("--glm-10b-int8-only", action="store_true", help="glm-10b: int8 only")
    parser.add_argument("--glm-10b-only", action="store_true", help="the glm-10b part only (implies --glm-10b)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    if args.glm_10b_only:
        r = {"benchmark": "quantization", "model": GLM_10B,
             "glm_10b": glm_10b(args.work, QUANT_TYPES[:1] if args.glm_10b_int8_only else QUANT_TYPES)}
        r["targets"] = targets_glm_10b(r["glm_10b"])
        print(markdown_glm_10b(r["glm_10b"]))
        print(json.dumps(r))
        return 0 if all(r["targets"].values()) else 1
    src = os.path.join(args.work, f"{args.model}-fp32-pdparams")
    make_checkpoint(src, args.model)
    r = {"benchmark": "quantization", "model": args.model, "fp32_disk_bytes": directory_bytes(src)}
    r["quantized"] = quantize_all(src, args.work, args.model, QUANT_TYPES)
    r["disk_ratio"] = {qt: q["disk_bytes"] / r["fp32_disk_bytes"] for qt, q in r["quantized"].items()}
    r["memory"] = memory(src, r["quantized"])
    dirs = {"fp32": src, **{qt: q["dir"] for qt, q in r["quantized"].items()}}
    context = contexts_for(GLMConfig.from_name(args.model))["mid"]  # bench_generate's: 256 of 1024 positions
    r["speed"] = speed(dirs, args.rounds, args.tokens, context, fallback=False)
    r["speed_fallback"] = speed(dirs, 1, args.tokens, context, fallback=True)
    if args.glm_10b:
        r["glm_10b"] = glm_10b(args.work, QUANT_TYPES[:1] if args.glm_10b_int8_only else QUANT_TYPES)
    r["targets"] = targets(r)
    print(markdown(r))
    print(json.dumps(r))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(r, f, indent=2)
    return 0 if all(r["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
