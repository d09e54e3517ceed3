"""Benchmark: loading a glm-large-chinese-shaped fp32 checkpoint (3 uneven pdparams shards, ~1.42 GB).

The shards hold about 50%, 30% and 20% of the weights and are written by plain ``pickle.dump``
(protocol 4, memo on), as ``paddle.save`` writes them. Each loader runs in a fresh subprocess
that reports its RSS after imports, its load time and its peak RSS (``ru_maxrss``): ours
(``GLMForConditionalGeneration.from_pretrained``), ours again with the garbage collector
disabled (memory must not depend on it), and PaddleNLP 2.8.1's ``from_pretrained`` on the
same files. Targets: our peak RSS, with and without the collector, <= RSS after import +
model bytes + largest shard + 300 MB, and <= PaddleNLP's peak.

    python benchmarks/bench_load.py [--model glm-large-chinese] [--work benchmarks/_work] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys

import numpy as np
from bench_convert import MODEL, preset_shapes

SLACK = 300e6  # bytes allowed beyond model + largest shard, per the issue
SHARD_FRACTIONS = (0.5, 0.3, 0.2)  # of the weight bytes, in order: deliberately uneven

_CHILD = r"""
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
import psutil
which, path = sys.argv[1], sys.argv[2]
if which == "ours-nogc":
    import gc
    gc.disable()
if which.startswith("ours"):
    import paddle
    from paddle_glm import GLMForConditionalGeneration as Model
    kwargs = {}
else:
    import paddle
    from paddlenlp.transformers import GLMForConditionalGeneration as Model
    kwargs = {"dtype": "float32"}
after_import = psutil.Process().memory_info().rss
start = time.perf_counter()
model = Model.from_pretrained(path, **kwargs)
seconds = time.perf_counter() - start
model_bytes = sum(int(p.numel()) * p.element_size() for p in model.parameters())
print(json.dumps({"after_import": after_import, "seconds": seconds, "model_bytes": model_bytes,
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def make_uneven_checkpoint(directory: str, model: str = MODEL, seed: int = 0) -> None:
    """Random fp32 weights of preset ``model`` in ``SHARD_FRACTIONS`` pdparams shards written by plain
    ``pickle.dump`` (``paddle.save``'s format: ``{name: ndarray}`` plus PaddleNLP's name map), plus
    index and config (kept if already there)."""
    index = os.path.join(directory, "model_state.pdparams.index.json")
    if os.path.isfile(index):
        return
    from paddle_glm.checkpoint.safe_pickle import STRUCTURED_NAME_KEY
    from paddle_glm.io_utils import atomic_output_dir

    config, shapes = preset_shapes(model)
    total = sum(int(np.prod(shape)) * 4 for _, shape in shapes)
    groups, filled, limit = [[]], 0, SHARD_FRACTIONS[0] * total
    for name, shape in shapes:
        if groups[-1] and filled >= limit and len(groups) < len(SHARD_FRACTIONS):
            groups.append([])
            limit += SHARD_FRACTIONS[len(groups) - 1] * total
        groups[-1].append((name, shape))
        filled += int(np.prod(shape)) * 4
    rng = np.random.default_rng(seed)
    print(f"generating {total / 1e9:.2f} GB of {model} weights in {directory} ...", file=sys.stderr)
    files = [f"model_state-{i:05d}-of-{len(groups):05d}.pdparams" for i in range(1, len(groups) + 1)]
    with atomic_output_dir(directory, overwrite=True) as tmp:
        for group, file in zip(groups, files):
            state = {name: rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02) for name, shape in group}
            state[STRUCTURED_NAME_KEY] = {name: name for name, _ in group}
            with open(os.path.join(tmp, file), "wb") as f:
                pickle.dump(state, f, protocol=4)
            del state
        weight_map = {name: file for group, file in zip(groups, files) for name, _ in group}
        with open(os.path.join(tmp, "model_state.pdparams.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        config.save_pretrained(tmp)


def measure(which: str, path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, which, path], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "_work"))
    parser.add_argument("--model", default=MODEL, help="preset in configs/ (the targets are for glm-large)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--no-paddlenlp", action="store_true")
    args = parser.parse_args(argv)
    src = os.path.join(args.work, f"{args.model}-fp32-pdparams-uneven")
    make_uneven_checkpoint(src, args.model)
    shards = sorted(os.path.getsize(os.path.join(src, n)) for n in os.listdir(src) if n.endswith(".pdparams"))
    ours = measure("ours", src)
    nogc = measure("ours-nogc", src)
    bound = ours["after_import"] + ours["model_bytes"] + max(shards) + SLACK
    r = {"benchmark": "load", "model": args.model, "dtype": "float32", "shards": len(shards),
         "shard_bytes": shards, "checkpoint_bytes": sum(shards), "ours": ours, "ours_gc_disabled": nogc,
         "ours_bound": int(bound), "ours_within_bound": max(ours["peak"], nogc["peak"]) <= bound}
    if not args.no_paddlenlp:
        r["paddlenlp"] = measure("paddlenlp", src)
        r["peak_ratio_vs_paddlenlp"] = ours["peak"] / r["paddlenlp"]["peak"]
        r["time_ratio_vs_paddlenlp"] = ours["seconds"] / r["paddlenlp"]["seconds"]
    gb = 1e9
    sizes = ", ".join(f"{n / gb:.2f}" for n in shards)
    print(f"| load ({args.model} shape, fp32, {len(shards)} plain-pickle pdparams shards of {sizes} GB) | ours | "
          "PaddleNLP 2.8.1 |\n|---|---|---|")
    theirs = r.get("paddlenlp", {})
    for label, key in (("load seconds", "seconds"), ("RSS after import, GB", "after_import"),
                       ("peak RSS, GB", "peak")):
        fmt = (lambda v: f"{v:.1f}") if key == "seconds" else (lambda v: f"{v / gb:.2f}")
        print(f"| {label} | {fmt(ours[key])} | {fmt(theirs[key]) if key in theirs else '-'} |")
    print(f"| peak RSS with the garbage collector disabled, GB | {nogc['peak'] / gb:.2f} | |")
    print(f"| our bound: after import + model + largest shard + 0.3 GB | {bound / gb:.2f} | |")
    print(json.dumps(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0 if r["ours_within_bound"] and r.get("peak_ratio_vs_paddlenlp", 0) <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
