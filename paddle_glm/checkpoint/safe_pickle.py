"""Reading and writing ``.pdparams`` files without running code from them.

A ``.pdparams`` file is a pickle of ``{name: numpy.ndarray}`` (plus PaddleNLP's
``"StructuredToParameterName@@"`` dict). An ordinary unpickle imports and calls
whatever the file names, so a malicious file can run shell commands. This
unpickler resolves only the few globals that numpy arrays and plain containers
need and rejects every other one before anything is called.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import mmap
import os
import pickle
from typing import Dict, Iterable, Iterator, Optional, Tuple

import numpy as np

from ..errors import CheckpointError, MissingFileError

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


class _FileMap:
    """Builds a file's arrays: large ones as read-only views of one memory map of the file, small ones
    from the pickle's bytes. It holds no reference to the unpickler, so nothing forms a reference
    cycle and the map is released as soon as the file is done (without waiting for the garbage collector).
    """

    def __init__(self, file, reader: _SkippingFile, path: str):
        self._file, self._reader, self._path = file, reader, path
        self._map: Optional[mmap.mmap] = None

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

    def close(self) -> None:
        """Unmap the file now, unless an array of it is still in use (then the last one unmaps it)."""
        if self._map is not None:
            with contextlib.suppress(BufferError):  # BufferError: arrays still view the map
                self._map.close()
            self._map = None


class _FileArray:
    """Stands in for an ndarray while unpickling; its ``array`` is built from the pickled state."""

    def __init__(self, file_map: _FileMap, *_reconstruct_args):
        self._file_map = file_map
        self.array: Optional[np.ndarray] = None

    def __setstate__(self, state):
        # ndarray state: ([version,] shape, dtype, is_fortran, raw_data)
        shape, dtype, fortran, raw = state[-4:]
        self.array = self._file_map.array(tuple(shape), np.dtype(dtype), bool(fortran), raw)
        self._file_map = None


class _ArrayUnpickler(_RestrictedUnpickler):
    """Unpickles ndarrays as ``_FileArray`` stand-ins built by a ``_FileMap``."""

    def __init__(self, file, path: str):
        reader = _SkippingFile(file, path)
        super().__init__(reader, path)
        self.file_map = _FileMap(file, reader, path)
        # The unpickler memoizes what find_class returns: a partial of the map, not a closure over self.
        self._new_array = functools.partial(_FileArray, self.file_map)

    def find_class(self, module: str, name: str):
        found = super().find_class(module, name)
        return self._new_array if found is _multiarray._reconstruct else found


@contextlib.contextmanager
def open_pdparams(path: str) -> Iterator[Dict[str, np.ndarray]]:
    """Read a ``.pdparams`` file safely; yields ``{name: array}`` without PaddleNLP's name map.

    Large arrays are read-only views of a memory map of the file: reading costs no copy. On
    leaving the ``with`` block the map is closed, or, if the caller still holds arrays of it,
    released with the last of them; either way it never waits for the garbage collector.
    """
    file_map = None
    try:
        try:
            with open(path, "rb") as f:
                unpickler = _ArrayUnpickler(f, path)
                file_map = unpickler.file_map
                data = unpickler.load()
        except CheckpointError:
            raise
        except FileNotFoundError:
            raise MissingFileError(f"{path}: file not found") from None
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
        except _READ_ERRORS as e:
            raise CheckpointError(f"{path}: truncated or corrupt .pdparams file ({type(e).__name__}: {e})") from None
        unpickler = None  # its memo holds every unpickled object
        arrays = _arrays_of(data, path)
        data = None
        yield arrays
    finally:
        unpickler = data = arrays = None  # noqa: F841 (drop this frame's references before unmapping)
        if file_map is not None:
            file_map.close()


def _arrays_of(data, path: str) -> Dict[str, np.ndarray]:
    """The unpickled dict's arrays by name (PaddleNLP's name map left out)."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of arrays, found {type(data).__name__}")
    arrays = {}
    for name, value in data.items():
        if name == STRUCTURED_NAME_KEY:
            continue
        if isinstance(value, _FileArray):
            value = value.array
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(value).__name__}, not an array")
        arrays[name] = value
    return arrays


def scan_pdparams(path: str) -> Dict[str, Tuple[np.dtype, Tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` of a ``.pdparams`` file; large arrays' data is not read."""
    with open_pdparams(path) as arrays:
        return {name: (array.dtype, array.shape) for name, array in arrays.items()}


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
