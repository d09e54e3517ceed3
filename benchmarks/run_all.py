"""Run the load, convert, generate, tensor-parallel, serve and train benchmarks and rewrite benchmarks/RESULTS.md.

    python benchmarks/run_all.py [--skip-paddlenlp] [--model glm-large-chinese] [--work DIR] [--out DIR]

``--model glm-tiny-test --work W --out O`` runs every script in seconds (a check that they
work; the targets are for glm-large).

Each benchmark runs in its own process and prints a markdown table (copied here
as is) and a JSON line (kept in RESULTS.json). Absolute times on a shared
machine are noisy; the ratios are measured side by side within one run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = [
    ("Loading", ["bench_load.py"]),
    ("Conversion", ["bench_convert.py"]),
    ("Generation", ["bench_generate.py"]),
    ("Tensor parallelism", ["bench_tp.py"]),
    ("Serving", ["bench_serve.py"]),
    ("Training", ["bench_train.py"]),
]
PADDLENLP_SIDE = ("bench_load.py", "bench_generate.py", "bench_train.py")  # the scripts that also measure PaddleNLP


def machine() -> str:
    import paddle
    import psutil

    from paddle_glm.devices import cpu_thread_count

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM; Python "
            f"{platform.python_version()}, paddlepaddle {paddle.__version__} (CPU), "
            f"{cpu_thread_count()} CPU threads (paddle_glm's default: every usable core)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-paddlenlp", action="store_true", help="ours only (no PaddleNLP side)")
    parser.add_argument("--model", default="glm-large-chinese", help="preset in configs/")
    parser.add_argument("--work", default=os.path.join(HERE, "_work"), help="generated checkpoints (reused)")
    parser.add_argument("--out", default=HERE, help="directory for RESULTS.md and RESULTS.json")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    work, default_work = os.path.abspath(args.work), os.path.join(HERE, "_work")  # the scripts run in HERE
    os.makedirs(work, exist_ok=True)
    sections, results, status = [], {}, 0
    for title, command in BENCHMARKS:
        extra = ["--no-paddlenlp"] if args.skip_paddlenlp and command[0] in PADDLENLP_SIDE else []
        if args.model != "glm-large-chinese":
            extra += ["--model", args.model]
        if command[0] in ("bench_load.py", "bench_convert.py", "bench_tp.py", "bench_train.py") and work != default_work:
            extra += ["--work", work]
        shown = " ".join(["python", f"benchmarks/{command[0]}", *command[1:], *extra])
        print(f"running {shown} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, os.path.join(HERE, command[0]), *command[1:], *extra],
                              capture_output=True, text=True, cwd=HERE)
        lines = proc.stdout.strip().splitlines()
        table = "\n".join(line for line in lines if line.startswith("|"))
        json_lines = [line for line in lines if line.startswith("{")]
        if proc.returncode not in (0, 1) or not json_lines:  # 1 = ran, but a target was missed
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"{shown} failed with exit code {proc.returncode}")
        status |= proc.returncode
        results[command[0]] = json.loads(json_lines[-1])
        sections.append(f"## {title}\n\nCommand: `{shown}`\n\n{table}\n")
    header = (f"# Benchmark results\n\nWritten by `{' '.join(['python', 'benchmarks/run_all.py', *argv])}` on "
              f"{datetime.date.today().isoformat()}.\n\nMachine: {machine()}.\n\n"
              "Times are medians on a shared machine; compare the ratios, which are measured side by side "
              "in one run. Raw figures: `RESULTS.json`.\n\n")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "RESULTS.md"), "w", encoding="utf-8") as f:
        f.write(header + "\n".join(sections))
    with open(os.path.join(args.out, "RESULTS.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(header + "\n".join(sections))
    return status


if __name__ == "__main__":
    sys.exit(main())
