"""Helpers for tests that start process trees: a marker in the environment of everything a test starts,
a bounded wait that kills the whole tree on timeout, and the checks that nothing is left behind."""
from __future__ import annotations

import contextlib
import glob
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import List, Set

import psutil

ROOT = Path(__file__).resolve().parent.parent
MARKER = "PADDLE_GLM_TEST_TREE"
LAUNCH_DIRS = ("paddle-glm-launch-*", "paddle-glm-tp-*")


def tree_env(tmp_path: Path, **extra: str) -> dict:
    """The environment for a started tree: this tree first on the path, quiet warnings, a fresh marker, and
    its own temporary directory (``TMPDIR``, where the launcher makes its directory), checked afterwards."""
    scratch = tmp_path / "TMPDIR"
    scratch.mkdir(exist_ok=True)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                PYTHONWARNINGS="ignore", TMPDIR=str(scratch), **{MARKER: uuid.uuid4().hex}, **extra)


def marked(env: dict) -> List[psutil.Process]:
    """The live processes carrying ``env``'s marker (children that left the tree included)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARKER) == env[MARKER] and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def descendants(root: subprocess.Popen) -> List[psutil.Process]:
    try:
        return psutil.Process(root.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_tree(root: subprocess.Popen, env: dict) -> None:
    """SIGKILL the root, its descendants and every marked process (a test's last resort)."""
    for process in [*descendants(root), *marked(env)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    if root.poll() is None:
        root.kill()
    root.wait()


def launch_dirs(env: dict) -> Set[str]:
    """The launcher directories in the tree's temporary directory."""
    return {path for pattern in LAUNCH_DIRS for path in glob.glob(os.path.join(env["TMPDIR"], pattern))}


def assert_nothing_left(env: dict, *out_dirs: Path) -> None:
    """No marked process alive (after a short grace for exits in flight), no launcher directory left in
    the tree's temporary directory, no temporary directory in ``out_dirs``."""
    deadline = time.time() + 2
    while marked(env) and time.time() < deadline:
        time.sleep(0.1)
    assert marked(env) == []
    assert launch_dirs(env) == set()
    for out in out_dirs:
        if out.exists():
            assert [n for n in os.listdir(out) if ".tmp-" in n or n.startswith(".save-tmp-")] == []


def cli(*args: str) -> List[str]:
    return [sys.executable, "-m", "paddle_glm", *args]


def wait_for(condition, timeout: float, root: subprocess.Popen) -> None:
    """Poll ``condition()`` until it holds; fail if ``timeout`` passes or ``root`` ends first."""
    deadline = time.time() + timeout
    while not condition():
        assert root.poll() is None, f"the command ended early ({root.returncode})"
        assert time.time() < deadline, "timed out waiting for the command"
        time.sleep(0.1)


def stop(root: subprocess.Popen, signum: int, env: dict, within: float = 10.0):
    """Send ``signum`` to ``root``; returns (exit code, seconds to end). Kills the tree (and fails) if it
    does not end within ``within`` seconds."""
    start = time.time()
    root.send_signal(signum)
    try:
        code = root.wait(timeout=within)
    except subprocess.TimeoutExpired:
        kill_tree(root, env)
        raise AssertionError(f"still running {within} s after {signal.Signals(signum).name}") from None
    return code, time.time() - start
