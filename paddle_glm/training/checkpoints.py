"""Training checkpoints ``OUT/checkpoint-STEP/``: everything a resumed run needs to continue exactly.

A checkpoint holds the model (PaddleNLP layout) or the LoRA adapter, ``optimizer.pdopt``
(AdamW's moments and the LR schedule's position) and ``trainer_state.json`` (the step, the data
position and the seed). The random state needs no file: every micro-batch reseeds Paddle's
generator from (seed, step, micro-batch, rank), see :func:`micro_batch_seed`. It is written into a temporary
directory and renamed into place: a crash or a full disk leaves the previous checkpoints intact and
never a half-written one. A resumed run must share the settings in :data:`RESUME_SETTINGS`, the
``--train`` data and ``--lora`` with the run that wrote the checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Dict, List, Optional

import paddle

from ..checkpoint.loader import load_checkpoint as load_weights
from ..devices import dtype_str
from ..errors import GLMError
from ..io_utils import atomic_output_dir, read_json_object, remove_tree
from ..lora import CONFIG_FILE as LORA_CONFIG_FILE
from ..lora import load_adapter_weights, save_adapter
from .output import writing

PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pdopt"


@dataclass
class TrainerState:
    """Where training stands: optimizer steps done, the data position (epoch, batches of it consumed),
    and the settings a resumed run must share (``lr``, ``train`` and ``train_sha256`` are None in
    checkpoints written before they were recorded)."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    world_size: int = 1
    batch_size: int = 1
    grad_accum: int = 1
    seed: int = 0
    lr: Optional[float] = None
    train: Optional[str] = None
    train_sha256: Optional[str] = None

    @classmethod
    def from_file(cls, path: str) -> TrainerState:
        """Read a ``trainer_state.json``; bad JSON, an unknown key or a wrong value is a GLMError naming the file."""
        data = read_json_object(path)
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in data and name not in _STATE_KINDS]
        if missing:
            raise GLMError(f"{path}: no {missing[0]!r} (a trainer state holds {', '.join(names)})")
        for key, value in data.items():
            if key not in names:
                raise GLMError(f"{path}: unknown key {key!r} (a trainer state holds {', '.join(names)})")
            valid, what = _STATE_VALUES[_STATE_KINDS.get(key, "count")]
            if not valid(value):
                raise GLMError(f"{path}: {key!r} must be {what}, got {value!r}")
        return cls(**data)


_STATE_KINDS = {"lr": "number", "train": "text", "train_sha256": "text"}  # the other fields are counts
_STATE_VALUES = {
    "count": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a non-negative integer"),
    "number": (lambda v: v is None or isinstance(v, (int, float)) and not isinstance(v, bool), "a number or null"),
    "text": (lambda v: v is None or isinstance(v, str), "a string or null"),
}


# The settings a resumed run must share with the run that wrote the checkpoint, and their flags.
RESUME_SETTINGS = {"world_size": "--nproc", "batch_size": "--batch-size", "grad_accum": "--grad-accum",
                   "seed": "--seed", "lr": "--lr"}


def check_resumable(path: str, saved: TrainerState, current: TrainerState, lora: bool) -> None:
    """Refuse to resume ``path`` (a GLMError naming the setting and both values) unless this run's
    settings ``current`` and ``--lora`` match those of the run that wrote it."""
    is_lora = os.path.isfile(os.path.join(path, LORA_CONFIG_FILE))
    if is_lora != lora:
        held = "a LoRA adapter (lora_config.json)" if is_lora else "a full finetune (the whole model, no adapter)"
        asked = "--lora" if lora else "full finetuning (no --lora)"
        raise GLMError(f"{path}: this checkpoint holds {held}, but this run asks for {asked}; resume with the "
                       f"same {'--lora' if is_lora else 'flags, without --lora'}")
    for name, flag in RESUME_SETTINGS.items():
        theirs, ours = getattr(saved, name), getattr(current, name)
        if theirs is not None and theirs != ours:
            raise GLMError(f"{path}: its run had {flag} {theirs}, this run asks {flag} {ours}; resume with "
                           f"{flag} {theirs}, or start a new --out")
    if saved.train_sha256 is not None and saved.train_sha256 != current.train_sha256:
        raise GLMError(f"{path}: its run trained on --train {saved.train} (sha256 {saved.train_sha256[:12]}), "
                       f"this run gives --train {current.train} (sha256 {current.train_sha256[:12]}); resume "
                       "with the same data, or start a new --out")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def micro_batch_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """The seed of Paddle's generator (dropout) for one micro-batch: the same in a resumed run as in an
    uninterrupted one, and different in every process."""
    return (seed * 1_000_003 + step * 1009 + micro * 101 + rank) % 2**63


def checkpoint_dir(out: str, step: int) -> str:
    return os.path.join(out, f"{PREFIX}{step}")


def checkpoint_steps(out: str) -> List[int]:
    """The steps of the complete checkpoints in ``out``, ascending."""
    if not os.path.isdir(out):
        return []
    return sorted(int(m.group(1)) for name in os.listdir(out) if (m := re.fullmatch(PREFIX + r"(\d+)", name))
                  and os.path.isfile(os.path.join(out, name, STATE_FILE)))


def latest_checkpoint(out: str) -> Optional[str]:
    """The checkpoint with the highest step in ``out`` (None when there is none)."""
    steps = checkpoint_steps(out)
    return checkpoint_dir(out, steps[-1]) if steps else None


def save_checkpoint(out: str, model, optimizer, state: TrainerState, lora: bool, keep: Optional[int] = None) -> str:
    """Write ``OUT/checkpoint-STEP`` atomically (an exception, a full disk included, removes the half-written
    one); then delete all but the newest ``keep`` checkpoints. Returns its path."""
    path = checkpoint_dir(out, state.step)
    with writing(path), atomic_output_dir(path, overwrite=True) as tmp:
        if lora:
            save_adapter(model, tmp)
        else:
            model.write_into(tmp, safe_serialization=False)
        paddle.save(_renamed(optimizer.state_dict(), _by_param_name(model)), os.path.join(tmp, OPTIMIZER_FILE))
        with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(asdict(state), f, indent=2)
    if keep:
        for step in checkpoint_steps(out)[:-keep]:
            _remove_checkpoint(checkpoint_dir(out, step))
    return path


def _remove_checkpoint(path: str) -> None:
    """Rename it out of sight first (a leftover name the next run removes), so it never lies half-deleted."""
    doomed = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-removed-{os.getpid()}")
    os.rename(path, doomed)
    remove_tree(doomed)


def load_checkpoint(path: str, model, optimizer, lora: bool) -> None:
    """Restore the model (or adapter) and the optimizer (with its LR schedule) from ``path``.

    ``model`` is the freshly built model (with the LoRA layers applied when ``lora``). The
    optimizer file is a pickle (``paddle.load``): resume only from checkpoints you wrote.
    """
    load_weights_of(path, model, lora)
    to_param_name = {structured: name for name, structured in _by_param_name(model).items()}
    with warnings.catch_warnings():  # Paddle's LinearWarmup counts its inner schedule's state as "unused"
        warnings.filterwarnings("ignore", message="There are some unused values in state_dict")
        optimizer.set_state_dict(_renamed(_read_optimizer(os.path.join(path, OPTIMIZER_FILE)), to_param_name))


def load_weights_of(path: str, model, lora: bool) -> None:
    """Set the model's weights (with ``lora``, its adapter's) from checkpoint ``path``."""
    if lora:
        load_adapter_weights(model, path)
    else:
        load_weights(model, path, dtype_str(model.parameters()[0].dtype), show_progress=False)


def _read_optimizer(path: str) -> Dict:
    if not os.path.isfile(path):
        raise GLMError(f"{path}: no such file; this checkpoint is incomplete")
    try:
        state = paddle.load(path)
    except Exception as e:  # noqa: BLE001 - a damaged pickle fails in many ways (EOFError, UnpicklingError, ...)
        raise GLMError(f"{path}: cannot read it ({type(e).__name__}: {e}); the file is damaged or truncated") from None
    if not isinstance(state, dict):
        raise GLMError(f"{path}: not an optimizer state (a {type(state).__name__})")
    return state


def _by_param_name(model) -> Dict[str, str]:
    """Paddle's generated parameter name (``linear_3.w_0``) -> the structured name
    (``glm.transformer.layers.0.attention.dense.weight``). The generated names depend on how many
    layers the process built before, so a checkpoint keys the optimizer state by the structured ones."""
    return {p.name: name for name, p in model.named_parameters()}


def _renamed(state: Dict, names: Dict[str, str]) -> Dict:
    """The optimizer state with each accumulator key ``PARAM_moment1_0`` (and the AMP master weights)
    renamed by ``names``."""
    out = {}
    for key, value in state.items():
        if key == "master_weights":  # AMP: {param name: tensor}
            out[key] = {names.get(k, k): v for k, v in value.items()}
            continue
        prefix = next((key[:i] for i in range(len(key), 0, -1) if key[:i] in names and key[i:i + 1] == "_"), None)
        out[names[prefix] + key[len(prefix):] if prefix else key] = value
    return out
