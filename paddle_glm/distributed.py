"""Jobs of several processes on one machine: starting the ranks, a rank finding its place, rank 0's
outcomes shared with every rank, and signals that end the whole process tree.

``paddle-glm ... --tensor-parallel N`` and ``paddle-glm finetune ... --nproc N`` call :func:`launch`:
it runs ``python -m paddle.distributed.launch --nproc_per_node N ENTRY -- ARGV`` in a temporary
directory (``/tmp/paddle-glm-launch-*``). The launcher parses its whole command line with
abbreviations, so the command's arguments go after ``--``; its ``-m MODULE`` form does not run
``paddle_glm``, so ENTRY is a small script there. Each rank runs the same command line through
:func:`run_as_rank`: rank 0's stdout and stderr go to files there, which the starting process
shows as its own; every rank records its PID and, when it ends, its exit code and error line. The
launcher's and the ranks' own logs (glog lines, Paddle's set-up banner) stay in the directory's
``logs/`` and are shown only when a rank fails without a message.

The starting process watches the ranks. SIGTERM, SIGINT or SIGHUP to it, or a rank that dies
without a word (killed, out of memory), stops the launcher and every rank: SIGTERM first, which
each rank turns into an exception that its cleanup handles, then SIGKILL after
:data:`STOP_GRACE_SECONDS`. The directory is removed in every case.

The CPU threads of a rank are split in :func:`paddle_glm.devices.cpu_thread_count`: the ranks on
one machine share its cores, whoever started them.
"""
from __future__ import annotations

import codecs
import contextlib
import importlib.abc
import importlib.util
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Callable, Dict, Iterator, List, Optional, Tuple, TypeVar

from .errors import GLMError

WORK_DIR_ENV = "PADDLE_GLM_JOB_DIR"  # set for the ranks of launch(): where they write output, PIDs and statuses
STOP_GRACE_SECONDS = 5.0  # after SIGTERM, the ranks' time to clean up before SIGKILL
QUIET_RANK_ENV = {"GLOG_minloglevel": "2", "GLOG_v": "0", "FLAGS_call_stack_level": "0"}
LAUNCH_HINT = "python -m paddle.distributed.launch --nproc_per_node N your_script.py"
_POLL_SECONDS = 0.05
_ENTRY = """import sys
sys.path[0] = {root!r}  # the directory holding the paddle_glm the starting process runs
from paddle_glm.cli import main
sys.exit(main())
"""
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
T = TypeVar("T")


# ---- a process's place in the job ----------------------------------------------------------------

def in_launched_job() -> bool:
    """Whether this process was started by ``paddle.distributed.launch`` (or ``paddle.distributed.spawn``)."""
    return "PADDLE_TRAINERS_NUM" in os.environ


def rank_and_world() -> Tuple[int, int]:
    """This process's rank and the job's size, from the launcher's environment (0 and 1 outside a job)."""
    return int(os.environ.get("PADDLE_TRAINER_ID", "0")), int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def local_ranks() -> int:
    """How many ranks of the job run on this machine (1 outside a job)."""
    return int(os.environ.get("PADDLE_LOCAL_SIZE") or rank_and_world()[1])


def init_job() -> Tuple[int, int]:
    """``(rank, world size)`` of the launched job, initialising Paddle's default process group once."""
    import paddle.distributed as dist

    if not in_launched_job():
        raise GLMError(f"tensor_parallel needs a job of N processes: start it with `{LAUNCH_HINT}` "
                       "(or `paddle-glm ... --tensor-parallel N`)")
    if not dist.is_initialized():
        dist.init_parallel_env()
    return dist.get_rank(), dist.get_world_size()


# ---- rank 0's outcomes, told to every rank -------------------------------------------------------

_MESSAGE_BYTES = 1024


def tell_ranks(error: Optional[str]) -> Optional[str]:
    """Rank 0: tell every rank that all is well (``None``) or that it failed with ``error``; returns the
    error as they hear it (its first ``_MESSAGE_BYTES`` bytes).

    The other ranks call :func:`hear_rank_zero` at the same point (a broadcast)."""
    import paddle
    import paddle.distributed as dist

    data = (error or "").encode("utf-8")[:_MESSAGE_BYTES]
    packet = [1 if error is not None else 0, len(data)] + list(data) + [0] * (_MESSAGE_BYTES - len(data))
    dist.broadcast(paddle.to_tensor(packet, dtype="int32"), src=0)
    return None if error is None else data.decode("utf-8", "replace")


def hear_rank_zero() -> None:
    """Any rank but 0: wait for :func:`tell_ranks`; rank 0's failure is raised here as the same GLMError."""
    import paddle
    import paddle.distributed as dist

    packet = paddle.zeros([2 + _MESSAGE_BYTES], dtype="int32")
    dist.broadcast(packet, src=0)
    failed, size, *data = packet.tolist()
    if failed:
        raise GLMError(bytes(data[:size]).decode("utf-8", "replace"))


def describe_failure(error: Exception) -> str:
    """One line for an error: a GLMError's text, an OSError's file and reason, else the type and text."""
    if isinstance(error, GLMError):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return f"{type(error).__name__}: {error}"


def on_rank_zero(action: Callable[[], T]) -> Optional[T]:
    """Run ``action`` on rank 0 only, then tell every rank how it went (call it on every rank).

    Returns ``action``'s result on rank 0 and None elsewhere. If it fails, every rank raises the
    same one-line GLMError, so no rank waits for rank 0 at a later collective.
    """
    rank, world = rank_and_world()
    if world == 1:
        return action()
    if rank != 0:
        hear_rank_zero()
        return None
    try:
        result = action()
    except Exception as e:  # told to the other ranks, then raised here as theirs is
        raise GLMError(tell_ranks(describe_failure(e))) from None
    tell_ranks(None)
    return result


def shared_seed() -> int:
    """A fresh random seed, rank 0's, the same on every rank (a collective)."""
    import paddle
    import paddle.distributed as dist

    seed = paddle.to_tensor([random.SystemRandom().randrange(2**31)], dtype="int64")
    dist.broadcast(seed, src=0)
    return int(seed.item())


# ---- signals ---------------------------------------------------------------------------------------

class Terminated(BaseException):
    """Raised in the main thread on SIGTERM/SIGHUP, so temporary outputs are cleaned up as on Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _Stopping:
    """The first stop signal raises (Terminated or KeyboardInterrupt); later ones are ignored, so
    that they cannot cut the cleanup the first one started."""

    def __init__(self):
        self.signum: Optional[int] = None

    def __call__(self, signum, frame) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():  # Python's rule for signal handlers
            for signum in _STOP_SIGNALS:
                signal.signal(signum, self)


class _AfterPaddleImport(importlib.abc.MetaPathFinder):
    """Runs ``then`` right after ``import paddle``: Paddle's import puts a C++ handler on SIGTERM
    (which prints a ``FatalError: Termination signal`` dump and dies) in place of ours."""

    def __init__(self, then: Callable[[], None]):
        self.then = then

    def find_spec(self, name, path=None, target=None):
        if name != "paddle":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        execute = spec.loader.exec_module

        def exec_module(module) -> None:
            execute(module)
            self.then()

        spec.loader.exec_module = exec_module
        return spec


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise :class:`Terminated` and SIGINT ``KeyboardInterrupt``
    in the main thread (once: a second signal is ignored), also after Paddle is imported."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in _STOP_SIGNALS}
    handler = _Stopping()
    handler.install()
    hook = None
    if "paddle" not in sys.modules:
        hook = _AfterPaddleImport(handler.install)
        sys.meta_path.insert(0, hook)
    try:
        yield
    finally:
        if hook in sys.meta_path:
            sys.meta_path.remove(hook)
        for signum, old in previous.items():
            signal.signal(signum, old)


def exit_code_of(stop: BaseException) -> int:
    """The shell's exit code for a process stopped by ``stop`` (Terminated or KeyboardInterrupt): 128 + signal."""
    return 128 + (stop.signum if isinstance(stop, Terminated) else signal.SIGINT)


def signal_name(stop: BaseException) -> str:
    return signal.Signals(exit_code_of(stop) - 128).name


STOPPED_EXIT_CODES = tuple(128 + signum for signum in _STOP_SIGNALS)


def exit_now(code: int) -> None:
    """End the process with ``code`` now, its output flushed, without the interpreter's teardown.

    For a command stopped by a signal once its cleanup has run: in the teardown, Paddle's C++ threads cut
    off mid-work (the data loader's) can abort the process ("terminate called without an active
    exception", exit -6) in place of the stop's exit code."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Stop signals wait (blocked) until the block is done: a cleanup runs to its end."""
    held = set(_STOP_SIGNALS)
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


# ---- the rank side ---------------------------------------------------------------------------------

def run_as_rank(run: Callable[[], int]) -> int:
    """Run one rank's command: as is in a job launched by hand; under :func:`launch`, with rank 0's output
    shown by the starting process, the others' hidden, and this rank's PID and end recorded.

    A failure that is not the user's (a collective broken by a rank that died, a bug) goes to the rank's
    log with its traceback, and the starting process reports it in one line.
    """
    work = os.environ.get(WORK_DIR_ENV)
    if not work:
        return run()
    rank, world = rank_and_world()
    _write(os.path.join(work, f"pid.{rank}"), str(os.getpid()))
    code, message = 1, ""
    try:
        if world > 1:
            init_job()  # before the redirection: Paddle's set-up notes stay in the rank's log
        _redirect_output(work, rank)
        code = int(run() or 0)
        return code
    except (GLMError, UnicodeError) as e:  # the user's: the CLI prints it (rank 0's line is shown)
        code, message = 2, str(e)
        raise
    except (Terminated, KeyboardInterrupt) as e:
        code = exit_code_of(e)
        raise
    except Exception as e:  # recorded for the starting process; the traceback stays in the rank's log
        traceback.print_exc(file=sys.__stderr__)
        message = describe_failure(e)
        return 1
    finally:
        _write(os.path.join(work, f"status.{rank}"), f"{code}\n{message}")


def _redirect_output(work: str, rank: int) -> None:
    """Rank 0's stdout and stderr into ``work`` (the starting process shows them); the others' stdout to nowhere."""
    if rank == 0:
        # the process's own streams from here on: open until it exits
        sys.stdout = open(os.path.join(work, "stdout"), "w", encoding="utf-8", buffering=1)  # noqa: SIM115
        sys.stderr = open(os.path.join(work, "stderr"), "w", encoding="utf-8", buffering=1)  # noqa: SIM115
    else:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115


def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


# ---- the starting side -----------------------------------------------------------------------------

class RankFailed(GLMError):
    """A rank of a launched job died or failed; the job was stopped. Exit code 1 (not the user's input)."""

    exit_code = 1


def launch(nproc: int, argv: List[str]) -> int:
    """Run ``paddle-glm ARGV`` as ``nproc`` ranks on this machine; returns rank 0's exit code.

    Rank 0's output is shown as it comes. A signal here stops every rank (and is raised again once
    they are gone); a rank that dies or fails without rank 0 saying why raises :class:`RankFailed`.
    """
    work = tempfile.mkdtemp(prefix="paddle-glm-launch-")
    job = _Job(nproc, argv, work)
    try:
        job.start()
        job.wait()
        return job.result()
    finally:
        with _signals_held():
            job.stop()
            shutil.rmtree(work, ignore_errors=True)


class _Job:
    """The launcher process, the ranks it starts (found by the PIDs they record) and rank 0's output."""

    def __init__(self, nproc: int, argv: List[str], work: str):
        self.nproc, self.argv, self.work = nproc, argv, work
        self.logs = os.path.join(work, "logs")
        self.launcher: Optional[subprocess.Popen] = None
        self.streams = [_Forward(os.path.join(work, "stdout"), sys.stdout),
                        _Forward(os.path.join(work, "stderr"), sys.stderr)]

    def start(self) -> None:
        entry = os.path.join(self.work, "paddle_glm_rank.py")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        _write(entry, _ENTRY.format(root=root))
        command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(self.nproc),
                   "--log_dir", self.logs, entry, "--", *self.argv]
        env = dict(os.environ, **QUIET_RANK_ENV, **{WORK_DIR_ENV: self.work})
        with open(os.path.join(self.work, "launcher.log"), "wb") as log:
            self.launcher = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             env=env, start_new_session=True, preexec_fn=_terminated_with_parent)

    def wait(self) -> None:
        """Until the launcher ends, or a rank dies without a word (then the job is stopped)."""
        while self.launcher.poll() is None:
            self._forward()
            dead = self._dead_rank()
            if dead is not None:
                self.stop()
                raise RankFailed(self._died(dead))
            time.sleep(_POLL_SECONDS)
        self._forward()

    def result(self) -> int:
        """Rank 0's exit code; a failure that rank 0 did not print raises a one-line error, naming the rank
        that died first if one did (the others' errors are then only its consequences)."""
        statuses = self.statuses()
        if statuses.get(0, (0, ""))[0] == 2:
            return 2  # rank 0 printed its one-line error itself
        missing = [rank for rank in range(self.nproc) if rank not in statuses]
        started = [rank for rank in missing if rank in self.pids()]
        if started:
            raise RankFailed(self._died(started[0]))
        for rank, (code, message) in sorted(statuses.items()):
            if code and message:
                raise (GLMError if code == 2 else RankFailed)(f"rank {rank}: {message}")
        if missing:
            raise RankFailed(f"rank {missing[0]} of the {self.nproc}-process job did not start (launcher exit "
                             f"code {self.launcher.returncode}); the logs:\n{self._log_tail()}")
        return statuses[0][0] or self.launcher.returncode

    def _died(self, rank: int) -> str:
        return (f"rank {rank} (pid {self.pids()[rank]}) died without a word (killed by a signal, or out of "
                "memory); the other ranks were stopped")

    def stop(self) -> None:
        """SIGTERM to the launcher and every rank; SIGKILL to what is left after the grace period."""
        if self.launcher is None:
            return
        groups = [self.launcher.pid, *self.pids().values()]  # each rank leads its own process group
        if self.launcher.poll() is not None and not any(_alive(pid) for pid in groups):
            self._close()
            return  # the job ended by itself
        _signal_groups(groups, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline and any(_alive(pid) for pid in groups):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.launcher.wait(_POLL_SECONDS)
        groups += self.pids().values()  # a rank may have started meanwhile
        _signal_groups(groups, signal.SIGKILL)
        self.launcher.wait()
        self._close()

    def _close(self) -> None:
        for stream in self.streams:
            stream.close()

    def pids(self) -> Dict[int, int]:
        """Rank -> PID, of the ranks that have started."""
        return {rank: int(text) for rank, text in self._files("pid").items() if text.strip()}

    def statuses(self) -> Dict[int, Tuple[int, str]]:
        """Rank -> (exit code, error line), of the ranks that have ended on their own terms."""
        return {rank: (int(text.split("\n", 1)[0]), text.split("\n", 1)[1].strip())
                for rank, text in self._files("status").items()}

    def _files(self, kind: str) -> Dict[int, str]:
        found = {}
        for name in os.listdir(self.work):
            stem, _, rank = name.partition(".")
            if stem == kind and rank.isdigit():
                with open(os.path.join(self.work, name), encoding="utf-8") as f:
                    found[int(rank)] = f.read()
        return found

    def _dead_rank(self) -> Optional[int]:
        ended = self.statuses()
        return next((rank for rank, pid in sorted(self.pids().items()) if rank not in ended and not _alive(pid)),
                    None)

    def _forward(self) -> None:
        for stream in self.streams:
            stream.copy()

    def _log_tail(self, lines: int = 20) -> str:
        texts = []
        for name in sorted(os.listdir(self.logs)) if os.path.isdir(self.logs) else []:
            with open(os.path.join(self.logs, name), encoding="utf-8", errors="replace") as f:
                texts.append(f"--- {name}\n" + "".join(f.readlines()[-lines:]))
        return "".join(texts).rstrip()


def _terminated_with_parent() -> None:
    """In the launcher, before it runs: SIGTERM when the starting process dies, even by SIGKILL (Linux),
    so that the launcher then stops the ranks."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _signal_groups(pids: List[int], signum: int) -> None:
    """Send ``signum`` to the process group each of ``pids`` leads (or to the process itself)."""
    for pid in pids:
        for send in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                send(pid, signum)


class _Forward:
    """Copies what rank 0 appends to a file onto one of our streams."""

    def __init__(self, path: str, target):
        self.path, self.target = path, target
        self.file = None
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may arrive in parts
        self.copied = 0

    def copy(self) -> None:
        if self.file is None:
            if not os.path.exists(self.path):
                return
            self.file = open(self.path, "rb")  # noqa: SIM115 (read as it grows; closed in close())
        text = self.decoder.decode(self.file.read())
        if text:
            self.target.write(text)
            self.target.flush()
            self.copied += len(text)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
