"""Writing a checkpoint in PaddleNLP's sharded layout, one output shard in memory at a time."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from ..errors import CheckpointError
from ..io_utils import atomic_output_dir, atomic_write_text, make_temp_dir
from .safe_pickle import save_pdparams
from .safetensors_format import write_safetensors
from .source import CHECKPOINT_KINDS, SHARD_PREFIX, SUFFIX, is_checkpoint_file

_INDEX = {fmt: index for fmt, index, _ in CHECKPOINT_KINDS}
_SINGLE = {fmt: single for fmt, _, single in CHECKPOINT_KINDS}


def plan_shards(sizes: Sequence[Tuple[str, int]], max_shard_size: int) -> List[List[str]]:
    """Split names into shards in order, as PaddleNLP's ``shard_checkpoint``: a shard is closed
    when the next tensor would push it past ``max_shard_size``; a larger tensor gets its own."""
    shards: List[List[str]] = [[]]
    filled = 0
    for name, nbytes in sizes:
        if shards[-1] and filled + nbytes > max_shard_size:
            shards.append([])
            filled = 0
        shards[-1].append(name)
        filled += nbytes
    return shards


def shard_names(fmt: str, count: int, tag: Optional[str] = None) -> List[str]:
    """PaddleNLP's file names: ``model_state-00001-of-00003.pdparams``, ``model-00001-of-00003.safetensors``
    (``model.safetensors`` for one shard). With ``tag``, every shard is named ``model-00001-of-00001-TAG.safetensors``
    (a name no earlier save used, so a reader never opens a file of another save by its name)."""
    if count == 1 and tag is None:
        return [_SINGLE[fmt]]
    suffix = f"-{tag}{SUFFIX[fmt]}" if tag else SUFFIX[fmt]
    return [f"{SHARD_PREFIX[fmt]}-{i:05d}-of-{count:05d}{suffix}" for i in range(1, count + 1)]


class ShardedWriter:
    """Receives tensors in order and writes each shard as soon as it is complete.

    Args:
        directory: where the files go (normally a temporary directory, renamed by the caller).
        fmt: "pdparams" or "safetensors".
        sizes: ``(name, nbytes)`` of every tensor, in the order they will be added; or None
            when they are not known in advance (a converter streaming its input): shards are
            then cut by the same rule as tensors arrive, written under provisional names and
            renamed to PaddleNLP's ``-of-N`` names by ``finish``.
        max_shard_size: bytes per shard.
        layout: "paddle" (safetensors metadata ``np``, bfloat16 as ``U16``, as PaddleNLP
            writes) or "torch" (metadata ``pt``, ``BF16``, as PyTorch/HF write).
        tag: name the shards with this tag (see ``shard_names``) and always write an index,
            even for one shard (saving into a directory that already holds a checkpoint).
    """

    def __init__(self, directory: str, fmt: str, sizes: Optional[Sequence[Tuple[str, int]]], max_shard_size: int,
                 layout: str = "paddle", tag: Optional[str] = None):
        if fmt not in ("pdparams", "safetensors"):
            raise CheckpointError(f"cannot write checkpoint format {fmt!r} (use pdparams or safetensors)")
        self.directory, self.fmt, self.layout = directory, fmt, layout
        self.max_shard_size, self.tag = max_shard_size, tag
        self._plan = None if sizes is None else plan_shards(sizes, max_shard_size)
        self._files = [] if self._plan is None else shard_names(fmt, len(self._plan), tag)
        self._shards: List[List[str]] = []  # names in each written shard
        self._pending: Dict[str, np.ndarray] = {}
        self._filled = 0
        self._added: Set[str] = set()
        self.total_bytes = 0
        self.written: List[str] = []

    def add(self, name: str, array: np.ndarray) -> Optional[str]:
        """Add the next tensor; returns the path of a shard if one was written."""
        if name in self._added:
            raise CheckpointError(f"tensor {name!r} was given twice (is it in more than one source shard?)")
        if self._plan is None:
            path = None
            if self._pending and self._filled + array.nbytes > self.max_shard_size:
                path = self._write_pending()
            self._keep(name, array)
            return path
        expected = self._plan[len(self._shards)] if len(self._shards) < len(self._plan) else []
        if name not in expected:
            raise CheckpointError(f"internal: tensor {name!r} arrived out of the planned order")
        self._keep(name, array)
        return self._write_pending() if len(self._pending) == len(expected) else None

    def _keep(self, name: str, array: np.ndarray) -> None:
        self._added.add(name)
        self._pending[name] = array
        self._filled += array.nbytes
        self.total_bytes += array.nbytes

    def _write_pending(self) -> str:
        number = len(self._shards)
        name = self._files[number] if self._plan is not None else f".shard-{number + 1:05d}{SUFFIX[self.fmt]}"
        path = os.path.join(self.directory, name)
        items = list(self._pending.items())
        if self.fmt == "pdparams":
            save_pdparams(path, items)
        else:
            torch = self.layout == "torch"
            write_safetensors(path, items, metadata={"format": "pt" if torch else "np"},
                              bf16_code="BF16" if torch else "U16")
        self._shards.append(list(self._pending))
        self._pending, self._filled = {}, 0
        self.written.append(path)
        return path

    def finish(self) -> List[str]:
        """Write the last shard, give shards their final names and write the index (if sharded)."""
        if self._plan is None:
            if self._pending or not self._shards:
                self._write_pending()
            self._files = shard_names(self.fmt, len(self._shards), self.tag)
            final = [os.path.join(self.directory, name) for name in self._files]
            for provisional, path in zip(self.written, final):
                os.replace(provisional, path)
            self.written = final
        elif len(self._shards) != len(self._plan):
            missing = [n for shard in self._plan[len(self._shards):] for n in shard if n not in self._pending]
            raise CheckpointError(f"internal: tensors never written: {', '.join(missing[:10])}")
        if len(self._files) > 1 or self.tag:
            index = {
                "metadata": {"total_size": int(self.total_bytes)},
                "weight_map": {n: f for names, f in zip(self._shards, self._files) for n in names},
            }
            path = os.path.join(self.directory, _INDEX[self.fmt])
            atomic_write_text(path, json.dumps(index, indent=2) + "\n")
            self.written.append(path)
        return self.written


PADDLE_FORMATS = ("safetensors", "pdparams")


def save_checkpoint_dir(dst: str, write: Callable[[str, Optional[str]], None]) -> None:
    """Have ``write(directory, tag)`` produce a checkpoint, and install it in ``dst`` safely.

    ``tag`` is for ``ShardedWriter``. A new or empty ``dst`` is written as a temporary
    directory and renamed into place; a directory without a Paddle-format checkpoint gets
    the new files moved in (``tag`` None: PaddleNLP's plain names). In a directory that
    holds one, the switch is atomic for readers: the new shards get names no earlier save
    used (``tag``) and an index; they and the other new files (config.json) are moved in,
    then the index is renamed in, which is the switch; then the old Paddle-format files
    are deleted, entry points (indices, single files) before shards. A reader resolves every
    shard through one index read, so it sees the whole old checkpoint or the whole new one;
    if an old shard vanishes under it, it reads the new index again (``load_checkpoint``).
    Everything else in ``dst`` (tokenizer files, notes, a PyTorch checkpoint) is left alone.
    A crash before the switch leaves ``dst`` as it was. If ``dst`` is a symlink, the
    checkpoint goes into its target. One writer at a time.
    """
    dst = os.path.realpath(dst)
    if not os.path.isdir(dst) or not os.listdir(dst):
        with atomic_output_dir(dst) as tmp:
            write(tmp, None)
        return
    staging = make_temp_dir(dst, ".save-tmp-")
    try:
        old = [n for n in os.listdir(dst) if is_checkpoint_file(n, PADDLE_FORMATS)]
        write(staging, uuid.uuid4().hex[:8] if old else None)  # no checkpoint to replace: PaddleNLP's plain names
        new = os.listdir(staging)
        old = [n for n in old if n not in new]
        for name in sorted(new, key=_is_index):  # shards and config first, the index (the switch) last
            os.replace(os.path.join(staging, name), os.path.join(dst, name))
        for name in sorted(old, key=_removal_order):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(dst, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _is_index(name: str) -> bool:
    return name.endswith(".index.json")


def _removal_order(name: str) -> Tuple[int, int]:
    """Old files go entry points first, in the order readers look for them, then shards."""
    entry_points = [n for _, index, single in CHECKPOINT_KINDS for n in (index, single)]
    return (0, entry_points.index(name)) if name in entry_points else (1, 0)
