"""File-system helpers: atomic writes and size strings."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from typing import Any, Dict, Iterator, Union

from .errors import GLMError, OutputExistsError

_SIZE_UNITS = {
    "": 1, "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}


def parse_size(size: Union[int, str]) -> int:
    """Bytes from an int or a string such as ``"60KB"``, ``"500MB"``, ``"2GB"`` or ``"1GiB"``.

    Units follow PaddleNLP's ``convert_file_size_to_int``: KB/MB/GB are powers of
    10, KiB/MiB/GiB powers of 2.
    """
    if isinstance(size, bool):
        raise GLMError(f"max_shard_size: expected bytes or a string like '2GB', got {size!r}")
    if isinstance(size, int):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(size))
        unit = match.group(2).upper() if match else None
        if unit not in _SIZE_UNITS:
            raise GLMError(f"max_shard_size: cannot read {size!r}; use bytes or a number with KB, MB, GB "
                           "(or KiB, MiB, GiB)")
        value = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if value <= 0:
        raise GLMError(f"max_shard_size must be positive, got {size!r}")
    return value


def read_json_object(path: str) -> Dict[str, Any]:
    """A JSON object file's contents; an unreadable file, bad JSON, text that is not UTF-8 or another
    JSON type is a GLMError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise GLMError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise GLMError(f"{path}: not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at offset {e.start}); "
                       "save it as UTF-8 JSON") from None
    except OSError as e:
        raise GLMError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise GLMError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as e:
        raise GLMError(f"{directory}: cannot write in this directory ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes it private; use an ordinary file's mode
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_output_dir(dst: str, *, overwrite: bool = False) -> Iterator[str]:
    """Yield a fresh temporary directory beside ``dst``; on success it becomes ``dst``.

    On any exception (a ``KeyboardInterrupt``, or the CLI's SIGTERM handler, included) the
    temporary directory is removed and ``dst`` is left as it was, so an interrupted write
    never leaves a half-written output or a leftover.

    Without ``overwrite``, the "is ``dst`` empty" check and the final rename are one atomic
    step (``rename`` onto a non-empty directory fails): of concurrent writers to one new
    ``dst``, exactly one wins and the others get a GLMError. If ``dst`` is a symlink (to a
    directory, or dangling), the output goes to the link's target and the link stays.

    Args:
        dst: the final directory.
        overwrite: replace an existing non-empty ``dst`` (otherwise refuse).
    """
    dst = os.path.realpath(dst)
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise GLMError(f"{dst}: exists and is not a directory")
    if os.path.isdir(dst) and os.listdir(dst) and not overwrite:
        raise OutputExistsError(dst, "directory exists and is not empty")
    parent = os.path.dirname(dst)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise GLMError(f"{parent}: cannot create the output's parent directory ({e.strerror or e})") from None
    tmp = make_temp_dir(parent, "." + os.path.basename(dst) + ".tmp-")
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; DST gets an ordinary directory's mode
        yield tmp
        if overwrite:
            _swap_in(tmp, dst)
        else:
            _rename_new(tmp, dst)
    except BaseException:
        remove_tree(tmp)
        raise


def make_temp_dir(parent: str, prefix: str) -> str:
    """A new private directory in ``parent``; a GLMError naming ``parent`` if it is not writable."""
    try:
        return tempfile.mkdtemp(dir=parent, prefix=prefix)
    except OSError as e:
        raise GLMError(f"{parent}: cannot write in this directory ({e.strerror or e})") from None


def remove_tree(path: str) -> None:
    """Delete a directory tree we made, even if a signal's exception interrupts the first attempt."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    finally:
        if os.path.lexists(path):
            shutil.rmtree(path, ignore_errors=True)


def _umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _rename_new(tmp: str, dst: str) -> None:
    """Rename ``tmp`` to ``dst``, which must be absent or empty at that instant (one atomic step)."""
    try:
        os.rename(tmp, dst)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise OutputExistsError(dst, "another process filled this directory while the output was being "
                                         "written; this output was discarded and the directory left as it is") from None
        raise GLMError(f"{dst}: cannot create it ({e.strerror or e})") from None


def _swap_in(tmp: str, dst: str) -> None:
    """Rename ``tmp`` to ``dst``, moving an existing ``dst`` aside first and deleting it after."""
    if not os.path.lexists(dst):
        _rename_new(tmp, dst)
        return
    old = make_temp_dir(os.path.dirname(dst), "." + os.path.basename(dst) + ".old-")
    os.rmdir(old)
    try:
        os.rename(dst, old)
        os.rename(tmp, dst)
    finally:  # also on a signal: restore the old DST if no new one is in place, else delete it
        if os.path.lexists(old):
            if os.path.lexists(dst):
                remove_tree(old)
            else:
                os.rename(old, dst)


def require_local_dir(path: str, what: str = "model") -> None:
    """Raise a clear error unless ``path`` is an existing local directory."""
    if os.path.isdir(path):
        return
    if os.path.exists(path):
        raise GLMError(f"{path}: expected a {what} directory, found a file")
    if not os.path.isabs(path) and path.count("/") <= 1 and not path.startswith("."):
        raise GLMError(f"{path}: no such local directory. paddle_glm does not download from model hubs: "
                       f"download the {what} files (config.json, weights, cog-pretrain.model) into a "
                       "directory first and pass its path")
    raise GLMError(f"{path}: no such {what} directory")
