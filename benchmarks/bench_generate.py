"""Decode speed on the glm-large-chinese shape (random fp32 weights, CPU), measured side by side in one run.

Figures (seconds per new token are medians of the gaps between consecutive
streamer callbacks, i.e. pure decode steps, prefill excluded):

* ours vs PaddleNLP 2.8.1's ``generate`` (greedy) on identical weights, 256-token context;
* ours vs a batch-1 GEMV roofline: one matmul pass over every weight matrix plus the
  output projection, which any decode step must at least do;
* ours at a 64- vs a 768-token context;
* batch-8 throughput at a 256-token context.

Usage: python benchmarks/bench_generate.py [--json out.json] [--no-paddlenlp] [--tokens N]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import paddle

from paddle_glm import GLMConfig, GLMForConditionalGeneration


class StepTimer:
    """A streamer that records when each step's token arrives."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass

    def per_token(self) -> float:
        gaps = np.diff(self.times)
        return float(statistics.median(gaps))


def glm_inputs(batch: int, context: int, gen: int, vocab: int, seed: int = 0):
    """GLM generation inputs: ``context`` tokens ending in a mask token, then sop; positions/mask for ``gen``."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(100, vocab - 100, (batch, context + 1)).astype("int64")
    mask_pos = context - 1
    total = context + gen
    pos = np.zeros((batch, 2, total), "int64")
    pos[:, 0, :context] = np.arange(context)
    pos[:, 0, context:] = mask_pos
    pos[:, 1, context:] = np.arange(1, gen + 1)
    mask = np.zeros((batch, 1, total, total), "int64")
    mask[:, :, :, :context] = 1
    mask[:, :, context:, context:] = np.tril(np.ones((gen, gen), "int64"))
    return ids, pos, mask


def ours_per_token(model, context: int, tokens: int) -> float:
    ids, pos, mask = glm_inputs(1, context, tokens + 1, model.config.vocab_size)
    timer = StepTimer()
    model.generate(ids, pos, mask, max_new_tokens=tokens + 1, eos_token_id=None, bad_words_ids=[], streamer=timer)
    return timer.per_token()


def batch_tokens_per_second(model, batch: int, context: int, tokens: int) -> float:
    """New tokens per second for a whole batched ``generate`` call (prefill included)."""
    ids, pos, mask = glm_inputs(batch, context, tokens, model.config.vocab_size)
    start = time.perf_counter()
    out = model.generate(ids, pos, mask, max_new_tokens=tokens, eos_token_id=None, bad_words_ids=[])
    return batch * (out.shape[1] - ids.shape[1]) / (time.perf_counter() - start)


def paddlenlp_per_token(reference, context: int, tokens: int) -> float:
    ids, pos, mask = glm_inputs(1, context, tokens + 1, reference.config.vocab_size)
    timer = StepTimer()
    with paddle.no_grad():
        reference.generate(input_ids=paddle.to_tensor(ids), position_ids=paddle.to_tensor(pos),
                           attention_mask=paddle.to_tensor(mask), max_length=tokens + 1,
                           decode_strategy="greedy_search", streamer=timer)
    return timer.per_token()


def roofline_seconds(model, repeats: int = 10) -> float:
    """One batch-1 matmul pass over every weight matrix and the output projection (median of repeats)."""
    h = model.config.hidden_size
    weights = [p for n, p in model.named_parameters() if len(p.shape) == 2 and "position" not in n
               and "word_embeddings" not in n]
    embedding = model.glm.word_embeddings.weight
    x = {h: paddle.randn([1, 1, h]), 4 * h: paddle.randn([1, 1, 4 * h])}

    def one_pass():
        for w in weights:
            paddle.matmul(x[w.shape[0]], w)
        paddle.matmul(x[h], embedding, transpose_y=True)

    one_pass()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        one_pass()
        times.append(time.perf_counter() - start)
    return float(statistics.median(times))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16, help="decode steps per measurement")
    parser.add_argument("--no-paddlenlp", action="store_true", help="skip the (slow) PaddleNLP measurement")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    paddle.set_device("cpu")
    config = GLMConfig.from_name("glm-large-chinese", embedding_dropout_prob=0.0, attention_dropout_prob=0.0,
                                 output_dropout_prob=0.0)
    paddle.seed(0)
    model = GLMForConditionalGeneration(config)
    model.eval()
    r = {"config": "glm-large-chinese", "dtype": "float32", "device": "cpu", "threads": paddle.get_num_threads()
         if hasattr(paddle, "get_num_threads") else None}

    r["roofline_s"] = roofline_seconds(model)
    r["ours_256_s"] = ours_per_token(model, 256, args.tokens)
    r["roofline_fraction"] = r["roofline_s"] / r["ours_256_s"]
    r["ours_64_s"] = ours_per_token(model, 64, args.tokens)
    r["ours_768_s"] = ours_per_token(model, 768, args.tokens)
    r["ratio_768_64"] = r["ours_768_s"] / r["ours_64_s"]
    r["batch8_tokens_per_s"] = batch_tokens_per_second(model, 8, 256, args.tokens)
    if not args.no_paddlenlp:
        from paddlenlp.transformers import GLMConfig as PConfig
        from paddlenlp.transformers import GLMForConditionalGeneration as PModel

        reference = PModel(PConfig(**{k: v for k, v in config.to_dict().items() if k != "bad_words_id"}))
        reference.set_state_dict(model.state_dict())
        reference.eval()
        r["paddlenlp_256_s"] = paddlenlp_per_token(reference, 256, min(args.tokens, 6))
        r["speedup_vs_paddlenlp"] = r["paddlenlp_256_s"] / r["ours_256_s"]
        del reference

    rows = [
        ("decode s/token, 256 context, ours", f"{r['ours_256_s']:.4f}"),
        ("batch-1 GEMV roofline s/token", f"{r['roofline_s']:.4f}"),
        ("ours / roofline speed (target >= 0.60)", f"{r['roofline_fraction']:.2f}"),
        ("decode s/token, 64 context", f"{r['ours_64_s']:.4f}"),
        ("decode s/token, 768 context", f"{r['ours_768_s']:.4f}"),
        ("768 / 64 per-token cost (target <= 1.3)", f"{r['ratio_768_64']:.2f}"),
        ("batch-8 tokens/s (256 context, incl. prefill)", f"{r['batch8_tokens_per_s']:.1f}"),
    ]
    if "paddlenlp_256_s" in r:
        rows[1:1] = [("decode s/token, 256 context, PaddleNLP 2.8.1", f"{r['paddlenlp_256_s']:.3f}"),
                     ("speedup vs PaddleNLP (target >= 10x)", f"{r['speedup_vs_paddlenlp']:.1f}x")]
    print("| generate (glm-large shape, fp32, CPU) | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(json.dumps(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    met = r["roofline_fraction"] >= 0.6 and r["ratio_768_64"] <= 1.3 and r.get("speedup_vs_paddlenlp", 10) >= 10
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
