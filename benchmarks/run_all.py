"""Run the load, convert, generate, prefill, tensor-parallel, serve, train and quantization benchmarks; rewrite
RESULTS.md.

    python benchmarks/run_all.py [--skip-paddlenlp] [--model glm-large-chinese] [--work DIR] [--out DIR]
                                 [--only bench_serve.py ...]

``--only`` reruns the named scripts and replaces their sections of an existing RESULTS.md
(and their entries of RESULTS.json), saying so in its header.

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
    ("Prefill", ["bench_prefill.py"]),
    ("Tensor parallelism", ["bench_tp.py"]),
    ("Serving", ["bench_serve.py"]),
    ("Serving: staggered arrivals", ["bench_serve.py", "--staggered"]),
    ("Training", ["bench_train.py"]),
    ("Quantization", ["bench_quant.py"]),
    ("Quantization: glm-10b-chinese at full size", ["bench_quant.py", "--glm-10b-only"]),
]
FULL_SIZE_ONLY = ("Quantization: glm-10b-chinese at full size",)  # real-shape runs, whatever --model says
# with another --model (a check that the scripts work), these sections run briefly
BRIEF = {"Serving: staggered arrivals": ["--arrivals", "4", "--mean-gap", "0.2", "--rounds", "1"],
         "Quantization": ["--rounds", "1", "--tokens", "4"], "Prefill": ["--rounds", "1", "--lengths", "8", "100"]}
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
    parser.add_argument("--only", nargs="+", metavar="SCRIPT",
                        help="rerun these scripts only and replace their sections of the existing results")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only or []) - {command[0] for _, command in BENCHMARKS})
    if unknown:
        parser.error(f"--only: unknown script(s) {', '.join(unknown)}")
    work, default_work = os.path.abspath(args.work), os.path.join(HERE, "_work")  # the scripts run in HERE
    os.makedirs(work, exist_ok=True)
    sections, results, status = {}, {}, 0
    for title, command in BENCHMARKS:
        if args.only and command[0] not in args.only:
            continue
        if title in FULL_SIZE_ONLY and args.model != "glm-large-chinese":
            print(f"skipping {title}: it runs only with the default --model", file=sys.stderr, flush=True)
            continue
        extra = ["--no-paddlenlp"] if args.skip_paddlenlp and command[0] in PADDLENLP_SIDE else []
        if args.model != "glm-large-chinese":
            extra += ["--model", args.model, *BRIEF.get(title, [])]
        uses_work = command[0] in ("bench_load.py", "bench_convert.py", "bench_tp.py", "bench_train.py",
                                   "bench_quant.py")
        if uses_work and work != default_work:
            extra += ["--work", work]
        shown = " ".join(["python", f"benchmarks/{command[0]}", *command[1:], *extra])
        print(f"running {shown} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, os.path.join(HERE, command[0]), *command[1:], *extra],
                              capture_output=True, text=True, cwd=HERE)
        lines = proc.stdout.strip().splitlines()
        table = "\n".join(line if line.startswith("|") else "" for line in lines
                          if line.startswith("|") or not line.strip())  # tables, a blank line between them
        json_lines = [line for line in lines if line.startswith("{")]
        if proc.returncode not in (0, 1) or not json_lines:  # 1 = ran, but a target was missed
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"{shown} failed with exit code {proc.returncode}")
        status |= proc.returncode
        results[" ".join(command)] = json.loads(json_lines[-1])
        sections[title] = f"## {title}\n\nCommand: `{shown}`\n\n{table}\n"
    command_line = " ".join(["python", "benchmarks/run_all.py", *argv])
    today = datetime.date.today().isoformat()
    if args.only:
        header, sections, results = _merge_into_previous(args.out, sections, results, command_line, today)
    else:
        header = (f"# Benchmark results\n\nWritten by `{command_line}` on {today}.\n\nMachine: {machine()}.\n\n"
                  "Times are medians on a shared machine; compare the ratios, which are measured side by side "
                  "in one run. Raw figures: `RESULTS.json`.\n\n")
    text = header + "\n".join(sections[title] for title, _ in BENCHMARKS if title in sections)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "RESULTS.md"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(args.out, "RESULTS.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(text)
    return status


def _merge_into_previous(out: str, sections: dict, results: dict, command_line: str, today: str):
    """The previous RESULTS.md header (with a line on this rerun) and sections, the new ones replacing theirs."""
    with open(os.path.join(out, "RESULTS.md"), encoding="utf-8") as f:
        previous = f.read()
    with open(os.path.join(out, "RESULTS.json"), encoding="utf-8") as f:
        previous_results = json.load(f)
    header, *old = previous.split("\n## ")
    merged = {part.split("\n", 1)[0]: "## " + part.rstrip("\n") + "\n" for part in old}
    merged.update(sections)
    note = f"The {', '.join(sections)} section(s) again by `{command_line}` on {today}.\n\n"
    return header.rstrip("\n") + "\n\n" + note, merged, {**previous_results, **results}


if __name__ == "__main__":
    sys.exit(main())
