"""Glue to ``paddle.distributed.launch``: start N local training processes, and tell a process its rank.

``paddle-glm finetune ... --nproc N`` re-runs the same command (without ``--nproc``) in N
processes through Paddle's launcher, which sets ``PADDLE_TRAINER_ID`` / ``PADDLE_TRAINERS_NUM``
and the rendezvous; each process then calls ``dist.init_parallel_env()`` and trains under
``paddle.DataParallel`` (gloo on CPU, NCCL on GPU).

The launcher parses its whole command line with abbreviations (``--train`` would be taken
for its ``--trainers``), so the program's arguments go after ``--``. Its ``-m MODULE`` form
does not run ``paddle_glm``, so the program is a script file: a two-line one written to a
temporary directory (the README's raw command uses the ``paddle-glm`` console script instead).
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
from typing import List, Tuple

from ..devices import THREADS_ENV, cpu_thread_count

ENTRY_SCRIPT = "import sys\nfrom paddle_glm.cli import main\nsys.exit(main())\n"
LOG_TAIL_LINES = 20


def rank_and_world() -> Tuple[int, int]:
    """This process's rank and the number of processes (0 and 1 outside the launcher)."""
    return int(os.environ.get("PADDLE_TRAINER_ID", "0")), int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def launch(nproc: int, program_args: List[str]) -> int:
    """Run ``paddle-glm PROGRAM_ARGS`` in ``nproc`` local processes; returns the launcher's exit code.

    On CPU each process gets an equal share of the cores (unless ``PADDLE_GLM_NUM_THREADS`` is
    set). Rank 0's output is shown live; if a process fails, the end of its log is printed.
    """
    env = dict(os.environ)
    env.setdefault(THREADS_ENV, str(max(1, cpu_thread_count() // nproc)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_package_root(), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="paddle-glm-launch-") as scratch:
        script = os.path.join(scratch, "paddle_glm_main.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(ENTRY_SCRIPT)
        logs = os.path.join(scratch, "logs")
        command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
                   "--log_dir", logs, script, "--", *program_args]
        code = subprocess.run(command, env=env, stdout=sys.stdout, stderr=subprocess.DEVNULL).returncode
        if code:
            for log in sorted(glob.glob(os.path.join(logs, "workerlog.*"))):
                with open(log, encoding="utf-8", errors="replace") as f:
                    lines = [line.rstrip() for line in f if "warn" not in line.lower()]
                errors = [line for line in lines if line.startswith("paddle-glm ")]
                print("\n".join(errors or lines[-LOG_TAIL_LINES:]), file=sys.stderr)
                if errors:
                    break
    return code


def _package_root() -> str:
    """The directory holding the ``paddle_glm`` package (so the processes import this very copy)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
