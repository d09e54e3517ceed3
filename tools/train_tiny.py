"""Train the embedded demo model: a small GLM that memorizes ``tools/corpus/zh_corpus.txt``.

Steps: train a sentencepiece model on the corpus; build a small GLM with the project's
``GLMForConditionalGeneration`` (GLM's own initialisation); train it with GLM's blank-infilling
objective (``blank_infilling.py``) and the model's loss, using AdamW, linear warmup then cosine
decay, and gradient clipping, in worker processes under ``paddle.DataParallel``; write the model
in PaddleNLP's sharded pdparams layout and the tokenizer. Everything is seeded; the run prints
its progress, wall time and final loss.

Usage: python tools/train_tiny.py --out paddle_glm/demo_model [--steps N] [--minutes 10] [--workers 2] [--seed 0]
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import paddle
import paddle.distributed as dist
import sentencepiece as spm
from blank_infilling import batches, build_sample, choose_blanks, collate

from paddle_glm import GLMConfig, GLMForConditionalGeneration
from paddle_glm.devices import use_cpu_threads
from paddle_glm.tokenizer import MODEL_FILE, GLMChineseTokenizer
from paddle_glm.training.loop import ModelLoss

CORPUS = Path(__file__).resolve().parent / "corpus" / "zh_corpus.txt"
# One piece per character: a text is tokenized the same way wherever blanks cut it, which
# makes memorizing the corpus much easier. Exact round trips: no normalisation, no dummy
# "▁" prefix (each text chunk between mask tokens is encoded on its own), a piece for the
# space (sentencepiece's "▁"; the corpus has none), other characters outside the corpus
# as UTF-8 bytes.
SENTENCEPIECE_OPTIONS = dict(
    model_type="char",
    vocab_size=4000,  # an upper bound: the corpus's characters + "▁" + 256 bytes + 3 control pieces
    hard_vocab_limit=False,
    user_defined_symbols=["▁"],
    normalization_rule_name="identity",
    add_dummy_prefix=False,
    remove_extra_whitespaces=False,
    byte_fallback=True,
    character_coverage=1.0,
    num_threads=1,  # deterministic
    minloglevel=2,
)
# Two layers learn this corpus much faster than three or four in the same ten minutes
# (measured with this objective: 95% of random single blanks of the corpus filled exactly
# with two layers, 52% with three, 45% with four).
MODEL_SHAPE = dict(num_layers=2, hidden_size=128, num_attention_heads=4, max_sequence_length=256)
NO_DROPOUT = dict(embedding_dropout_prob=0.0, attention_dropout_prob=0.0, output_dropout_prob=0.0)
BATCH_SIZE = 32
PEAK_LR = 3e-3
WARMUP_STEPS = 200
FINAL_LR_RATIO = 0.05  # cosine decay ends at PEAK_LR * FINAL_LR_RATIO
WEIGHT_DECAY = 0.01
CLIP_NORM = 1.0
LOG_EVERY = 500
# paddle's scaled_dot_product_attention: on CPU the same softmax as the "math" backend
# inference uses, and its backward is cheaper.
TRAINING_ATTENTION = "sdpa"
LOSS_WINDOW = 50  # the final loss is the mean of the last steps
EVAL_SAMPLES = 512  # fixed random samples for the teacher-forced token accuracy
MAX_SHARD_SIZE = "2MB"  # gives several shards, as PaddleNLP's layout on real checkpoints


def train_sentencepiece(lines, directory: str) -> str:
    """Train the sentencepiece model on ``lines``; returns the path of the model file written in ``directory``."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, **SENTENCEPIECE_OPTIONS)
    path = os.path.join(directory, MODEL_FILE)
    Path(path).write_bytes(model.getvalue())
    return path


def build_model(tokenizer: GLMChineseTokenizer) -> GLMForConditionalGeneration:
    """A small GLM over the tokenizer's ids, initialised as GLM (normal weights, zero biases)."""
    config = GLMConfig(vocab_size=tokenizer.vocab_size, bad_words_id=[tokenizer.gmask_token_id],
                       architectures=["GLMForConditionalGeneration"], **MODEL_SHAPE, **NO_DROPOUT)
    return GLMForConditionalGeneration(config)


def tensors(batch) -> dict:
    """A collated batch as paddle tensors, with the training attention backend."""
    return dict({key: paddle.to_tensor(value) for key, value in batch.items()}, attention_backend=TRAINING_ATTENTION)


def token_accuracy(model, eval_batches) -> float:
    """Teacher-forced accuracy of the Part B targets of fixed samples."""
    model.eval()
    correct = total = 0
    with paddle.no_grad():
        for batch in eval_batches:
            predicted = model(**tensors(batch)).logits.argmax(-1).numpy()  # [b, T]
            targets = batch["loss_mask"] > 0
            correct += int((predicted[targets] == batch["labels"][targets]).sum())
            total += int(targets.sum())
    model.train()
    return correct / total


def optimizer_for(model, steps: int):
    """AdamW with linear warmup then cosine decay, and global-norm gradient clipping."""
    cosine = paddle.optimizer.lr.CosineAnnealingDecay(PEAK_LR, T_max=max(1, steps - WARMUP_STEPS),
                                                      eta_min=PEAK_LR * FINAL_LR_RATIO)
    schedule = paddle.optimizer.lr.LinearWarmup(cosine, WARMUP_STEPS, 0.0, PEAK_LR)
    optimizer = paddle.optimizer.AdamW(schedule, parameters=model.parameters(), weight_decay=WEIGHT_DECAY,
                                       grad_clip=paddle.nn.ClipGradByGlobalNorm(CLIP_NORM))
    return optimizer, schedule


def agree(loss: float, over_budget: bool, workers: int):
    """The mean loss over the workers, and whether any has spent the time budget (so that all stop
    at the same step): one small all_reduce (gradients are averaged by ``paddle.DataParallel``)."""
    if workers == 1:
        return loss, over_budget
    flat = paddle.to_tensor([loss, float(over_budget)], dtype="float32")
    dist.all_reduce(flat)
    return float(flat[0]) / workers, float(flat[1]) > 0


def train(model, tokenizer, lines, args, rank: int) -> float:
    """Run the training loop on this worker's share of each batch; returns the mean loss of the last steps.

    Every worker draws the same batches (same seed) and takes every ``workers``-th sample, so
    the shares have similar lengths and no worker waits long for the others.
    """
    stream = batches(tokenizer, lines, BATCH_SIZE, np.random.default_rng(args.seed))
    optimizer, schedule = optimizer_for(model, args.steps)
    recent, start = [], time.time()
    model.train()
    train_model = paddle.DataParallel(ModelLoss(model)) if args.workers > 1 else ModelLoss(model)
    for step in range(1, args.steps + 1):
        share = collate(next(stream)[rank::args.workers], tokenizer.pad_token_id, tokenizer.eop_token_id)
        loss = train_model(**tensors(share))
        loss.backward()
        mean_loss, stop = agree(float(loss), time.time() - start > args.minutes * 60, args.workers)
        optimizer.step()
        optimizer.clear_grad()
        schedule.step()
        recent = (recent + [mean_loss])[-LOSS_WINDOW:]
        if rank == 0 and (step % LOG_EVERY == 0 or step == args.steps):
            print(f"step {step}/{args.steps}  loss {np.mean(recent):.4f}  lr {schedule.get_lr():.2e}  "
                  f"{time.time() - start:.0f}s", flush=True)
        if stop:
            if rank == 0:
                print(f"stopping at step {step}: the {args.minutes}-minute budget is spent", flush=True)
            break
    return float(np.mean(recent))


def report_accuracy(model, tokenizer, lines, seed: int) -> None:
    """Print the teacher-forced token accuracy on fixed random samples (a memorization check)."""
    rng = np.random.default_rng(seed + 1)  # a stream apart from the training batches'
    samples = [build_sample(tokenizer, lines[i], choose_blanks(lines[i], rng))
               for i in rng.integers(len(lines), size=EVAL_SAMPLES)]
    eval_batches = [collate(samples[i:i + BATCH_SIZE], tokenizer.pad_token_id, tokenizer.eop_token_id)
                    for i in range(0, EVAL_SAMPLES, BATCH_SIZE)]
    print(f"teacher-forced token accuracy on {EVAL_SAMPLES} fixed samples: {token_accuracy(model, eval_batches):.4f}")


def worker(args, lines, model_file: str, start: float) -> None:
    """One training process: the same initial weights in every worker, its share of each batch;
    worker 0 writes the result."""
    rank = 0
    if args.workers > 1:
        dist.init_parallel_env()
        rank = dist.get_rank()
    paddle.set_device("cpu")
    use_cpu_threads()  # an entry point: building the model sets no threads
    paddle.seed(args.seed)
    tokenizer = GLMChineseTokenizer(model_file)
    model = build_model(tokenizer)
    if rank == 0:
        count = sum(int(np.prod(p.shape)) for p in model.parameters())
        print(f"{len(lines)} lines, {tokenizer.vocab_size} ids, {count} parameters, {args.workers} worker(s)",
              flush=True)
    final_loss = train(model, tokenizer, lines, args, rank)
    if rank == 0:
        report_accuracy(model, tokenizer, lines, args.seed)
        model.save_pretrained(args.out, safe_serialization=False, max_shard_size=MAX_SHARD_SIZE)
        tokenizer.save_pretrained(args.out)
        print(f"final loss {final_loss:.4f}; wall time {time.time() - start:.0f}s; wrote {args.out}", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory (model and tokenizer)")
    parser.add_argument("--corpus", default=str(CORPUS), help="training text, one sentence or passage a line")
    parser.add_argument("--steps", type=int, default=6000, help="optimizer steps (the LR schedule spans them)")
    parser.add_argument("--minutes", type=float, default=10.0, help="stop early when this wall time is spent")
    parser.add_argument("--workers", type=int, default=2,
                        help="data-parallel processes, one per CPU core (each takes a share of every batch)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if BATCH_SIZE % args.workers:
        parser.error(f"--workers must divide the batch size ({BATCH_SIZE})")

    start = time.time()
    lines = [line for line in Path(args.corpus).read_text(encoding="utf-8").splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as scratch:
        model_file = train_sentencepiece(lines, scratch)
        if args.workers == 1:
            worker(args, lines, model_file, start)
        else:
            dist.spawn(worker, args=(args, lines, model_file, start), nprocs=args.workers, backend="gloo")


if __name__ == "__main__":
    sys.exit(main())
