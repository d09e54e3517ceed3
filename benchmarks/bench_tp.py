"""Tensor parallelism on CPU: per-rank peak RSS and decode speed, 1 process vs 2 ranks (glm-large-chinese shape).

Every run loads the same random fp32 checkpoint (3 pdparams shards, as bench_load.py) in fresh
processes: one plain process with paddle_glm's default threads (every core), one with a single
thread, then a 2-process job started with ``python -m paddle.distributed.launch --nproc_per_node
2`` (``tensor_parallel.from_pretrained``, gloo; each rank gets half the cores). Each
process reports its RSS after imports, its peak RSS after loading (``ru_maxrss``), the parameter
bytes it holds, and the median seconds per new token of a greedy decode (gaps between streamer
callbacks, prefill excluded).

The ranks share this machine's cores, so the decode figures document the cost of the
collectives (two all_reduces per layer and one all_gather of the logits per step), not a
speedup: against the 1-thread process, a rank does half the work on its own core, so 0.5 would
mean free collectives. On GPUs each rank has its own device and memory bandwidth (not measured).
Target: each rank's peak RSS stays below the single process's.

    python benchmarks/bench_tp.py [--model glm-large-chinese] [--work benchmarks/_work] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial

from paddle_glm.devices import THREADS_ENV, cpu_thread_count
from paddle_glm.io_utils import read_json_object

HERE = os.path.dirname(os.path.abspath(__file__))
CONTEXT, TOKENS = 128, 16  # decode measurement: prompt tokens, new tokens


def child(out_dir: str, path: str, label: str) -> None:
    """One measured process: a plain one, or a rank of a launched job (then tensor-parallel)."""
    import warnings

    warnings.filterwarnings("ignore")
    import paddle
    import psutil
    from bench_generate import StepTimer, glm_inputs

    from paddle_glm import GLMForConditionalGeneration, tensor_parallel
    from paddle_glm.distributed import in_launched_job

    parallel = in_launched_job()
    if parallel:
        paddle.distributed.init_parallel_env()
    after_import = psutil.Process().memory_info().rss
    start = time.perf_counter()
    load = partial(tensor_parallel.from_pretrained, GLMForConditionalGeneration) if parallel else \
        GLMForConditionalGeneration.from_pretrained
    model = load(path, show_progress=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ids, pos, mask = glm_inputs(1, CONTEXT, TOKENS + 1, model.config.vocab_size)
    timer = StepTimer()
    model.generate(ids, pos, mask, max_new_tokens=TOKENS + 1, eos_token_id=None, bad_words_ids=[], streamer=timer)
    label = str(paddle.distributed.get_rank()) if parallel else label
    result = {"after_import": after_import, "load_seconds": seconds, "peak_after_load": peak,
              "param_bytes": sum(int(p.numel()) * p.element_size() for p in model.parameters()),
              "decode_s_per_token": timer.per_token()}
    with open(os.path.join(out_dir, f"{label}.json"), "w") as f:
        json.dump(result, f)


def run(out_dir: str, path: str, ranks: int, label: str = "single", threads: str = "") -> None:
    """Measure in a fresh process (``threads``: its CPU thread count, default paddle_glm's), or in ``ranks`` ranks."""
    script = [os.path.abspath(__file__), "--child", out_dir, path, label]
    env = dict(os.environ, **({THREADS_ENV: threads} if threads else {}))
    if ranks == 1:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(ranks),
                   "--log_dir", os.path.join(out_dir, "logs"), script[0], "--", *script[1:]]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=HERE, env=env)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{' '.join(command)} failed with exit code {proc.returncode}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=os.path.join(HERE, "_work"))
    parser.add_argument("--model", default="glm-large-chinese", help="preset in configs/")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", nargs=3, metavar=("OUT", "MODEL_DIR", "LABEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    from bench_convert import make_checkpoint

    src = os.path.join(args.work, f"{args.model}-fp32-pdparams")
    make_checkpoint(src, args.model)
    with tempfile.TemporaryDirectory() as out:
        run(out, src, 1)
        run(out, src, 1, "single-1-thread", threads="1")
        run(out, src, 2)
        single = read_json_object(os.path.join(out, "single.json"))
        one_thread = read_json_object(os.path.join(out, "single-1-thread.json"))
        ranks = [read_json_object(os.path.join(out, f"{r}.json")) for r in range(2)]
    r = {"benchmark": "tp", "model": args.model, "dtype": "float32", "context": CONTEXT, "tokens": TOKENS,
         "single": single, "single_1_thread": one_thread, "ranks": ranks,
         "rank_peak_ratio": max(x["peak_after_load"] for x in ranks) / single["peak_after_load"],
         "rank_param_share": max(x["param_bytes"] for x in ranks) / single["param_bytes"],
         "decode_ratio": statistics.median([x["decode_s_per_token"] for x in ranks]) / single["decode_s_per_token"]}
    r["decode_ratio_1_thread"] = (statistics.median([x["decode_s_per_token"] for x in ranks])
                                  / one_thread["decode_s_per_token"])
    r["ranks_below_single_peak"] = r["rank_peak_ratio"] < 1
    gb = 1e9
    threads = cpu_thread_count()
    print(f"| {args.model} shape, fp32, CPU | 1 process ({threads} threads) | 1 process (1 thread) | "
          f"2 ranks: rank 0 ({max(1, threads // 2)} thread) | rank 1 |\n|---|---|---|---|---|")
    rows = (("parameters held, GB", "param_bytes", gb, 2), ("RSS after import, GB", "after_import", gb, 2),
            ("peak RSS after loading, GB", "peak_after_load", gb, 2), ("load seconds", "load_seconds", 1, 1),
            (f"decode s/token ({CONTEXT}-token context)", "decode_s_per_token", 1, 3))
    for label, key, unit, digits in rows:
        print(f"| {label} | " + " | ".join(f"{x[key] / unit:.{digits}f}" for x in [single, one_thread, *ranks]) + " |")
    print(f"| per-rank peak RSS / 1 process's | | | {r['rank_peak_ratio']:.2f} | |")
    print(f"| decode time, rank / 1 process ({threads} threads; the same cores, so not a speedup) | | | "
          f"{r['decode_ratio']:.2f} | |")
    print(f"| decode time, rank / 1 process (1 thread): 0.5 = half the work and free collectives | | | "
          f"{r['decode_ratio_1_thread']:.2f} | |")
    print(json.dumps(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0 if r["ranks_below_single_peak"] else 1


if __name__ == "__main__":
    sys.exit(main())
