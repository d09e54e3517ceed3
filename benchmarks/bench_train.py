"""Benchmark: one training step (forward + backward + AdamW), fp32, CPU, ours vs PaddleNLP 2.8.1.

Batch 2 x 512 tokens (a 448-token context and a 64-token target span per row, GLM's
blank-infilling layout; fewer for a preset with fewer positions), identical random weights, the
same CPU threads. Each case runs in its own process, which takes one step at a time on request
and reports its wall and CPU seconds (on a shared machine other processes' load inflates the
first, not the second), its RSS after setup (imports, weights, optimizer) and its peak RSS
(``ru_maxrss``). Two configurations:

* the preset (glm-large-chinese): the median step after one warm-up step of
  - ours, full finetuning, vs PaddleNLP's ``GLMForConditionalGeneration`` (target: no slower,
    judged on CPU seconds per step);
  - ours with ``recompute=True`` (target: at least halves the activation memory, i.e. peak RSS
    minus RSS after setup minus gradients and AdamW's two moments, which appear during the steps);
  - ours with a LoRA adapter (r=8 on the qkv projections): step time and peak RSS;
* a small model (6 layers x 512 hidden, 8 heads, vocabulary 5000): ours and PaddleNLP in two live
  processes, their steps interleaved (the order alternating by round), best of ``--rounds`` after
  one warm-up step each (target: no slower, on CPU seconds).

    python benchmarks/bench_train.py [--model glm-large-chinese] [--work benchmarks/_work] [--steps 3]
                                     [--rounds 4] [--small-only] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from bench_convert import MODEL, make_checkpoint

BATCH, TOKENS = 2, 512  # per row: 7/8 context, 1/8 target span (fewer tokens if the preset has fewer positions)
# The small configuration (GLMConfig's defaults otherwise: dropout 0.1 everywhere, as glm-large)
SMALL = dict(num_layers=6, hidden_size=512, num_attention_heads=8, vocab_size=5000, max_sequence_length=512)

# One case in a process: set up, then one step per "step" line on stdin (a JSON line of its times
# back), and the memory figures on "quit".
_CHILD = r"""
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np
import paddle
import psutil
from paddle_glm.devices import cpu_thread_count, set_cpu_threads
from paddle_glm.glm_layout import blank_infilling_mask, blank_infilling_positions

case, path, batch, context, span = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
if case == "paddlenlp":
    from paddlenlp.transformers import GLMForConditionalGeneration
    model = GLMForConditionalGeneration.from_pretrained(path, dtype="float32")
else:
    from paddle_glm import GLMForConditionalGeneration
    model = GLMForConditionalGeneration.from_pretrained(path, recompute=case == "recompute", show_progress=False)
    if case == "lora":
        from paddle_glm.lora import LoRAConfig, apply_lora
        apply_lora(model, LoRAConfig(r=8, lora_alpha=16))
threads = cpu_thread_count()
set_cpu_threads(threads)  # the same threads for both implementations (Paddle's own default is one)
model.train()
trainable = [p for p in model.parameters() if not p.stop_gradient]
optimizer = paddle.optimizer.AdamW(1e-5, parameters=trainable, weight_decay=0.01)

# GLM's blank-infilling layout: every row sees the context; the span is causal within itself.
total = context + span
rng = np.random.default_rng(0)
vocab = model.config.vocab_size
ids = rng.integers(0, vocab - 100, size=(batch, total)).astype("int64")
positions = blank_infilling_positions(np.full([batch], context - 1), context, span)  # [b, 2, total]
mask = blank_infilling_mask(np.ones([batch, context], dtype="int64"), span)  # [b, 1, total, total]
labels = np.zeros((batch, total), dtype="int64")
labels[:, context:] = rng.integers(0, vocab - 100, size=(batch, span))
loss_mask = np.zeros((batch, total), dtype="float32")
loss_mask[:, context:] = 1
inputs = dict(input_ids=paddle.to_tensor(ids), position_ids=paddle.to_tensor(positions),
              attention_mask=paddle.to_tensor(mask), labels=paddle.to_tensor(labels),
              loss_mask=paddle.to_tensor(loss_mask))
if case == "paddlenlp":
    inputs["return_dict"] = True

after_setup = psutil.Process().memory_info().rss
print(json.dumps({"ready": True}), flush=True)
loss = None
for command in sys.stdin:
    if command.strip() != "step":
        break
    start, cpu_start = time.perf_counter(), time.process_time()
    loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.clear_grad()
    print(json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start}),
          flush=True)
trainable_bytes = sum(int(p.numel()) * p.element_size() for p in trainable)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"case": case, "threads": threads, "after_setup": after_setup, "loss": float(loss),
                  "trainable_bytes": trainable_bytes, "peak": peak}))
"""


class Case:
    """One case's process: :meth:`step` runs a training step there, :meth:`close` ends it."""

    def __init__(self, case: str, path: str, context: int, span: int):
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD, case, path, str(BATCH), str(context), str(span)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.steps = []
        self._read()  # set up

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"bench_train: a case's process ended early (exit code {self.proc.wait()})")
        return json.loads(line)

    def step(self) -> dict:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        self.steps.append(self._read())
        return self.steps[-1]

    def close(self) -> dict:
        """The memory figures and the steps' times (the first step is a warm-up)."""
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        result = self._read()
        self.proc.wait()
        timed = self.steps[1:] or self.steps
        result.update(step_seconds=statistics.median(s["seconds"] for s in timed),
                      step_cpu_seconds=statistics.median(s["cpu_seconds"] for s in timed),
                      best_seconds=min(s["seconds"] for s in timed),
                      best_cpu_seconds=min(s["cpu_seconds"] for s in timed))
        # gradients + AdamW's two moments of the trainable parameters appear during the steps
        result["activations"] = result["peak"] - result["after_setup"] - 3 * result["trainable_bytes"]
        return result


def measure(case: str, path: str, steps: int, context: int, span: int) -> dict:
    """One case alone: ``steps`` steps (the first a warm-up), medians."""
    runner = Case(case, path, context, span)
    for _ in range(steps):
        runner.step()
    return runner.close()


def interleaved(cases, path: str, rounds: int, context: int, span: int) -> dict:
    """The cases in live processes side by side: a warm-up step each, then ``rounds`` rounds of one
    step each, the order alternating; the best (least) wall and CPU seconds of each case."""
    runners = {case: Case(case, path, context, span) for case in cases}
    for runner in runners.values():
        runner.step()
    for r in range(rounds):
        for case in (cases if r % 2 == 0 else cases[::-1]):
            runners[case].step()
    return {case: runner.close() for case, runner in runners.items()}


def small_checkpoint(directory: str) -> None:
    """Random weights (seed 0) of the small configuration in PaddleNLP's pdparams layout (kept if there)."""
    if os.path.isfile(os.path.join(directory, "config.json")):
        return
    import paddle

    from paddle_glm import GLMConfig, GLMForConditionalGeneration

    paddle.seed(0)
    config = GLMConfig(architectures=["GLMForConditionalGeneration"], **SMALL)
    GLMForConditionalGeneration(config).save_pretrained(directory, safe_serialization=False)


def small_comparison(work: str, rounds: int) -> dict:
    """Ours vs PaddleNLP on the small configuration, interleaved, best of ``rounds``."""
    path = os.path.join(work, "glm-small-6x512-fp32-pdparams")
    small_checkpoint(path)
    tokens = min(TOKENS, SMALL["max_sequence_length"])
    results = interleaved(["full", "paddlenlp"], path, rounds, tokens - tokens // 8, tokens // 8)
    ours, theirs = results["full"], results["paddlenlp"]
    return {"config": SMALL, "tokens": tokens, "rounds": rounds, "cases": results,
            "time_ratio_vs_paddlenlp": ours["best_seconds"] / theirs["best_seconds"],
            "cpu_time_ratio_vs_paddlenlp": ours["best_cpu_seconds"] / theirs["best_cpu_seconds"]}


def print_small(small: dict) -> None:
    print(f"| train step (6 layers x 512 hidden, 8 heads, vocabulary 5000, fp32, {BATCH} x {small['tokens']} tokens, "
          f"AdamW, interleaved, best of {small['rounds']}) | step s | step CPU s |\n|---|---|---|")
    for case, name in (("full", "ours, full"), ("paddlenlp", "PaddleNLP 2.8.1, full")):
        result = small["cases"][case]
        print(f"| {name} | {result['best_seconds']:.2f} | {result['best_cpu_seconds']:.2f} |")
    print(f"| step time, ours / PaddleNLP (target <= 1) | {small['time_ratio_vs_paddlenlp']:.2f} | "
          f"{small['cpu_time_ratio_vs_paddlenlp']:.2f} |")


def preset_comparison(model: str, work: str, steps: int, paddlenlp: bool) -> dict:
    """The preset's cases one after another (full, recompute, LoRA, PaddleNLP), medians of ``steps`` - 1 steps."""
    from paddle_glm import GLMConfig

    src = os.path.join(work, f"{model}-fp32-pdparams")
    make_checkpoint(src, model)
    tokens = min(TOKENS, GLMConfig.from_name(model).max_sequence_length)
    context, span = tokens - tokens // 8, tokens // 8
    cases = ["full", "recompute", "lora"] + (["paddlenlp"] if paddlenlp else [])
    results = {case: measure(case, src, steps, context, span) for case in cases}
    full, recompute, lora = results["full"], results["recompute"], results["lora"]
    r = {"model": model, "tokens": tokens, "steps": steps, "threads": full["threads"], "cases": results,
         "recompute_activation_ratio": recompute["activations"] / full["activations"],
         "lora_time_ratio": lora["step_seconds"] / full["step_seconds"],
         "lora_peak_ratio": lora["peak"] / full["peak"]}
    if paddlenlp:
        r["time_ratio_vs_paddlenlp"] = full["step_seconds"] / results["paddlenlp"]["step_seconds"]
        r["cpu_time_ratio_vs_paddlenlp"] = full["step_cpu_seconds"] / results["paddlenlp"]["step_cpu_seconds"]
    return r


def print_preset(r: dict) -> None:
    gb = 1e9
    print(f"| train step ({r['model']} shape, fp32, {BATCH} x {r['tokens']} tokens, AdamW, "
          f"{r['threads']} threads) | step s | step CPU s | peak RSS GB | activations GB |\n|---|---|---|---|---|")
    names = {"full": "ours, full", "recompute": "ours, full, recompute", "lora": "ours, LoRA r=8 (qkv)",
             "paddlenlp": "PaddleNLP 2.8.1, full"}
    for case, result in r["cases"].items():
        print(f"| {names[case]} | {result['step_seconds']:.1f} | {result['step_cpu_seconds']:.1f} | "
              f"{result['peak'] / gb:.2f} | {result['activations'] / gb:.2f} |")
    if "time_ratio_vs_paddlenlp" in r:
        print(f"| step time, ours / PaddleNLP (target <= 1) | {r['time_ratio_vs_paddlenlp']:.2f} | "
              f"{r['cpu_time_ratio_vs_paddlenlp']:.2f} | | |")
    print(f"| activations, recompute / plain (target <= 0.5) | | | | {r['recompute_activation_ratio']:.2f} |")
    print(f"| LoRA / full | {r['lora_time_ratio']:.2f} | | {r['lora_peak_ratio']:.2f} | |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "_work"))
    parser.add_argument("--model", default=MODEL, help="preset in configs/ (the targets are for glm-large)")
    parser.add_argument("--steps", type=int, default=3, help="steps per case of the preset; the first is a warm-up")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds of the small configuration")
    parser.add_argument("--small-only", action="store_true", help="the small configuration only (not the preset)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--no-paddlenlp", action="store_true", help="the preset's own cases only (no comparison)")
    args = parser.parse_args(argv)
    if args.small_only and args.no_paddlenlp:
        parser.error("--small-only compares with PaddleNLP: it does not go with --no-paddlenlp")
    r = {"benchmark": "train", "dtype": "float32", "batch": BATCH}
    if not args.small_only:
        r.update(preset_comparison(args.model, args.work, args.steps, not args.no_paddlenlp))
        print_preset(r)
    if not args.no_paddlenlp:
        r["small"] = small_comparison(args.work, args.rounds)
        print_small(r["small"])
    print(json.dumps(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    # judged on CPU seconds: the wall time of a process on a shared machine says more about the others' load
    ok = r.get("recompute_activation_ratio", 0) <= 0.5 and r.get("cpu_time_ratio_vs_paddlenlp", 0) <= 1
    return 0 if ok and r.get("small", {}).get("cpu_time_ratio_vs_paddlenlp", 0) <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
