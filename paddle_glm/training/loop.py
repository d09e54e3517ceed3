"""The finetuning loop, on Paddle's own parts.

``paddle.optimizer.AdamW`` (no decay on biases and LayerNorms), linear warmup then linear
decay (``paddle.optimizer.lr``), global-norm clipping, gradient accumulation,
``paddle.io.DataLoader`` over a ``DistributedBatchSampler``, ``paddle.DataParallel`` when
started by ``paddle.distributed.launch`` (gradients averaged by Paddle, nothing by hand), and
``paddle.amp`` O2 for float16/bfloat16 on a GPU. Only rank 0 writes.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import paddle
import paddle.distributed as dist
from tqdm.auto import tqdm

from ..devices import resolve_dtype, use_cpu_threads
from ..errors import GLMError
from ..io_utils import require_local_dir
from ..lora import LoRAConfig, apply_lora, save_adapter
from ..quantization.settings import refuse_quantized_source
from .checkpoints import TrainerState, latest_checkpoint, load_checkpoint, micro_batch_seed, save_checkpoint
from .data import Collate, Example, check_examples, data_loader, read_jsonl
from .launch import rank_and_world

# PaddleNLP's GLM example (llm/glm): 608 source and 160 target tokens.
DEFAULT_SRC_LENGTH, DEFAULT_TGT_LENGTH = 608, 160


@dataclass
class FinetuneArgs:
    """What ``paddle-glm finetune`` takes (see its ``--help`` for each field)."""

    model_dir: str
    train: str
    out: str
    eval: Optional[str] = None
    lora: bool = False
    lora_rank: int = 8
    lora_alpha: Optional[float] = None  # default 2 * rank (PaddleNLP's GLM example: r=4, alpha=8)
    lora_dropout: float = 0.0
    max_steps: Optional[int] = None
    epochs: float = 1.0
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 3e-4
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    label_smoothing: float = 0.0
    recompute: bool = False
    dtype: str = "float32"
    src_length: Optional[int] = None
    tgt_length: Optional[int] = None
    eval_steps: int = 0
    save_steps: int = 0
    resume: bool = False
    overwrite: bool = False
    seed: int = 42


@dataclass
class Inputs:
    """Everything read and checked before anything is written."""

    config: object
    train: List[Example]
    eval: Optional[List[Example]]
    src_length: int
    tgt_length: int


def check_inputs(args: FinetuneArgs) -> Inputs:
    """Validate the arguments, the model directory, the data files and ``--out``; raise GLMError on a problem."""
    from ..config import GLMConfig
    from ..tokenizer import MODEL_FILE

    for name in ("batch_size", "grad_accum", "lora_rank"):
        if getattr(args, name) < 1:
            raise GLMError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(args, name)}")
    if args.max_steps is not None and args.max_steps < 1:
        raise GLMError(f"--max-steps: must be at least 1, got {args.max_steps}")
    if args.epochs <= 0:
        raise GLMError(f"--epochs: must be positive, got {args.epochs}")
    for name in ("warmup_ratio", "label_smoothing", "lora_dropout"):
        if not 0 <= getattr(args, name) < 1:
            raise GLMError(f"--{name.replace('_', '-')}: must be in [0, 1), got {getattr(args, name)}")
    resolve_dtype(args.dtype)
    require_local_dir(args.model_dir)
    config = GLMConfig.from_pretrained(args.model_dir)
    if not args.lora:
        refuse_quantized_source(args.model_dir, "finetune without --lora (integer weights do not train)")
    if not os.path.isfile(os.path.join(args.model_dir, MODEL_FILE)):
        raise GLMError(f"{args.model_dir}: no tokenizer file {MODEL_FILE} in the model directory")
    src_length = args.src_length or min(DEFAULT_SRC_LENGTH, config.max_sequence_length)
    tgt_length = args.tgt_length or min(DEFAULT_TGT_LENGTH, config.max_sequence_length)
    if src_length > config.max_sequence_length or not 3 <= tgt_length <= config.max_sequence_length:
        raise GLMError(f"--src-length {src_length} / --tgt-length {tgt_length}: each must be at most the model's "
                       f"max_sequence_length ({config.max_sequence_length}); --tgt-length at least 3")
    from ..tokenizer import GLMChineseTokenizer

    train = read_jsonl(args.train)
    evaluation = read_jsonl(args.eval) if args.eval else None
    tokenizer = GLMChineseTokenizer.from_pretrained(args.model_dir)
    for path, examples in ((args.train, train), (args.eval, evaluation or [])):
        check_examples(tokenizer, path, examples, src_length)
    if args.resume and args.overwrite:
        raise GLMError("--resume continues the run in --out; --overwrite starts afresh: give one of them")
    out = os.path.realpath(args.out)
    for source in filter(None, (args.model_dir, args.train, args.eval)):
        source = os.path.realpath(source)
        if source == out or source.startswith(out + os.sep):
            raise GLMError(f"--out {args.out}: holds {source}, an input of this run; write somewhere else")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise GLMError(f"--out {args.out}: exists and is not a directory")
    if args.resume:
        if latest_checkpoint(args.out) is None:
            raise GLMError(f"--out {args.out}: no checkpoint-STEP directory to resume from")
    elif os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        raise GLMError(f"--out {args.out}: directory exists and is not empty; pass --overwrite to replace it "
                       "or --resume to continue its run")
    return Inputs(config, train, evaluation, src_length, tgt_length)


def build_schedule(lr: float, total_steps: int, warmup_steps: int):
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then linear decay to 0 at ``total_steps``."""
    decay = paddle.optimizer.lr.PolynomialDecay(lr, decay_steps=max(1, total_steps - warmup_steps), end_lr=0.0,
                                                power=1.0)
    if not warmup_steps:
        return decay
    return paddle.optimizer.lr.LinearWarmup(decay, warmup_steps, start_lr=0.0, end_lr=lr)


def build_optimizer(model, schedule, args: FinetuneArgs):
    """AdamW over the trainable parameters; biases and LayerNorms get no weight decay (as PaddleNLP's Trainer)."""
    trainable = [p for p in model.parameters() if not p.stop_gradient]
    no_decay = {p.name for n, p in model.named_parameters() if n.endswith("bias") or "layernorm" in n}
    return paddle.optimizer.AdamW(schedule, parameters=trainable, weight_decay=args.weight_decay,
                                  apply_decay_param_fun=lambda name: name not in no_decay,
                                  grad_clip=paddle.nn.ClipGradByGlobalNorm(args.max_grad_norm)
                                  if args.max_grad_norm > 0 else None)


class ModelLoss(paddle.nn.Layer):
    """The model's loss as a bare tensor: ``paddle.DataParallel`` finds the tensors of an output in
    tensors, lists and dicts only (not in the model's output dataclass), and syncs gradients from them."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **batch) -> paddle.Tensor:
        return self.model(**batch).loss


class _Mean:
    """Loss sums across processes (an all_reduce when there are several)."""

    def __init__(self, world_size: int):
        self.world_size = world_size

    def __call__(self, values: List[float]) -> List[float]:
        if self.world_size == 1:
            return values
        tensor = paddle.to_tensor(values, dtype="float32")
        dist.all_reduce(tensor)
        return (tensor / self.world_size).tolist()


def _tensors(batch: Dict) -> Dict[str, paddle.Tensor]:
    return {k: v if isinstance(v, paddle.Tensor) else paddle.to_tensor(v) for k, v in batch.items()}


def evaluate(model, loader, mean: _Mean) -> float:
    """The mean loss over the eval data (each process its share, then averaged); ``model`` returns the loss."""
    model.eval()
    total, count = 0.0, 0
    with paddle.no_grad():
        for batch in loader:
            total += float(model(**_tensors(batch)))
            count += 1
    model.train()
    loss_sum, batches = mean([total, float(count)])
    return loss_sum / max(batches, 1.0)


def build_model(args: FinetuneArgs, show_progress: bool):
    """The model to train: loaded (with ``recompute`` and ``label_smoothing`` set), LoRA applied with ``--lora``."""
    from ..model import GLMForConditionalGeneration

    paddle.seed(args.seed)  # the LoRA initialisation
    model = GLMForConditionalGeneration.from_pretrained(args.model_dir, recompute=args.recompute,
                                                        show_progress=show_progress)
    model.config.label_smoothing = args.label_smoothing
    if args.lora:
        apply_lora(model, LoRAConfig(r=args.lora_rank, lora_alpha=args.lora_alpha or 2 * args.lora_rank,
                                     lora_dropout=args.lora_dropout, base_model_name_or_path=args.model_dir))
    model.train()
    return model


def optimizer_step(optimizer, scaler) -> None:
    """Apply the accumulated gradients (through the float16 loss scaler when there is one) and clear them."""
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.clear_grad()


def finetune(args: FinetuneArgs) -> Dict[str, float]:
    """Train as ``args`` says and write the result into ``args.out``; returns the run's summary figures."""
    from ..tokenizer import GLMChineseTokenizer

    inputs = check_inputs(args)
    rank, world_size = rank_and_world()
    if world_size > 1:
        dist.init_parallel_env()
    use_cpu_threads()
    tokenizer = GLMChineseTokenizer.from_pretrained(args.model_dir)
    model = build_model(args, show_progress=rank == 0)

    collate = Collate(tokenizer, inputs.src_length, inputs.tgt_length)
    loader = data_loader(inputs.train, collate, args.batch_size, world_size, rank, args.seed)
    eval_loader = (data_loader(inputs.eval, collate, args.batch_size, world_size, rank, args.seed)
                   if inputs.eval else None)
    batches_per_epoch = len(loader.batch_sampler)
    steps_per_epoch = math.ceil(batches_per_epoch / args.grad_accum)
    total_steps = args.max_steps or math.ceil(args.epochs * steps_per_epoch)
    schedule = build_schedule(args.lr, total_steps, math.ceil(args.warmup_ratio * total_steps))
    optimizer = build_optimizer(model, schedule, args)
    amp_dtype = None if args.dtype == "float32" else args.dtype
    scaler = None
    if amp_dtype:  # GPU only (check_inputs refused half precision on CPU)
        model, optimizer = paddle.amp.decorate(models=model, optimizers=optimizer, level="O2", dtype=amp_dtype)
        scaler = paddle.amp.GradScaler() if amp_dtype == "float16" else None

    state = TrainerState(world_size=world_size, batch_size=args.batch_size, grad_accum=args.grad_accum,
                         seed=args.seed)
    if args.resume:
        path = latest_checkpoint(args.out)
        state = load_checkpoint(path, model, optimizer, args.lora)
        if (state.world_size, state.batch_size, state.grad_accum, state.seed) != \
                (world_size, args.batch_size, args.grad_accum, args.seed):
            raise GLMError(f"{path}: written by a run of {state.world_size} process(es), --batch-size "
                           f"{state.batch_size}, --grad-accum {state.grad_accum}, --seed {state.seed}; "
                           "resume with the same")
    elif rank == 0 and os.path.isdir(args.out) and args.overwrite:
        shutil.rmtree(args.out)
    train_model = paddle.DataParallel(ModelLoss(model)) if world_size > 1 else ModelLoss(model)
    mean = _Mean(world_size)

    bar = tqdm(total=total_steps, initial=state.step, desc="finetune", unit="step", file=sys.stderr,
               disable=None if rank == 0 else True, dynamic_ncols=True)  # None: off when not a terminal
    start, tokens, last_loss, eval_loss = time.perf_counter(), 0, float("nan"), None
    accumulated, micro = 0.0, 0
    while state.step < total_steps:
        loader.batch_sampler.start_epoch(state.epoch, skip=state.batches_in_epoch)
        for batch in loader:
            state.batches_in_epoch += 1
            micro += 1
            final_micro = micro == args.grad_accum or state.batches_in_epoch == batches_per_epoch
            batch = _tensors(batch)
            paddle.seed(micro_batch_seed(args.seed, state.step, micro, rank))
            sync = contextlib.nullcontext() if final_micro or world_size == 1 else train_model.no_sync()
            with sync:
                with paddle.amp.auto_cast(enable=amp_dtype is not None, level="O2", dtype=amp_dtype or "float16"):
                    loss = train_model(**batch) / args.grad_accum
                (scaler.scale(loss) if scaler else loss).backward()
            accumulated += float(loss)
            tokens += int(batch["input_ids"].shape[0] * batch["input_ids"].shape[1]) * world_size
            if not final_micro:
                continue
            optimizer_step(optimizer, scaler)
            lr = schedule.get_lr()
            schedule.step()
            state.step += 1
            (last_loss,) = mean([accumulated * args.grad_accum / micro])
            accumulated, micro = 0.0, 0
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}",
                            tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
            if eval_loader is not None and args.eval_steps and state.step % args.eval_steps == 0:
                eval_loss = evaluate(train_model, eval_loader, mean)
                if rank == 0:
                    bar.write(f"step {state.step}: eval loss {eval_loss:.4f}", file=sys.stderr)
            if rank == 0 and args.save_steps and state.step % args.save_steps == 0:
                save_checkpoint(args.out, model, optimizer, state, args.lora)
            if state.step >= total_steps:
                break
        else:
            state.epoch += 1
            state.batches_in_epoch = 0
    bar.close()
    if eval_loader is not None:
        eval_loss = evaluate(train_model, eval_loader, mean)
    seconds = time.perf_counter() - start
    if rank == 0:
        write_output(model, tokenizer, args)
        print(f"finetuned {state.step} steps in {seconds:.1f} s ({tokens / seconds:.0f} tokens/s); "
              f"final loss {last_loss:.4f}" + (f", eval loss {eval_loss:.4f}" if eval_loss is not None else "")
              + f"; wrote {args.out}" + (" (LoRA adapter)" if args.lora else ""), flush=True)
    if world_size > 1:
        dist.barrier()
    return {"steps": state.step, "loss": last_loss, "eval_loss": eval_loss, "seconds": seconds}


def write_output(model, tokenizer, args: FinetuneArgs) -> None:
    """The finetuned model in PaddleNLP's layout (or the LoRA adapter) plus the tokenizer files, into ``args.out``."""
    model.config.recompute = False  # a training setting, not part of the model
    if args.lora:
        save_adapter(model, args.out)
    else:
        model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
