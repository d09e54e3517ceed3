"""Finding and reading the checkpoint files in a model directory, one shard at a time."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import CheckpointError, MissingFileError
from . import layout, safe_pickle
from .safetensors_format import SafetensorsFile
from .torch_format import iter_torch_bin

# (format, index file, single file), in the order from_pretrained prefers them.
CHECKPOINT_KINDS = (
    ("safetensors", "model.safetensors.index.json", "model.safetensors"),
    ("pdparams", "model_state.pdparams.index.json", "model_state.pdparams"),
    ("torch", "pytorch_model.bin.index.json", "pytorch_model.bin"),
)
SHARD_PREFIX = {"safetensors": "model", "pdparams": "model_state", "torch": "pytorch_model"}
SUFFIX = {"safetensors": ".safetensors", "pdparams": ".pdparams", "torch": ".bin"}


def is_checkpoint_file(name: str, formats: Tuple[str, ...] = ("safetensors", "pdparams", "torch")) -> bool:
    """Whether a file name is a weight file or index of one of ``formats``."""
    return any(name in (idx, single) or (name.startswith(SHARD_PREFIX[fmt] + "-") and name.endswith(SUFFIX[fmt]))
               for fmt, idx, single in CHECKPOINT_KINDS if fmt in formats)


@dataclass
class TensorSpec:
    dtype: np.dtype
    shape: Tuple[int, ...]


@dataclass
class CheckpointSource:
    """The weight files of one checkpoint: a single file, or shards listed by an index."""

    directory: str
    format: str  # "safetensors", "pdparams" or "torch"
    shards: List[str]  # file names, in index order
    weight_map: Optional[Dict[str, str]] = None  # name -> shard file, when sharded
    index_file: Optional[str] = None
    _metadata_format: Optional[str] = field(default=None, repr=False)

    def path(self, shard: str) -> str:
        return os.path.join(self.directory, shard)

    @property
    def total_bytes(self) -> int:
        return sum(os.path.getsize(self.path(s)) for s in self.shards)

    def read_shard(self, shard: str) -> Iterator[Tuple[str, np.ndarray]]:
        """Yield ``(name, array)`` for every tensor in one shard (bfloat16 as uint16 bits).

        pdparams and .bin arrays are views of the file's memory map (pdparams ones read-only):
        the data is paged in when used, not copied.
        """
        path = self.path(shard)
        if self.format == "safetensors":
            with SafetensorsFile(path) as f:
                yield from f.items()
        elif self.format == "pdparams":
            with safe_pickle.open_pdparams(path) as state:  # the file's map is released when the shard is done
                while state:  # hand tensors over one by one so the caller can free them
                    name = next(iter(state))
                    yield name, state.pop(name)
        else:
            yield from iter_torch_bin(path)

    def specs(self, shard: str) -> Dict[str, TensorSpec]:
        """Names, dtypes and shapes of one shard, without keeping its data in memory."""
        path = self.path(shard)
        if self.format == "safetensors":
            with SafetensorsFile(path) as f:
                names = f.keys()
                return {n: TensorSpec(f.storage_dtype(n), f.shape(n)) for n in names}
        if self.format == "pdparams":
            return {n: TensorSpec(np.dtype(d), tuple(s)) for n, (d, s) in safe_pickle.scan_pdparams(path).items()}
        return {n: TensorSpec(a.dtype, a.shape) for n, a in iter_torch_bin(path)}

    @property
    def metadata_format(self) -> Optional[str]:
        """The safetensors ``format`` metadata ("np" from PaddleNLP, "pt" from PyTorch), if any."""
        if self.format == "safetensors" and self._metadata_format is None:
            with SafetensorsFile(self.path(self.shards[0])) as f:
                self._metadata_format = f.metadata.get("format", "")
        return self._metadata_format or None

    def detect_layout(self) -> str:
        """"paddle" or "torch", from safetensors metadata and the shapes of the non-square weights.

        Reads headers only for safetensors; for pdparams and .bin it scans the one
        shard that holds the first non-square weight (per the index).
        """
        shapes: Dict[str, Tuple[int, ...]] = {}
        if self.format == "safetensors":
            for shard in self.shards:
                shapes.update({n: s.shape for n, s in self.specs(shard).items()})
        else:
            shard = self.shards[0]
            if self.weight_map is not None:
                shard = next((self.weight_map[n] for n in self.weight_map if layout.is_non_square(n)), shard)
            shapes = {n: s.shape for n, s in self.specs(shard).items()}
        return layout.detect_layout(shapes, self.metadata_format, self.index_file or self.path(self.shards[0]))

    def check_shard_names(self, shard: str, names: List[str]) -> None:
        """With an index, every tensor the index puts in ``shard`` must be there."""
        if self.weight_map is None:
            return
        expected = {n for n, s in self.weight_map.items() if s == shard}
        missing = sorted(expected - set(names))
        if missing:
            raise CheckpointError(f"{self.path(shard)}: the index {self.index_file} lists tensors this shard lacks: "
                                  f"{', '.join(missing[:10])}")


def find_checkpoint(directory: str,
                    formats: Tuple[str, ...] = ("safetensors", "pdparams", "torch")) -> CheckpointSource:
    """The checkpoint in ``directory``: an index with its shards, or a single weight file.

    Raises CheckpointError naming the directory if none is there, and naming the
    file if the index is unreadable; MissingFileError if the index lists a shard that
    does not exist (or vanished: a save replaced the checkpoint meanwhile).
    """
    for _ in range(2):  # a second look, in case a save swapped the entry points while the first one looked
        source = _look_for_checkpoint(directory, formats)
        if source is not None:
            return source
    wanted = ", ".join(f"{idx} or {single}" for fmt, idx, single in CHECKPOINT_KINDS if fmt in formats)
    raise CheckpointError(f"{directory}: no checkpoint found (looked for {wanted})")


def _look_for_checkpoint(directory: str, formats: Tuple[str, ...]) -> Optional[CheckpointSource]:
    for fmt, index_name, single_name in CHECKPOINT_KINDS:
        if fmt not in formats:
            continue
        index_path = os.path.join(directory, index_name)
        if os.path.isfile(index_path):
            weight_map = _read_index(index_path)
            shards = list(dict.fromkeys(weight_map.values()))
            for shard in shards:
                if not os.path.isfile(os.path.join(directory, shard)):
                    raise MissingFileError(f"{os.path.join(directory, shard)}: shard listed in {index_path} is missing")
            return CheckpointSource(directory, fmt, shards, weight_map, index_path)
        if os.path.isfile(os.path.join(directory, single_name)):
            return CheckpointSource(directory, fmt, [single_name])
    return None


def _read_index(path: str) -> Dict[str, str]:
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
        weight_map = index["weight_map"]
    except FileNotFoundError:
        raise MissingFileError(f"{path}: file not found") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    except (KeyError, TypeError):
        raise CheckpointError(f"{path}: index has no 'weight_map'") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path}: 'weight_map' must be a non-empty object of tensor name -> file")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or os.path.basename(shard) != shard:
            raise CheckpointError(f"{path}: 'weight_map' gives tensor {name!r} the file {shard!r}; expected the "
                                  "name of a shard file in the same directory")
    return weight_map
