"""The safetensors file format, read and written tensor by tensor.

Format: 8-byte little-endian header length, a JSON header mapping each name to
``{"dtype", "shape", "data_offsets"}`` (plus ``__metadata__``), then the raw
little-endian data. This module reads one tensor at a time (memory is one
tensor, not one file), reports truncated files by name, and maps bfloat16 both
ways: PaddleNLP stores it as ``U16``, PyTorch/HF as ``BF16``; both read back as
uint16 bit patterns (see ``dtypes.py``). Tests check it against the
``safetensors`` library in both directions.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import CheckpointError, MissingFileError

_HEADER_LIMIT = 100 * 2**20  # the safetensors library's own cap on header size
_NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "U16": np.uint16, "F64": np.float64,
                 "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_CODES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.uint16): "U16",
          np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8"}  # the integer weights of quantized checkpoints
# Tensor data is written in slices of this size: measured ~1.5x faster than one write per tensor
# when the data is a memory map of the source file (as when converting pdparams).
_WRITE_CHUNK = 2**20


class SafetensorsFile:
    """An open safetensors file: its header, read once, and tensor reads by name."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._file = open(path, "rb")  # noqa: SIM115 (open until close(): tensors are read one by one)
        except FileNotFoundError:
            raise MissingFileError(f"{path}: file not found") from None
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
        size = os.fstat(self._file.fileno()).st_size
        raw = self._file.read(8)
        if len(raw) < 8:
            self.close()
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > _HEADER_LIMIT or 8 + header_len > size:
            self.close()
            raise CheckpointError(f"{path}: truncated or corrupt safetensors file (header of {header_len} bytes, "
                                  f"file of {size} bytes)")
        try:
            header = json.loads(self._file.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            self.close()
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
        if not isinstance(header, dict):
            self.close()
            raise CheckpointError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
        self.metadata: Dict[str, str] = header.pop("__metadata__", None) or {}
        for name, entry in header.items():
            if not _valid_entry(entry):
                self.close()
                raise CheckpointError(f"{path}: corrupt safetensors header entry for tensor {name!r}: {entry!r}")
        self.entries: Dict[str, dict] = header
        self._data_start = 8 + header_len
        data_end = max((e["data_offsets"][1] for e in header.values()), default=0)
        if self._data_start + data_end > size:
            self.close()
            raise CheckpointError(f"{path}: truncated safetensors file: the header needs {self._data_start + data_end} "
                                  f"bytes, the file has {size}")
        problem = _layout_problem(header)
        if problem:
            self.close()
            raise CheckpointError(f"{path}: corrupt safetensors header: {problem}")

    def keys(self) -> List[str]:
        return list(self.entries)

    def shape(self, name: str) -> Tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def storage_dtype(self, name: str) -> np.dtype:
        """The numpy dtype ``get`` returns (uint16 for bfloat16)."""
        code = self.entries[name]["dtype"]
        if code not in _NUMPY_DTYPES:
            raise CheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype {code}")
        return np.dtype(_NUMPY_DTYPES[code])

    def get(self, name: str) -> np.ndarray:
        entry = self.entries[name]
        dtype = self.storage_dtype(name)
        start, end = entry["data_offsets"]
        count = int(np.prod(entry["shape"], dtype=np.int64))
        if end - start != count * dtype.itemsize:
            raise CheckpointError(f"{self.path}: tensor {name!r}: {end - start} bytes do not fit shape "
                                  f"{entry['shape']}")
        self._file.seek(self._data_start + start)
        array = np.fromfile(self._file, dtype=dtype.newbyteorder("<"), count=count)
        if array.size != count:
            raise CheckpointError(f"{self.path}: truncated while reading tensor {name!r}")
        return array.astype(dtype, copy=False).reshape(entry["shape"])

    def items(self) -> Iterator[Tuple[str, np.ndarray]]:
        for name in self.entries:
            yield name, self.get(name)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _valid_entry(entry) -> bool:
    """``{"dtype": str, "shape": [int >= 0, ...], "data_offsets": [start, end]}`` with 0 <= start <= end."""
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    ints = lambda values: isinstance(values, list) and all(  # noqa: E731
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)
    return ints(shape) and ints(offsets) and len(offsets) == 2 and offsets[0] <= offsets[1]


def _layout_problem(header: Dict[str, dict]) -> str:
    """The safetensors library's checks of the data offsets: each tensor's bytes fit its shape and
    dtype, and the tensors tile the data from 0 without gaps or overlaps ("" if all is well)."""
    for name, entry in header.items():
        start, end = entry["data_offsets"]
        code = entry["dtype"]
        if code in _NUMPY_DTYPES:
            count = int(np.prod(entry["shape"], dtype=np.int64))
            if end - start != count * np.dtype(_NUMPY_DTYPES[code]).itemsize:
                return f"tensor {name!r} has {end - start} bytes of data for shape {entry['shape']} and dtype {code}"
    previous, filled = None, 0
    for name, entry in sorted(header.items(), key=lambda item: tuple(item[1]["data_offsets"])):
        start, end = entry["data_offsets"]
        if start < filled:
            return f"tensors {previous!r} and {name!r} overlap (data_offsets {header[previous]['data_offsets']} " \
                   f"and {[start, end]})"
        if start > filled:
            return f"a gap of {start - filled} bytes before tensor {name!r} (data_offsets {[start, end]})"
        if end > start:
            previous, filled = name, end
    return ""


def write_safetensors(path: str, tensors: Iterable[Tuple[str, np.ndarray]], metadata: Optional[Dict[str, str]] = None,
                      bf16_code: str = "U16") -> None:
    """Write tensors (uint16 = bfloat16 bits) with ``bf16_code`` "U16" (PaddleNLP) or "BF16" (PyTorch/HF)."""
    tensors = [(name, np.require(array, requirements="C")) for name, array in tensors]  # keeps 0-d shapes
    header: Dict[str, dict] = {"__metadata__": dict(metadata or {})}
    offset = 0
    for name, array in tensors:
        code = _CODES.get(array.dtype)
        if code is None:
            raise CheckpointError(f"{path}: cannot store tensor {name!r} of dtype {array.dtype}")
        if code == "U16":
            code = bf16_code
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # align the data to 8 bytes, as the library does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, array in tensors:
            data = array.astype(array.dtype.newbyteorder("<"), copy=False).reshape(-1).view(np.uint8)
            for start in range(0, data.size, _WRITE_CHUNK):
                f.write(data[start:start + _WRITE_CHUNK])
