"""A finetune's output directory ``--out``: one writer at a time, checked before training, never lost.

- **One writer.** :func:`output_lock` holds ``fcntl.flock`` on ``.OUT.lock`` beside ``OUT`` for
  the whole run; a second run on the same ``OUT`` is refused at once, naming the holder's PID.
  The kernel drops the lock when its holder dies (even by SIGKILL), so it never goes stale.
  ``finetune --nproc N`` takes it in the starting process, which tells the ranks through
  ``LOCK_ENV``; a job started by hand through ``paddle.distributed.launch`` has rank 0 take it.
- **Leftovers.** Under the lock, the temporary directories an earlier run killed mid-save left
  (``OUT/.checkpoint-N.tmp-*``, ``OUT/.save-tmp-*``, ``.OUT.tmp-*`` beside it) are removed, and an
  ``--overwrite`` killed mid-swap is finished or undone (``.OUT.old-*``).
- **--overwrite.** :func:`run_directory` has the run write everything (checkpoints included)
  into ``.OUT.tmp-*`` beside ``OUT``, swapped onto ``OUT`` once the output is complete; a run
  that fails or stops leaves the old ``OUT`` as it was.
- **Write errors** (a full disk) become one line naming the path (:func:`writing`); the
  half-written directory is removed by :func:`~paddle_glm.io_utils.atomic_output_dir`.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import time
from typing import Iterator

from ..errors import GLMError
from ..io_utils import atomic_output_dir, remove_tree
from ..lora import CONFIG_FILE as LORA_CONFIG_FILE
from ..tokenizer import ADDED_TOKENS_FILE, MODEL_FILE, TOKENIZER_CONFIG_FILE

LOCK_ENV = "PADDLE_GLM_FINETUNE_OUT_LOCKED"  # the --out whose lock the parent process holds for us
_PID_WAIT_SECONDS = 1.0


def check_output_path(out: str) -> None:
    """``--out`` must be a directory or absent, below a writable directory: a GLMError naming it otherwise."""
    path = os.path.realpath(out)
    if os.path.exists(path) and not os.path.isdir(path):
        raise GLMError(f"--out {out}: exists and is not a directory")
    ancestor = os.path.dirname(path)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise GLMError(f"--out {out}: {ancestor} is a file, not a directory")
    for directory in (ancestor, path) if os.path.isdir(path) else (ancestor,):
        if not os.access(directory, os.W_OK | os.X_OK):
            raise GLMError(f"--out {out}: {directory} is not writable")


def lock_file(out: str) -> str:
    path = os.path.realpath(out)
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")


@contextlib.contextmanager
def output_lock(out: str) -> Iterator[None]:
    """Hold ``--out``'s lock while the block runs (see the module's docstring); removes leftovers first.

    Raises:
        GLMError: another run holds it (naming its PID), or the lock file cannot be made.
    """
    real = os.path.realpath(out)
    if os.environ.get(LOCK_ENV) == real:  # the process that started us holds it
        yield
        return
    check_output_path(out)
    path = lock_file(out)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = _acquire(path, out)
    except OSError as e:
        raise GLMError(f"--out {out}: cannot make its lock file {path} ({e.strerror or e})") from None
    os.environ[LOCK_ENV] = real
    try:
        remove_leftovers(real)
        yield
    finally:
        os.environ.pop(LOCK_ENV, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still holding it: a run that opened this file retries on a new one
        os.close(fd)


def _acquire(path: str, out: str) -> int:
    """An open descriptor of ``path`` holding its flock (the file still at ``path``), our PID written in."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise GLMError(f"--out {out}: another finetune (PID {_holder(path)}) is writing this directory; "
                           "wait for it to end, or choose another --out") from None
        with contextlib.suppress(FileNotFoundError):
            held, current = os.fstat(fd), os.stat(path)
            if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
        os.close(fd)  # its holder removed it between our open and our lock: lock the new file


def _holder(path: str) -> str:
    """The PID in the lock file (its holder writes it just after locking, so wait a moment for it)."""
    deadline = time.monotonic() + _PID_WAIT_SECONDS
    while True:
        with contextlib.suppress(OSError), open(path, encoding="ascii", errors="replace") as f:
            pid = f.read().strip()
            if pid:
                return pid
        if time.monotonic() > deadline:
            return "unknown"
        time.sleep(0.05)


def remove_leftovers(out: str) -> None:
    """Delete the temporary directories of earlier runs on ``out`` that were killed mid-save; put back an
    old output that a run killed mid-swap (``--overwrite``) had moved aside."""
    out = os.path.realpath(out)
    parent, name = os.path.split(out)
    patterns = [os.path.join(glob.escape(out), ".checkpoint-*.tmp-*"), os.path.join(glob.escape(out), ".save-tmp-*"),
                os.path.join(glob.escape(parent), f".{glob.escape(name)}.tmp-*")]
    for pattern in patterns:
        for path in glob.glob(pattern):
            remove_tree(path)
    for old in glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(name)}.old-*")):
        if os.path.lexists(out):  # killed after the swap, before deleting the old output
            remove_tree(old)
        else:  # killed between the swap's two renames: the old output goes back
            os.rename(old, out)


@contextlib.contextmanager
def run_directory(out: str, overwrite: bool) -> Iterator[str]:
    """Where the run writes: ``out`` itself, or with ``overwrite`` of a non-empty ``out`` a temporary
    directory beside it that replaces ``out`` when the block ends without an exception."""
    if not (overwrite and os.path.isdir(out) and os.listdir(out)):
        yield out
        return
    with atomic_output_dir(out, overwrite=True) as work:
        yield work


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` (a full disk, say) into one GLMError line naming it."""
    try:
        yield
    except OSError as e:
        raise GLMError(f"{path}: cannot write it ({e.strerror or e}); what was half-written is removed") from None


def output_complete(out: str, lora: bool) -> bool:
    """Whether ``out`` holds a run's final output: the tokenizer files are written last (``write_output``)."""
    model_file = LORA_CONFIG_FILE if lora else "config.json"
    return all(os.path.isfile(os.path.join(out, name))
               for name in (model_file, MODEL_FILE, TOKENIZER_CONFIG_FILE, ADDED_TOKENS_FILE))
