"""Checkpoint conversion: pdparams <-> safetensors, and the Paddle <-> PyTorch weight layouts.

One input shard is read at a time and each output shard is written as soon as it
fills, so memory stays near one input shard plus one output shard. The output is
built in a temporary directory beside DST that replaces DST only when complete
(and, with ``verify=True``, checked), so a failed run leaves no partial output.
SRC is only ever read.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Set, Tuple

import numpy as np
from tqdm.auto import tqdm

from .checkpoint import layout as layouts
from .checkpoint.dtypes import DTYPE_NAMES, cast_array, dtype_name
from .checkpoint.source import CheckpointSource, find_checkpoint, is_checkpoint_file
from .checkpoint.writer import ShardedWriter
from .errors import CheckpointError, GLMError
from .io_utils import atomic_output_dir, parse_size, require_local_dir
from .quantization.settings import refuse_quantized_source

OUTPUT_FORMATS = ("safetensors", "pdparams")
FROM_LAYOUTS = ("auto",) + layouts.LAYOUTS
DTYPES = ("keep",) + DTYPE_NAMES


@dataclass
class ConvertReport:
    """What ``convert`` wrote: tensor count, tensor bytes, wall seconds and the files in DST."""

    tensors: int
    bytes: int
    seconds: float
    files: List[str]
    source_layout: str
    verified: bool

    def summary(self) -> str:
        """One line for the user: tensors, bytes, seconds (and whether the output was verified)."""
        checked = ", verified" if self.verified else ""
        return (f"{self.tensors} tensors, {self.bytes / 1e9:.3f} GB ({self.bytes} bytes) in {self.seconds:.1f} s"
                f"{checked}; {len(self.files)} files")


@dataclass(frozen=True)
class _Transform:
    """How each source tensor becomes an output tensor: layout, then dtype (unknown names pass unchanged)."""

    source_layout: str
    target_layout: str
    dtype: str  # "keep" or a dtype name

    def __call__(self, name: str, array: np.ndarray, where: str) -> np.ndarray:
        if layouts.table_key(name) is None:
            return array
        try:
            source_dtype = dtype_name(array)
        except GLMError as e:
            raise CheckpointError(f"{where}: tensor {name!r}: {e}") from None
        array = layouts.convert_layout(name, array, self.source_layout, self.target_layout)
        return array if self.dtype in ("keep", source_dtype) else cast_array(array, self.dtype)

    def outputs(self, name: str, array: np.ndarray, where: str) -> List[Tuple[str, np.ndarray]]:
        """The output tensors ``(name, array)`` made from one source tensor (here: the tensor converted)."""
        return [(name, self(name, array, where))]


def convert(src: str, dst: str, to: str = "safetensors", from_layout: str = "auto", to_layout: str = "paddle",
            dtype: str = "keep", max_shard_size="2GB", verify: bool = False, overwrite: bool = False,
            allow_unknown: bool = False, quiet: bool = False) -> ConvertReport:
    """Convert the GLM checkpoint in directory ``src`` into directory ``dst``.

    Args:
        src: a directory with PaddleNLP pdparams or safetensors, a PyTorch ``pytorch_model.bin``
            or HF safetensors (single file or shards + index).
        dst: the output directory (must not exist, be empty, or ``overwrite`` must be set).
        to: "safetensors" or "pdparams"; files and index are named as PaddleNLP names them.
        from_layout: "auto" (from safetensors metadata and the non-square weights' shapes),
            "paddle" or "torch".
        to_layout: "paddle" (Linear weights ``[in, out]``) or "torch" (``[out, in]``).
        dtype: "keep", "float32", "float16" or "bfloat16" (round to nearest even).
        max_shard_size: bytes per output shard, an int or a string such as "2GB" or "500MB".
        verify: re-read every output tensor and compare it bit for bit with the converted
            source before DST is put in place.
        overwrite: replace a non-empty ``dst``.
        allow_unknown: copy tensors the layout table does not know unchanged (else an error).
        quiet: no progress bars.

    Every other top-level file of ``src`` (config.json, tokenizer files, ...) is copied.
    Raises GLMError (CheckpointError for bad files) naming the file or tensor at fault.
    """
    _check_choice("to", to, OUTPUT_FORMATS)
    _check_choice("from_layout", from_layout, FROM_LAYOUTS)
    _check_choice("to_layout", to_layout, layouts.LAYOUTS)
    _check_choice("dtype", dtype, DTYPES)
    refuse_quantized_source(src, "convert")
    return write_transformed(src, dst, lambda source: _Transform(_source_layout(source, from_layout), to_layout, dtype),
                             max_shard_size, to=to, layout=to_layout, verify=verify, overwrite=overwrite,
                             allow_unknown=allow_unknown, quiet=quiet)


def write_transformed(src: str, dst: str, transform_for: Callable[[CheckpointSource], _Transform],
                      max_shard_size="2GB", *, to: str = "safetensors", layout: str = "paddle", verify: bool = False,
                      overwrite: bool = False, allow_unknown: bool = False, quiet: bool = False,
                      finish_output: Optional[Callable[[str], None]] = None, desc: str = "Converting") -> ConvertReport:
    """Write ``transform_for(source).outputs`` of every tensor of the checkpoint in ``src`` into ``dst``.

    The machinery of :func:`convert` (and of ``paddle-glm quantize``): SRC only read, one input
    shard in memory at a time, DST built in a temporary directory and put in place when complete
    (after ``finish_output(tmp)``, which may edit the copied config.json, and with ``verify``, the
    re-read comparison), so an existing DST survives a failed run.
    """
    max_bytes = parse_size(max_shard_size)
    _check_paths(src, dst)
    start = time.perf_counter()
    source = find_checkpoint(src)
    if source.weight_map is not None:  # every name up front, so all unknown ones are listed at once
        layouts.check_known(source.weight_map, source.index_file, allow_unknown)
    transform = transform_for(source)
    with atomic_output_dir(dst, overwrite=overwrite) as tmp:
        writer = ShardedWriter(tmp, to, None, max_bytes, layout=layout)
        count = 0
        for shard in tqdm(source.shards, desc=desc, unit="shard", disable=quiet or None):
            where = source.path(shard)
            names = list(source.specs(shard))  # cheap: headers, or pickles/zips with their data mapped, not read
            layouts.check_known(names, where, allow_unknown)
            for name, array in tqdm(source.read_shard(shard), desc=shard, total=len(names), unit="tensor",
                                    leave=False, disable=quiet or None):
                for out_name, out in transform.outputs(name, array, where):
                    writer.add(out_name, out)
                    count += 1
            source.check_shard_names(shard, names)
        writer.finish()
        _copy_other_files(src, tmp)
        if finish_output is not None:
            finish_output(tmp)
        if verify:
            _verify(source, tmp, transform, quiet)
        files = sorted(os.listdir(tmp))
    return ConvertReport(count, writer.total_bytes, time.perf_counter() - start, files,
                         transform.source_layout, verify)


def verify(src: str, dst: str, from_layout: str = "auto", to_layout: str = "paddle", dtype: str = "keep",
           quiet: bool = True) -> int:
    """Check that ``dst`` holds exactly ``src``'s tensors converted with these options.

    Each output tensor must equal the source tensor moved to ``to_layout`` and cast to
    ``dtype`` bit for bit (tensors the layout table does not know: unchanged), and the
    output must hold no other tensor. Returns the number of tensors checked; raises
    CheckpointError naming the first tensor that differs.
    """
    _check_choice("from_layout", from_layout, FROM_LAYOUTS)
    _check_choice("to_layout", to_layout, layouts.LAYOUTS)
    _check_choice("dtype", dtype, DTYPES)
    source = find_checkpoint(src)
    return _verify(source, dst, _Transform(_source_layout(source, from_layout), to_layout, dtype), quiet)


def _check_choice(what: str, value: str, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise GLMError(f"{what}: {value!r} is not one of {', '.join(choices)}")


def _check_paths(src: str, dst: str) -> None:
    """SRC must be a directory that the output can never overwrite or land inside."""
    require_local_dir(src, "checkpoint")
    real_src, real_dst = os.path.realpath(src), os.path.realpath(dst)
    if real_dst == real_src or real_dst.startswith(real_src + os.sep):
        raise GLMError(f"{dst}: the output directory must be outside the source directory {src}; "
                       "choose another DST_DIR")
    if real_src.startswith(real_dst + os.sep):
        raise GLMError(f"{dst}: the output directory contains the source directory {src}, which "
                       "replacing it would destroy; choose another DST_DIR")


def _source_layout(source: CheckpointSource, requested: str) -> str:
    """The requested layout, or the one the files' metadata and non-square weights show."""
    return source.detect_layout() if requested == "auto" else requested


def _copy_other_files(src: str, dst: str) -> None:
    """Copy every top-level file of ``src`` that is not a weight file or index (config, tokenizer...)."""
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if os.path.isfile(path) and not is_checkpoint_file(name):
            shutil.copy2(path, os.path.join(dst, name))


class _OutputTensors:
    """Output tensors by name, holding one output shard in memory at a time."""

    def __init__(self, output: CheckpointSource):
        self.output = output
        self.names: Set[str] = set(output.weight_map or ())
        self._shard: Optional[str] = None
        self._tensors: Dict[str, np.ndarray] = {}

    def pop(self, name: str) -> Tuple[str, np.ndarray]:
        """``(path, array)`` of output tensor ``name``; CheckpointError if the output lacks it."""
        weight_map = self.output.weight_map
        shard = weight_map.get(name) if weight_map is not None else self.output.shards[0]
        if shard is None:
            raise CheckpointError(f"{self.output.index_file}: the output lacks tensor {name!r}")
        if shard != self._shard:
            self._shard, self._tensors = None, {}  # free the previous shard before reading the next
            self._tensors = dict(self.output.read_shard(shard))
            self._shard = shard
            self.names.update(self._tensors)
        path = self.output.path(shard)
        if name not in self._tensors:
            raise CheckpointError(f"{path}: the output lacks tensor {name!r}")
        return path, self._tensors.pop(name)


def _verify(source: CheckpointSource, out_dir: str, transform: _Transform, quiet: bool) -> int:
    """Compare every tensor in ``out_dir`` with ``transform`` of the source tensor, bit for bit."""
    outputs = _OutputTensors(find_checkpoint(out_dir, formats=OUTPUT_FORMATS))
    seen: Set[str] = set()
    for shard in tqdm(source.shards, desc="Verifying", unit="shard", disable=quiet or None):
        where = source.path(shard)
        for source_name, array in source.read_shard(shard):
            for name, expected in transform.outputs(source_name, array, where):
                path, got = outputs.pop(name)
                problem = _difference(expected, got)
                if problem:
                    raise CheckpointError(f"verify: tensor {name!r} in {path} does not match {where}: {problem}")
                seen.add(name)
    extra = sorted(outputs.names - seen)
    if extra:
        raise CheckpointError(f"verify: {out_dir} holds tensors the source lacks: {', '.join(extra[:10])}")
    return len(seen)


def _difference(expected: np.ndarray, got: np.ndarray) -> str:
    """How ``got`` differs from ``expected`` in dtype, shape or bits ("" if identical)."""
    if got.dtype != expected.dtype:
        return f"dtype {got.dtype}, expected {expected.dtype}"
    if got.shape != expected.shape:
        return f"shape {list(got.shape)}, expected {list(expected.shape)}"
    bits = np.dtype(f"u{expected.dtype.itemsize}")
    differ = int(np.count_nonzero(got.view(bits) != expected.view(bits)))
    return f"{differ} of {expected.size} values differ" if differ else ""
