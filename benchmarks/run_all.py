"""Run the load, convert and generate benchmarks and rewrite benchmarks/RESULTS.md.

    python benchmarks/run_all.py [--skip-paddlenlp]

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
]


def machine() -> str:
    import paddle
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM; Python "
            f"{platform.python_version()}, paddlepaddle {paddle.__version__} (CPU), "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-paddlenlp", action="store_true", help="ours only (no PaddleNLP side)")
    args = parser.parse_args(argv)
    sections, results, status = [], {}, 0
    for title, command in BENCHMARKS:
        extra = ["--no-paddlenlp"] if args.skip_paddlenlp and command[0] != "bench_convert.py" else []
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
    header = (f"# Benchmark results\n\nWritten by `python benchmarks/run_all.py` on "
              f"{datetime.date.today().isoformat()}.\n\nMachine: {machine()}.\n\n"
              "Times are medians on a shared machine; compare the ratios, which are measured side by side "
              "in one run. Raw figures: `RESULTS.json`.\n\n")
    with open(os.path.join(HERE, "RESULTS.md"), "w", encoding="utf-8") as f:
        f.write(header + "\n".join(sections))
    with open(os.path.join(HERE, "RESULTS.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(open(os.path.join(HERE, "RESULTS.md"), encoding="utf-8").read())
    return status


if __name__ == "__main__":
    sys.exit(main())
