"""Benchmark: loading a glm-large-chinese-shaped fp32 checkpoint (3 pdparams shards, ~1.42 GB).

Each loader runs in a fresh subprocess that reports its RSS after imports, its load
time and its peak RSS (``ru_maxrss``): ours (``GLMForConditionalGeneration.from_pretrained``)
and PaddleNLP 2.8.1's ``from_pretrained`` on the same files. Targets: our peak RSS
<= RSS after import + model bytes + largest shard + 300 MB, and <= PaddleNLP's peak.

    python benchmarks/bench_load.py [--model glm-large-chinese] [--work benchmarks/_work] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from bench_convert import MODEL, make_checkpoint

SLACK = 300e6  # bytes allowed beyond model + largest shard, per the issue

_CHILD = r"""
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
import psutil
which, path = sys.argv[1], sys.argv[2]
if which == "ours":
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
    src = os.path.join(args.work, f"{args.model}-fp32-pdparams")
    make_checkpoint(src, args.model)
    shards = [os.path.getsize(os.path.join(src, n)) for n in os.listdir(src) if n.endswith(".pdparams")]
    ours = measure("ours", src)
    bound = ours["after_import"] + ours["model_bytes"] + max(shards) + SLACK
    r = {"benchmark": "load", "model": args.model, "dtype": "float32", "shards": len(shards),
         "checkpoint_bytes": sum(shards), "ours": ours, "ours_bound": int(bound),
         "ours_within_bound": ours["peak"] <= bound}
    if not args.no_paddlenlp:
        r["paddlenlp"] = measure("paddlenlp", src)
        r["peak_ratio_vs_paddlenlp"] = ours["peak"] / r["paddlenlp"]["peak"]
        r["time_ratio_vs_paddlenlp"] = ours["seconds"] / r["paddlenlp"]["seconds"]
    gb = 1e9
    print(f"| load ({args.model} shape, fp32, {len(shards)} pdparams shards) | ours | PaddleNLP 2.8.1 |\n|---|---|---|")
    theirs = r.get("paddlenlp", {})
    for label, key in (("load seconds", "seconds"), ("RSS after import, GB", "after_import"),
                       ("peak RSS, GB", "peak")):
        fmt = (lambda v: f"{v:.1f}") if key == "seconds" else (lambda v: f"{v / gb:.2f}")
        print(f"| {label} | {fmt(ours[key])} | {fmt(theirs[key]) if key in theirs else '-'} |")
    print(f"| our bound: after import + model + largest shard + 0.3 GB | {bound / gb:.2f} | |")
    print(json.dumps(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0 if r["ours_within_bound"] and r.get("peak_ratio_vs_paddlenlp", 0) <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
