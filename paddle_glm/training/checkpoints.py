"""Training checkpoints ``OUT/checkpoint-STEP/``: everything a resumed run needs to continue exactly.

A checkpoint holds the model (PaddleNLP layout) or the LoRA adapter, ``optimizer.pdopt``
(AdamW's moments and the LR schedule's position) and ``trainer_state.json`` (the step, the data
position and the seed). The random state needs no file: every micro-batch reseeds Paddle's
generator from (seed, step, micro-batch, rank), see :func:`micro_batch_seed`. It is written into a temporary
directory and renamed into place: a crash leaves the previous checkpoints intact and never a
half-written one.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import asdict, dataclass
from typing import Dict, Optional

import paddle

from ..checkpoint.loader import load_checkpoint as load_weights
from ..devices import dtype_str
from ..io_utils import atomic_output_dir
from ..lora import load_adapter_weights, save_adapter

PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pdopt"


@dataclass
class TrainerState:
    """Where training stands: optimizer steps done, the data position (epoch, batches of it consumed),
    and the settings a resumed run must share."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    world_size: int = 1
    batch_size: int = 1
    grad_accum: int = 1
    seed: int = 0


def micro_batch_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """The seed of Paddle's generator (dropout) for one micro-batch: the same in a resumed run as in an
    uninterrupted one, and different in every process."""
    return (seed * 1_000_003 + step * 1009 + micro * 101 + rank) % 2**63


def checkpoint_dir(out: str, step: int) -> str:
    return os.path.join(out, f"{PREFIX}{step}")


def latest_checkpoint(out: str) -> Optional[str]:
    """The checkpoint with the highest step in ``out`` (None when there is none)."""
    if not os.path.isdir(out):
        return None
    steps = [int(m.group(1)) for name in os.listdir(out) if (m := re.fullmatch(PREFIX + r"(\d+)", name))
             and os.path.isfile(os.path.join(out, name, STATE_FILE))]
    return checkpoint_dir(out, max(steps)) if steps else None


def save_checkpoint(out: str, model, optimizer, state: TrainerState, lora: bool) -> str:
    """Write ``OUT/checkpoint-STEP`` atomically; returns its path."""
    path = checkpoint_dir(out, state.step)
    with atomic_output_dir(path, overwrite=True) as tmp:
        if lora:
            save_adapter(model, tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=False)
        paddle.save(_renamed(optimizer.state_dict(), _by_param_name(model)), os.path.join(tmp, OPTIMIZER_FILE))
        with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(asdict(state), f, indent=2)
    return path


def load_checkpoint(path: str, model, optimizer, lora: bool) -> TrainerState:
    """Restore the model (or adapter) and the optimizer (with its LR schedule); returns the trainer state.

    ``model`` is the freshly built model (with the LoRA layers applied when ``lora``). The
    optimizer file is a pickle (``paddle.load``): resume only from checkpoints you wrote.
    """
    with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
        state = TrainerState(**json.load(f))
    if lora:
        load_adapter_weights(model, path)
    else:
        load_weights(model, path, dtype_str(model.parameters()[0].dtype), show_progress=False)
    to_param_name = {structured: name for name, structured in _by_param_name(model).items()}
    with warnings.catch_warnings():  # Paddle's LinearWarmup counts its inner schedule's state as "unused"
        warnings.filterwarnings("ignore", message="There are some unused values in state_dict")
        optimizer.set_state_dict(_renamed(paddle.load(os.path.join(path, OPTIMIZER_FILE)), to_param_name))
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
