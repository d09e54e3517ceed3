"""The finetuning loop, on Paddle's own parts.

``paddle.optimizer.AdamW`` (no decay on biases and LayerNorms), linear warmup then linear
decay (``paddle.optimizer.lr``), global-norm clipping, gradient accumulation,
``paddle.io.DataLoader`` over a ``DistributedBatchSampler``, ``paddle.DataParallel`` when
started by ``paddle.distributed.launch`` (gradients averaged by Paddle, nothing by hand), and
``paddle.amp`` O2 for float16/bfloat16 on a GPU. Only rank 0 writes, into an ``--out`` it holds
alone (``output.py``).

Every flag is checked before anything loads. A loss that is not finite stops the run at that
step, before its update: it is checked where the loop reads the loss anyway (once per optimizer
step, for the progress bar: no extra host sync), and the trainable weights are checked before
every save, so no NaN model or adapter is ever written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import paddle
import paddle.distributed as dist
from tqdm.auto import tqdm

from ..devices import resolve_dtype, use_cpu_threads
from ..distributed import init_job, on_rank_zero, rank_and_world
from ..errors import GLMError
from ..io_utils import require_local_dir
from ..lora import DEFAULT_TARGETS, LoRAConfig, apply_lora, config_problem, save_adapter
from ..quantization.settings import refuse_quantized_source
from .checkpoints import (
    STATE_FILE,
    TrainerState,
    check_resumable,
    file_sha256,
    latest_checkpoint,
    load_checkpoint,
    load_weights_of,
    micro_batch_seed,
    save_checkpoint,
)
from .data import Collate, Example, check_examples, data_loader, read_jsonl
from .output import check_output_path, output_complete, output_lock, run_directory, writing

# PaddleNLP's GLM example (llm/glm): 608 source and 160 target tokens.
DEFAULT_SRC_LENGTH, DEFAULT_TGT_LENGTH = 608, 160
MIN_LENGTH = 3  # [CLS] [MASK] <|endoftext|>; <|startofpiece|> a token <|endofpiece|>


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
    save_total_limit: Optional[int] = None
    resume: bool = False
    overwrite: bool = False
    seed: int = 42


def _count(low: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(low: float, *, above: bool = False, below: Optional[float] = None):
    def valid(v) -> bool:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            return False
        return (v > low if above else v >= low) and (below is None or v < below)
    return valid


def _optional(valid):
    return lambda v: v is None or valid(v)


# (field, test, what the value must be): every number, checked before anything loads.
FLAG_RULES = [
    ("batch_size", _count(1), "an integer >= 1"),
    ("grad_accum", _count(1), "an integer >= 1"),
    ("max_steps", _optional(_count(1)), "an integer >= 1"),
    ("save_steps", _count(0), "an integer >= 0 (0: no checkpoints)"),
    ("eval_steps", _count(0), "an integer >= 0 (0: at the end only)"),
    ("save_total_limit", _optional(_count(1)), "an integer >= 1"),
    ("src_length", _optional(_count(MIN_LENGTH)), f"an integer >= {MIN_LENGTH}"),
    ("tgt_length", _optional(_count(MIN_LENGTH)), f"an integer >= {MIN_LENGTH}"),
    ("lr", _number(0, above=True), "a finite number > 0"),
    ("epochs", _number(0, above=True), "a finite number > 0"),
    ("weight_decay", _number(0), "a finite number >= 0"),
    ("max_grad_norm", _number(0), "a finite number >= 0 (0: no clipping)"),
    ("warmup_ratio", _number(0, below=1), "a number in [0, 1)"),
    ("label_smoothing", _number(0, below=1), "a number in [0, 1)"),
]
LORA_FLAGS = {"r": "--lora-rank", "lora_alpha": "--lora-alpha", "lora_dropout": "--lora-dropout"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def lora_config(args: FinetuneArgs) -> Dict:
    """The LoRA config's fields the flags give (``--lora-alpha`` defaults to 2 * rank)."""
    alpha = 2 * args.lora_rank if args.lora_alpha is None else args.lora_alpha
    return {"r": args.lora_rank, "lora_alpha": alpha, "lora_dropout": args.lora_dropout,
            "target_modules": list(DEFAULT_TARGETS), "base_model_name_or_path": args.model_dir}


def check_flags(args: FinetuneArgs) -> None:
    """Every flag's value, checked once; a GLMError naming the flag."""
    for name, valid, what in FLAG_RULES:
        if not valid(getattr(args, name)):
            raise GLMError(f"{_flag(name)}: must be {what}, got {getattr(args, name)}")
    problem = config_problem(lora_config(args))  # the LoRA flags: LoRAConfig's own rules
    if problem:
        raise GLMError(f"{LORA_FLAGS.get(problem[0], problem[0])}: {problem[1]}")
    if args.resume and args.overwrite:
        raise GLMError("--resume continues the run in --out; --overwrite starts afresh: give one of them")
    resolve_dtype(args.dtype)


@dataclass
class Inputs:
    """Everything read and checked before anything is written."""

    config: object
    tokenizer: object
    train: List[Example]
    eval: Optional[List[Example]]
    src_length: int
    tgt_length: int


def check_inputs(args: FinetuneArgs) -> Inputs:
    """Validate the flags, the model directory, the data files and the ``--out`` path; raise GLMError on a problem."""
    from ..config import GLMConfig
    from ..tokenizer import MODEL_FILE, GLMChineseTokenizer

    check_flags(args)
    require_local_dir(args.model_dir)
    config = GLMConfig.from_pretrained(args.model_dir)
    if not args.lora:
        refuse_quantized_source(args.model_dir, "finetune without --lora (integer weights do not train)")
    if not os.path.isfile(os.path.join(args.model_dir, MODEL_FILE)):
        raise GLMError(f"{args.model_dir}: no tokenizer file {MODEL_FILE} in the model directory")
    positions = config.max_sequence_length
    src_length = args.src_length or min(DEFAULT_SRC_LENGTH, positions)
    tgt_length = args.tgt_length or min(DEFAULT_TGT_LENGTH, positions)
    for flag, length in (("--src-length", src_length), ("--tgt-length", tgt_length)):
        if length > positions:
            raise GLMError(f"{flag} {length}: must be at most the model's max_sequence_length ({positions})")
    train = read_jsonl(args.train)
    evaluation = read_jsonl(args.eval) if args.eval else None
    tokenizer = GLMChineseTokenizer.from_pretrained(args.model_dir)
    for path, examples in ((args.train, train), (args.eval, evaluation or [])):
        check_examples(tokenizer, path, examples, src_length)
    out = os.path.realpath(args.out)
    for source in filter(None, (args.model_dir, args.train, args.eval)):
        source = os.path.realpath(source)
        if source == out or source.startswith(out + os.sep):
            raise GLMError(f"--out {args.out}: holds {source}, an input of this run; write somewhere else")
    check_output_path(args.out)
    return Inputs(config, tokenizer, train, evaluation, src_length, tgt_length)


def check_output_state(args: FinetuneArgs) -> None:
    """``--out`` is empty, or replaced (``--overwrite``), or holds a checkpoint to continue (``--resume``).
    Checked holding ``--out``'s lock, so no other run changes it meanwhile."""
    if args.resume:
        if latest_checkpoint(args.out) is None:
            raise GLMError(f"--out {args.out}: no checkpoint-STEP directory to resume from")
    elif os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        raise GLMError(f"--out {args.out}: directory exists and is not empty; pass --overwrite to replace it "
                       "or --resume to continue its run")


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


def _tensors(batch: Dict) -> Dict[str, paddle.Tensor]:
    return {k: v if isinstance(v, paddle.Tensor) else paddle.to_tensor(v) for k, v in batch.items()}


def evaluate(model, loader, mean) -> float:
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


@dataclass
class Plan:
    """The data and the length of the run."""

    loader: object
    eval_loader: Optional[object]
    batches_per_epoch: int
    total_steps: int


def plan_run(args: FinetuneArgs, inputs: Inputs, rank: int, world_size: int) -> Plan:
    """This process's data loaders and the run's number of optimizer steps."""
    collate = Collate(inputs.tokenizer, inputs.src_length, inputs.tgt_length)
    loader = data_loader(inputs.train, collate, args.batch_size, world_size, rank, args.seed)
    eval_loader = (data_loader(inputs.eval, collate, args.batch_size, world_size, rank, args.seed)
                   if inputs.eval else None)
    batches = len(loader.batch_sampler)
    total_steps = args.max_steps or math.ceil(args.epochs * math.ceil(batches / args.grad_accum))
    return Plan(loader, eval_loader, batches, total_steps)


def start_state(args: FinetuneArgs, world_size: int) -> TrainerState:
    """A new run's state, or with ``--resume`` the latest checkpoint's (refused if its run's settings differ)."""
    state = TrainerState(world_size=world_size, batch_size=args.batch_size, grad_accum=args.grad_accum,
                         seed=args.seed, lr=args.lr, train=os.path.realpath(args.train),
                         train_sha256=file_sha256(args.train))
    if not args.resume:
        return state
    path = latest_checkpoint(args.out)
    saved = TrainerState.from_file(os.path.join(path, STATE_FILE))
    check_resumable(path, saved, state, args.lora)
    return dataclasses.replace(state, step=saved.step, epoch=saved.epoch, batches_in_epoch=saved.batches_in_epoch)


def build_model(args: FinetuneArgs, show_progress: bool):
    """The model to train: loaded (with ``recompute`` and ``label_smoothing`` set), LoRA applied with ``--lora``."""
    from ..model import GLMForConditionalGeneration

    paddle.seed(args.seed)  # the LoRA initialisation
    model = GLMForConditionalGeneration.from_pretrained(args.model_dir, recompute=args.recompute,
                                                        show_progress=show_progress)
    model.config.label_smoothing = args.label_smoothing
    if args.lora:
        apply_lora(model, LoRAConfig(**lora_config(args)))
    model.train()
    return model


@dataclass
class Run:
    """A run's live parts, and where its output stands."""

    args: FinetuneArgs
    plan: Plan
    state: TrainerState
    rank: int
    world_size: int
    work: str  # where checkpoints and the output go: --out, or the directory that replaces it (--overwrite)
    model: object = None
    train_model: object = None  # the loss as a Layer, under paddle.DataParallel with several processes
    optimizer: object = None
    schedule: object = None
    scaler: object = None
    amp_dtype: Optional[str] = None
    last_checkpoint: Optional[str] = None

    def where(self) -> str:
        """What a stopped run leaves, for its one-line message."""
        if self.work != self.args.out:
            return f"--overwrite: {self.args.out} is left as it was"
        if self.last_checkpoint:
            return f"the last complete checkpoint is {self.last_checkpoint} (--resume continues from it)"
        return "no checkpoint was written"

    def mean(self, values: List[float]) -> List[float]:
        """Per-process values averaged over the processes (an all_reduce when there are several)."""
        if self.world_size == 1:
            return values
        tensor = paddle.to_tensor(values, dtype="float32")
        dist.all_reduce(tensor)
        return (tensor / self.world_size).tolist()


def start_run(args: FinetuneArgs, plan: Plan, state: TrainerState, rank: int, world_size: int, work: str) -> Run:
    """Model, optimizer, schedule and loss scaler, restored from the latest checkpoint with ``--resume``."""
    run = Run(args, plan, state, rank, world_size, work, amp_dtype=None if args.dtype == "float32" else args.dtype)
    run.model = build_model(args, show_progress=rank == 0)
    run.schedule = build_schedule(args.lr, plan.total_steps, math.ceil(args.warmup_ratio * plan.total_steps))
    run.optimizer = build_optimizer(run.model, run.schedule, args)
    if run.amp_dtype:  # GPU only (check_inputs refused half precision on CPU)
        run.model, run.optimizer = paddle.amp.decorate(models=run.model, optimizers=run.optimizer, level="O2",
                                                       dtype=run.amp_dtype)
        run.scaler = paddle.amp.GradScaler() if run.amp_dtype == "float16" else None
    if args.resume:
        run.last_checkpoint = latest_checkpoint(args.out)
        load_checkpoint(run.last_checkpoint, run.model, run.optimizer, args.lora)
    loss = ModelLoss(run.model)
    run.train_model = paddle.DataParallel(loss) if world_size > 1 else loss
    return run


def optimizer_step(optimizer, scaler) -> None:
    """Apply the accumulated gradients (through the float16 loss scaler when there is one) and clear them."""
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.clear_grad()


def forward_backward(run: Run, batch: Dict, micro: int, final_micro: bool) -> float:
    """One micro-batch's loss (divided by ``--grad-accum``) backpropagated; returns its value."""
    paddle.seed(micro_batch_seed(run.args.seed, run.state.step, micro, run.rank))
    sync = contextlib.nullcontext() if final_micro or run.world_size == 1 else run.train_model.no_sync()
    with sync:
        with paddle.amp.auto_cast(enable=run.amp_dtype is not None, level="O2", dtype=run.amp_dtype or "float16"):
            loss = run.train_model(**_tensors(batch)) / run.args.grad_accum
        (run.scaler.scale(loss) if run.scaler else loss).backward()
    return float(loss)


def train(run: Run) -> Dict[str, float]:
    """Optimizer steps until the plan's total, checkpointing every ``--save-steps``; returns the run's figures."""
    args, plan, state = run.args, run.plan, run.state
    bar = tqdm(total=plan.total_steps, initial=state.step, desc="finetune", unit="step", file=sys.stderr,
               disable=None if run.rank == 0 else True, dynamic_ncols=True)  # None: off when not a terminal
    start, tokens, last_loss, accumulated, micro = time.perf_counter(), 0, float("nan"), 0.0, 0
    while state.step < plan.total_steps:
        plan.loader.batch_sampler.start_epoch(state.epoch, skip=state.batches_in_epoch)
        for batch in plan.loader:
            state.batches_in_epoch += 1
            micro += 1
            final_micro = micro == args.grad_accum or state.batches_in_epoch == plan.batches_per_epoch
            accumulated += forward_backward(run, batch, micro, final_micro)
            tokens += int(batch["input_ids"].shape[0] * batch["input_ids"].shape[1]) * run.world_size
            if not final_micro:
                continue
            (last_loss,) = run.mean([accumulated * args.grad_accum / micro])
            check_loss(run, last_loss)
            optimizer_step(run.optimizer, run.scaler)
            lr = run.schedule.get_lr()
            run.schedule.step()
            state.step += 1
            accumulated, micro = 0.0, 0
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}",
                            tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
            after_step(run, bar)
            if state.step >= plan.total_steps:
                break
        else:
            state.epoch += 1
            state.batches_in_epoch = 0
    bar.close()
    return {"steps": state.step, "loss": last_loss, "tokens": tokens, "seconds": time.perf_counter() - start}


def after_step(run: Run, bar) -> None:
    """Evaluate every ``--eval-steps`` and checkpoint every ``--save-steps``."""
    args, step = run.args, run.state.step
    if run.plan.eval_loader is not None and args.eval_steps and step % args.eval_steps == 0:
        eval_loss = evaluate(run.train_model, run.plan.eval_loader, run.mean)
        if run.rank == 0:
            bar.write(f"step {step}: eval loss {eval_loss:.4f}", file=sys.stderr)
    if args.save_steps and step % args.save_steps == 0:
        check_weights(run)
        try:  # rank 0 writes, every rank hears how it went
            saved = on_rank_zero(lambda: save_checkpoint(run.work, run.model, run.optimizer, run.state, args.lora,
                                                         args.save_total_limit))
        except GLMError as e:
            raise GLMError(f"{e}; {run.where()}") from None
        run.last_checkpoint = saved or run.last_checkpoint


def check_loss(run: Run, loss: float) -> None:
    """Stop the run (every process: the loss is their mean) at a step whose loss is not finite, before its update."""
    if not math.isfinite(loss):
        raise GLMError(f"step {run.state.step + 1}: the loss is {loss}; training stopped before this step's update, "
                       f"nothing of it was written; {run.where()}")


def check_weights(run: Run) -> None:
    """Before a save: the trainable weights are finite (every process checks: they hold the same weights)."""
    finite = [paddle.isfinite(p).all() for p in run.model.parameters() if not p.stop_gradient]
    if not bool(paddle.stack(finite).all()):
        raise GLMError(f"step {run.state.step}: the weights hold nan or inf after this step's update; training "
                       f"stopped and nothing of it was written; {run.where()}")


def finetune(args: FinetuneArgs) -> Dict[str, float]:
    """Train as ``args`` says and write the result into ``args.out``; returns the run's summary figures."""
    inputs = check_inputs(args)
    rank, world_size = rank_and_world()
    with output_lock(args.out) if rank == 0 else contextlib.nullcontext():
        check_output_state(args)
        plan = plan_run(args, inputs, rank, world_size)
        state = start_state(args, world_size)
        if state.step >= plan.total_steps:
            return already_complete(args, inputs, state, rank)
        if world_size > 1:
            init_job()
        use_cpu_threads()
        with run_directory(args.out, args.overwrite and rank == 0) as work:
            run = start_run(args, plan, state, rank, world_size, work)
            summary = train(run)
            finish(run, inputs.tokenizer, summary)
    return summary


def finish(run: Run, tokenizer, summary: Dict[str, float]) -> None:
    """The eval loss, the final output (rank 0) and the summary line; ``summary`` gets ``eval_loss``."""
    args = run.args
    summary["eval_loss"] = (evaluate(run.train_model, run.plan.eval_loader, run.mean)
                            if run.plan.eval_loader is not None else None)
    check_weights(run)
    try:  # every rank hears how rank 0's write went: no barrier
        on_rank_zero(lambda: write_output(run.model, tokenizer, run.work, args.lora))
    except GLMError as e:
        raise GLMError(f"{e}; {run.where()}") from None
    if run.rank == 0:
        eval_loss, seconds = summary["eval_loss"], summary["seconds"]
        print(f"finetuned {summary['steps']} steps in {seconds:.1f} s ({summary['tokens'] / seconds:.0f} tokens/s); "
              f"final loss {summary['loss']:.4f}" + (f", eval loss {eval_loss:.4f}" if eval_loss is not None else "")
              + f"; wrote {args.out}" + (" (LoRA adapter)" if args.lora else ""), flush=True)


def already_complete(args: FinetuneArgs, inputs: Inputs, state: TrainerState, rank: int) -> Dict[str, float]:
    """``--resume`` of a run that reached its last step: nothing to train. Rank 0 writes the final output
    from the checkpoint if the run stopped before writing it."""
    path = latest_checkpoint(args.out)
    if rank == 0:
        note = ""
        if not output_complete(args.out, args.lora):
            model = build_model(args, show_progress=False)
            load_weights_of(path, model, args.lora)
            write_output(model, inputs.tokenizer, args.out, args.lora)
            note = f"; wrote its result into {args.out}"
        print(f"the run is already complete at step {state.step} ({path}){note}", flush=True)
    return {"steps": state.step, "loss": None, "eval_loss": None, "seconds": 0.0}


def write_output(model, tokenizer, directory: str, lora: bool) -> None:
    """The finetuned model in PaddleNLP's layout (or the LoRA adapter), then the tokenizer files (written
    last: they mark the output complete, see ``output_complete``), into ``directory``."""
    model.config.recompute = False  # a training setting, not part of the model
    with writing(directory):
        if lora:
            save_adapter(model, directory)
        else:
            model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
