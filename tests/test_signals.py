"""Signals end the whole process tree: real SIGTERM/SIGINT to real ``paddle-glm`` processes (one process,
2 gloo ranks through the launcher, the server), and a rank killed with SIGKILL.

Each test bounds its time, kills what it started if it must, and checks afterwards that no process it
started is alive (by the root's tree and by a marker in their environment) and that no temporary
directory is left (the launcher's, in the tree's own TMPDIR; ``.tmp-`` ones in --out)."""
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from process_tree import ROOT, assert_nothing_left, cli, descendants, kill_tree, launch_dirs, stop, tree_env, wait_for

DEMO = str(ROOT / "paddle_glm" / "demo_model")
FACTS = str(ROOT / "examples" / "facts.jsonl")


def _finetune(out: Path, *flags: str):
    return cli("finetune", DEMO, "--train", FACTS, "--out", str(out), "--save-steps", "2", "--epochs", "1000", *flags)


def _checkpoints(out: Path):
    return sorted(out.glob("checkpoint-*")) if out.is_dir() else []


def _last_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    return lines[-1] if lines else ""


class Tree:
    """A started command: its root process (output in files) and its environment (marker, TMPDIR)."""

    def __init__(self, tmp_path: Path, command, stdin=subprocess.DEVNULL):
        self.env = tree_env(tmp_path)
        self.out_path, self.err_path = tmp_path / "stdout", tmp_path / "stderr"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.root = subprocess.Popen(command, env=self.env, stdin=stdin, stdout=out, stderr=err, cwd=ROOT)

    def stdout(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        kill_tree(self.root, self.env)


def _ranks(tree: Tree):
    ranks = []
    for process in descendants(tree.root):
        try:
            if "PADDLE_TRAINER_ID" in process.environ():
                ranks.append(process)
        except psutil.NoSuchProcess:
            pass
    return ranks


# SIGINT takes the same path as SIGTERM here; the fast suite sends SIGINT to a job in the tensor-parallel test
@pytest.mark.parametrize("signum", [
    pytest.param(signal.SIGTERM, id="SIGTERM"),
    pytest.param(signal.SIGINT, id="SIGINT", marks=pytest.mark.slow),
])
def test_finetune_two_ranks_stops_whole_tree(tmp_path, signum):
    out = tmp_path / "out"
    with Tree(tmp_path, _finetune(out, "--nproc", "2")) as tree:
        wait_for(lambda: len(_ranks(tree)) == 2 and _checkpoints(out), 60, tree.root)
        code, seconds = stop(tree.root, signum, tree.env)
        err = tree.stderr()
    assert code == 128 + signum and seconds < 10, err
    latest = max(_checkpoints(out), key=lambda p: int(p.name.split("-")[1]))
    name = signal.Signals(signum).name
    assert _last_line(err) == f"paddle-glm finetune: stopped by {name}; the last complete checkpoint is {latest}"
    assert "Traceback" not in err and "FatalError" not in err
    assert json.loads((latest / "trainer_state.json").read_text())["step"] == int(latest.name.split("-")[1])
    assert_nothing_left(tree.env, out)


def test_single_process_finetune_stops_and_resumes(tmp_path):
    out = tmp_path / "out"
    with Tree(tmp_path, _finetune(out)) as tree:
        wait_for(lambda: len(_checkpoints(out)) >= 2, 60, tree.root)
        code, seconds = stop(tree.root, signal.SIGTERM, tree.env)
        err = tree.stderr()
    assert code == 143 and seconds < 10, err
    step = max(int(p.name.split("-")[1]) for p in _checkpoints(out))
    assert _last_line(err) == f"paddle-glm finetune: stopped by SIGTERM; the last complete checkpoint is " \
                              f"{out / f'checkpoint-{step}'}"
    assert "Traceback" not in err and "FatalError" not in err  # Paddle's C++ handler is not the one that ran
    assert_nothing_left(tree.env, out)
    with Tree(tmp_path, cli("finetune", DEMO, "--train", FACTS, "--out", str(out), "--resume", "--save-steps", "2",
                            "--max-steps", str(step + 1))) as tree:
        assert tree.root.wait(timeout=60) == 0, tree.stderr()
        assert f"finetuned {step + 1} steps" in tree.stdout()
    assert (out / "config.json").is_file()


def test_generate_tensor_parallel_stops_whole_tree(tmp_path):
    with Tree(tmp_path, cli("generate", DEMO, "今天天气[MASK]，我们去公园。", "--tensor-parallel", "2")) as tree:
        wait_for(lambda: len(_ranks(tree)) == 2, 60, tree.root)  # the ranks start: Paddle, the group, the model
        time.sleep(1)
        code, seconds = stop(tree.root, signal.SIGINT, tree.env)
        err = tree.stderr()
    assert code == 130 and seconds < 10, err
    assert _last_line(err) == "paddle-glm generate: stopped by SIGINT"
    assert_nothing_left(tree.env)


def test_single_process_generate_sigterm(tmp_path):
    with Tree(tmp_path, cli("generate", DEMO), stdin=subprocess.PIPE) as tree:  # interactive: waits for a prompt
        wait_for(lambda: "enter a prompt" in tree.stderr(), 60, tree.root)
        code, seconds = stop(tree.root, signal.SIGTERM, tree.env)
        err = tree.stderr()
    assert code == 143 and seconds < 10, err
    assert _last_line(err) == "paddle-glm generate: stopped by SIGTERM"
    assert "FatalError" not in err and "Traceback" not in err
    assert_nothing_left(tree.env)


def test_a_killed_rank_stops_the_job(tmp_path):
    out = tmp_path / "out"
    with Tree(tmp_path, _finetune(out, "--nproc", "2")) as tree:
        wait_for(lambda: len(_ranks(tree)) == 2 and _checkpoints(out), 60, tree.root)
        rank1 = next(p for p in _ranks(tree) if p.environ()["PADDLE_TRAINER_ID"] == "1")
        rank1.kill()
        try:
            tree.root.wait(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError("the job still runs 10 s after a rank was killed") from None
        err = tree.stderr()
    assert tree.root.returncode == 1, err
    line = _last_line(err)
    assert line.startswith(f"paddle-glm finetune: error: rank 1 (pid {rank1.pid}) died without a word"), err
    assert "the last complete checkpoint is" in line and "Traceback" not in err and "RuntimeError" not in err
    assert_nothing_left(tree.env, out)


def test_a_killed_starting_process_takes_its_ranks_along(tmp_path):
    """SIGKILL to ``paddle-glm`` itself cannot be handled there; the launcher learns of it from the kernel and
    stops the ranks (only the launcher's directory in /tmp is left, which this test removes)."""
    out = tmp_path / "out"
    with Tree(tmp_path, _finetune(out, "--nproc", "2")) as tree:
        wait_for(lambda: len(_ranks(tree)) == 2, 60, tree.root)
        ranks = _ranks(tree)
        job_dir = next(Path(a).parent for a in ranks[0].cmdline() if a.endswith(".py"))  # the job dir's entry
        tree.root.kill()
        tree.root.wait()
        gone, alive = psutil.wait_procs(ranks, timeout=15)
        assert alive == [], "ranks still run 15 s after their starting process was killed"
        assert str(job_dir) in launch_dirs(tree.env)
        shutil.rmtree(job_dir)
    assert_nothing_left(tree.env, out)
