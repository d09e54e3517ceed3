"""Training checkpoints ``OUT/checkpoint-STEP/``: everything a resumed run needs to continue exactly.

A checkpoint holds the model (PaddleNLP layout) or the LoRA adapter, ``optimizer.pdopt``,
``scheduler.pdparams``, ``rng_state.pkl`` (Paddle's, numpy's and Python's generators) and
``trainer_state.json`` (the step and the data position). It is written into a temporary
directory and renamed into place: a crash leaves the previous checkpoints intact and never a
half-written one.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import re
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import paddle

from ..attention import dtype_str
from ..checkpoint.loader import load_checkpoint as load_weights
from ..io_utils import atomic_output_dir
from ..lora import load_adapter_weights, save_adapter

PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pdopt"
SCHEDULER_FILE = "scheduler.pdparams"
RNG_FILE = "rng_state.pkl"


@dataclass
class TrainerState:
    """Where training stands: optimizer steps done, and the data position (epoch, batches of it consumed)."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    world_size: int = 1
    batch_size: int = 1
    grad_accum: int = 1


def checkpoint_dir(out: str, step: int) -> str:
    return os.path.join(out, f"{PREFIX}{step}")


def latest_checkpoint(out: str) -> Optional[str]:
    """The checkpoint with the highest step in ``out`` (None when there is none)."""
    if not os.path.isdir(out):
        return None
    steps = [int(m.group(1)) for name in os.listdir(out) if (m := re.fullmatch(PREFIX + r"(\d+)", name))
             and os.path.isfile(os.path.join(out, name, STATE_FILE))]
    return checkpoint_dir(out, max(steps)) if steps else None


def save_checkpoint(out: str, model, optimizer, scheduler, state: TrainerState, lora: bool) -> str:
    """Write ``OUT/checkpoint-STEP`` atomically; returns its path."""
    path = checkpoint_dir(out, state.step)
    with atomic_output_dir(path, overwrite=True) as tmp:
        if lora:
            save_adapter(model, tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=False)
        paddle.save(optimizer.state_dict(), os.path.join(tmp, OPTIMIZER_FILE))
        paddle.save(scheduler.state_dict(), os.path.join(tmp, SCHEDULER_FILE))
        with open(os.path.join(tmp, RNG_FILE), "wb") as f:
            pickle.dump({"paddle": paddle.get_rng_state(), "numpy": np.random.get_state(),
                         "python": random.getstate()}, f)
        with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(asdict(state), f, indent=2)
    return path


def load_checkpoint(path: str, model, optimizer, scheduler, lora: bool) -> TrainerState:
    """Restore the model (or adapter), optimizer, schedule and RNG states from ``path``; returns its state.

    ``model`` is the freshly built model (with the LoRA layers applied when ``lora``).
    These files are this program's own (pickles): resume only from checkpoints you wrote.
    """
    with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
        state = TrainerState(**json.load(f))
    if lora:
        _load_adapter_weights(model, path)
    else:
        load_weights(model, path, dtype_str(model.parameters()[0].dtype), show_progress=False)
    optimizer.set_state_dict(paddle.load(os.path.join(path, OPTIMIZER_FILE)))
    scheduler.set_state_dict(paddle.load(os.path.join(path, SCHEDULER_FILE)))
    with open(os.path.join(path, RNG_FILE), "rb") as f:
        rng = pickle.load(f)
    paddle.set_rng_state(rng["paddle"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    return state
