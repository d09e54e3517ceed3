"""Reading and writing ``.pdparams`` files without running code from them.

A ``.pdparams`` file is a pickle of ``{name: numpy.ndarray}`` (plus PaddleNLP's
``"StructuredToParameterName@@"`` dict). An ordinary unpickle imports and calls
whatever the file names, so a malicious file can run shell commands. This
unpickler resolves only the few globals that numpy arrays and plain containers
need and rejects every other one before anything is called.
"""
from __future__ import annotations

import collections
import pickle
from typing import Dict, Iterable, Tuple

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


class _ArraySpec:
    """Stands in for an ndarray while scanning: keeps shape and dtype, drops the data."""

    shape: Tuple[int, ...] = ()
    dtype = None

    def __setstate__(self, state):
        # ndarray state: (version, shape, dtype, is_fortran, raw_data)
        self.shape, self.dtype = tuple(state[1]), state[2]


class _ScanningUnpickler(_RestrictedUnpickler):
    def find_class(self, module: str, name: str):
        found = super().find_class(module, name)
        return (lambda *args: _ArraySpec()) if name == "_reconstruct" else found


def _unpickle(path: str, unpickler) -> dict:
    try:
        with open(path, "rb") as f:
            data = unpickler(f, path).load()
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except _READ_ERRORS as e:
        raise CheckpointError(f"{path}: truncated or corrupt .pdparams file ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of arrays, found {type(data).__name__}")
    data.pop(STRUCTURED_NAME_KEY, None)
    for name, value in data.items():
        if not isinstance(value, (np.ndarray, _ArraySpec)):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(value).__name__}, not an array")
    return data


def load_pdparams(path: str) -> Dict[str, np.ndarray]:
    """Read a ``.pdparams`` file safely; returns ``{name: array}`` without PaddleNLP's name map."""
    return _unpickle(path, _RestrictedUnpickler)


def scan_pdparams(path: str) -> Dict[str, Tuple[np.dtype, Tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` of a ``.pdparams`` file, holding one tensor's bytes at a time."""
    return {name: (spec.dtype, spec.shape) for name, spec in _unpickle(path, _ScanningUnpickler).items()}


def save_pdparams(path: str, tensors: Iterable[Tuple[str, np.ndarray]]) -> None:
    """Write ``{name: array}`` as ``paddle.save`` does (pickle protocol 4)."""
    state = {name: np.ascontiguousarray(array) for name, array in tensors}
    state[STRUCTURED_NAME_KEY] = {name: name for name in state}
    with open(path, "wb") as f:
        pickle.dump(state, f, protocol=4)
