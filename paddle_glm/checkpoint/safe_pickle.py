"""Reading and writing ``.pdparams`` files without running code from them.

A ``.pdparams`` file is a pickle of ``{name: numpy.ndarray}`` (plus PaddleNLP's
``"StructuredToParameterName@@"`` dict). An ordinary unpickle imports and calls
whatever the file names, so a malicious file can run shell commands. This
unpickler resolves only the few globals that numpy arrays and plain containers
need and rejects every other one before anything is called.
"""
from __future__ import annotations

import collections
import mmap
import os
import pickle
from typing import Dict, Iterable, Optional, Tuple

import numpy as np

from ..errors import CheckpointError

try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray

STRUCTURED_NAME_KEY = "StructuredToParameterName@@"

# Everything a pickled dict of numpy arrays refers to, under numpy 1.x and 2.x module names.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
_READ_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"{self._path}: refusing to load: the pickle asks for the global '{module}.{name}', which a "
                "checkpoint of numpy arrays never needs (the file may be malicious). Nothing from it was run."
            ) from None

    def persistent_load(self, pid):
        raise CheckpointError(f"{self._path}: refusing to load: the pickle uses persistent ids ({pid!r})")


# Array data at least this large is mapped from the file instead of copied into memory.
_MAP_MIN_BYTES = 2**16


class _SkippingFile:
    """The file as the unpickler reads it, except that large payloads are skipped and recorded.

    The pickler writes large bytes objects (array data) outside its frames and the unpickler
    reads them with ``readinto``: skipping them means the data is never copied; it is mapped
    from the file afterwards (``_ArrayUnpickler.array``).
    """

    def __init__(self, file, path: str):
        self._file, self._path = file, path
        self._size = os.fstat(file.fileno()).st_size
        self.read, self.readline = file.read, file.readline
        self.skipped: Optional[Tuple[int, int]] = None  # (offset, nbytes) of the payload just skipped

    def readinto(self, buffer) -> int:
        nbytes = memoryview(buffer).nbytes
        if nbytes < _MAP_MIN_BYTES:
            return self._file.readinto(buffer)
        offset = self._file.tell()
        if offset + nbytes > self._size:
            raise CheckpointError(f"{self._path}: truncated .pdparams file (array data at bytes {offset}-"
                                  f"{offset + nbytes}, the file has {self._size} bytes)")
        self._file.seek(nbytes, os.SEEK_CUR)
        self.skipped = (offset, nbytes)
        return nbytes


class _FileArray:
    """Stands in for an ndarray while unpickling; its ``array`` is built from the pickled state."""

    def __init__(self, unpickler: "_ArrayUnpickler"):
        self._unpickler = unpickler
        self.array: Optional[np.ndarray] = None

    def __setstate__(self, state):
        # ndarray state: ([version,] shape, dtype, is_fortran, raw_data)
        shape, dtype, fortran, raw = state[-4:]
        self.array = self._unpickler.array(tuple(shape), np.dtype(dtype), bool(fortran), raw)


class _ArrayUnpickler(_RestrictedUnpickler):
    """Builds arrays as read-only views of a memory map of the file (small ones from the pickle's bytes)."""

    def __init__(self, file, path: str):
        self._reader = _SkippingFile(file, path)
        super().__init__(self._reader, path)
        self._file = file
        self._map: Optional[mmap.mmap] = None

    def find_class(self, module: str, name: str):
        found = super().find_class(module, name)
        return (lambda *args: _FileArray(self)) if found is _multiarray._reconstruct else found

    def array(self, shape: Tuple[int, ...], dtype: np.dtype, fortran: bool, raw) -> np.ndarray:
        if dtype.hasobject or not isinstance(raw, (bytes, bytearray)):
            raise CheckpointError(f"{self._path}: holds an array that is not plain numbers (dtype {dtype})")
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize != len(raw):
            raise CheckpointError(f"{self._path}: corrupt .pdparams file ({len(raw)} bytes of data for an array "
                                  f"of shape {list(shape)} and dtype {dtype})")
        skipped, self._reader.skipped = self._reader.skipped, None
        if skipped is None:
            flat = np.frombuffer(raw, dtype, count)
        elif skipped[1] == len(raw):  # ``raw`` was never filled: the data is in the file at skipped[0]
            if self._map is None:
                self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            flat = np.frombuffer(self._map, dtype, count, skipped[0])
        else:
            raise CheckpointError(f"{self._path}: corrupt .pdparams file (a large payload is not array data)")
        return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def load_pdparams(path: str) -> Dict[str, np.ndarray]:
    """Read a ``.pdparams`` file safely; returns ``{name: array}`` without PaddleNLP's name map.

    Large arrays are read-only views of a memory map of the file: reading costs no copy, and
    the pages are the page cache's (released when the last array of the file is).
    """
    try:
        with open(path, "rb") as f:
            data = _ArrayUnpickler(f, path).load()
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except _READ_ERRORS as e:
        raise CheckpointError(f"{path}: truncated or corrupt .pdparams file ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of arrays, found {type(data).__name__}")
    data.pop(STRUCTURED_NAME_KEY, None)
    arrays = {}
    for name, value in data.items():
        if isinstance(value, _FileArray):
            value = value.array
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(value).__name__}, not an array")
        arrays[name] = value
    return arrays


def scan_pdparams(path: str) -> Dict[str, Tuple[np.dtype, Tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` of a ``.pdparams`` file; large arrays' data is not read."""
    return {name: (array.dtype, array.shape) for name, array in load_pdparams(path).items()}


def save_pdparams(path: str, tensors: Iterable[Tuple[str, np.ndarray]]) -> None:
    """Write ``{name: array}`` as ``paddle.save`` does (pickle protocol 4).

    The pickler runs without its memo ("fast" mode): with it, the bytes copy that
    pickling makes of each array stays alive until the end, doubling peak memory.
    The file is an ordinary pickle either way (there are no shared objects to memoize).
    """
    state = {name: np.require(array, requirements="C") for name, array in tensors}  # keeps 0-d shapes
    state[STRUCTURED_NAME_KEY] = {name: name for name in state}
    with open(path, "wb") as f:
        pickler = pickle.Pickler(f, protocol=4)
        pickler.fast = True
        pickler.dump(state)
