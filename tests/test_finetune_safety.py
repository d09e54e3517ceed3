"""``paddle-glm finetune`` never loses an output: --overwrite, one writer per --out, full disks, killed runs,
numbers that cannot train, NaN losses, resume refusals, --save-total-limit; adapter files and data lines.

The runs that involve processes (two concurrent finetunes, SIGKILL, a full disk) start the real
command (``python -m paddle_glm finetune``); the refusals call the same CLI entry point in-process.
After each test no process it started is alive and no temporary directory or lock file is left.
"""
import contextlib
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from paddle_glm import GLMError
from paddle_glm.cli import main
from paddle_glm.lora import CONFIG_FILE, LoRAConfig, apply_lora, load_adapter, save_adapter
from paddle_glm.model import GLMForConditionalGeneration as Model

ROOT = Path(__file__).resolve().parent.parent
DEMO = str(ROOT / "paddle_glm" / "demo_model")
FACTS = str(ROOT / "examples" / "facts.jsonl")
ENV = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
TRAIN = ["finetune", DEMO, "--train", FACTS, "--batch-size", "5", "--lr", "1e-3"]
WAIT_SECONDS = 240
CHECKPOINT_MB = 8.1  # the demo model's full-finetune checkpoint: 2.7 MB of weights + 5.4 MB of AdamW moments


@pytest.fixture(autouse=True)
def nothing_left(tmp_path):
    """No process the test started is alive and no temporary directory or lock file is left (the commands'
    own temporary directories go to ``tmp_path/tmp`` through TMPDIR, so they are checked too)."""
    (tmp_path / "tmp").mkdir()
    ENV["TMPDIR"] = str(tmp_path / "tmp")
    yield
    children = psutil.Process().children(recursive=True)
    for child in children:
        child.kill()
    assert not children, children
    left = [str(p) for p in tmp_path.rglob("*") if re.search(r"\.tmp-|\.old-|\.save-tmp-|\.lock$|\.tmp$", p.name)]
    assert not left and not os.listdir(tmp_path / "tmp"), (left, os.listdir(tmp_path / "tmp"))
    (tmp_path / "tmp").rmdir()


def _cli(*argv, timeout=WAIT_SECONDS, prefix=()):
    return subprocess.run([sys.executable, *(prefix or ["-m", "paddle_glm"]), *argv], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=ENV)


def _start(*argv):
    return subprocess.Popen([sys.executable, "-m", "paddle_glm", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV, start_new_session=True)


def _kill(proc) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)


def _error(code: int, err: str) -> str:
    """The one error line of a refused run."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("paddle-glm "), err[-3000:]
    return lines[0]


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


def _run_process(argv):
    proc = subprocess.run([sys.executable, "-m", "paddle_glm", *map(str, argv)], capture_output=True, text=True,
                          cwd=ROOT, env=ENV, timeout=WAIT_SECONDS)
    return proc.returncode, proc.stderr


def _wait_for(condition, what: str):
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# ---- 3. one writer per --out; a killed run's lock and leftovers do not stay ------------------------

def test_second_finetune_on_the_same_out_is_refused_and_a_killed_one_leaves_nothing_stale(tmp_path, capsys):
    out = tmp_path / "out"
    first = _start(*TRAIN, "--out", out, "--max-steps", "100000", "--save-steps", "3", "--save-total-limit", "2")
    try:
        lock = tmp_path / ".out.lock"
        _wait_for(lambda: glob.glob(str(out / "checkpoint-*")), "the first run's first checkpoint")
        assert lock.read_text().strip() == str(first.pid)
        second = _cli(*TRAIN, "--out", out, "--max-steps", "2")
        line = _error(second.returncode, second.stderr)
        assert f"another finetune (PID {first.pid}) is writing this directory" in line and f"--out {out}" in line
        assert first.poll() is None  # refused at once, while the first one trains
    finally:
        _kill(first)
    assert lock.exists()  # SIGKILL leaves the file, but the kernel released its lock
    (out / ".checkpoint-7.tmp-k1ll3d").mkdir()  # as a save killed midway leaves it
    (out / ".checkpoint-7.tmp-k1ll3d" / "model_state.pdparams").write_bytes(b"half")
    steps = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert len(steps) <= 2  # --save-total-limit 2
    code, captured = _run([*TRAIN, "--out", out, "--resume", "--max-steps", steps[-1] + 1, "--save-steps", "3"],
                          capsys)
    assert code == 0, captured.err
    assert f"finetuned {steps[-1] + 1} steps" in captured.out
    assert not list(out.glob(".checkpoint-*")) and not lock.exists()


@pytest.mark.slow
def test_the_starter_of_nproc_2_holds_the_lock(tmp_path):
    out = tmp_path / "out"
    first = _start(*TRAIN, "--out", out, "--max-steps", "100000", "--save-steps", "3", "--save-total-limit", "1",
                   "--nproc", "2", "--batch-size", "2")
    try:
        _wait_for(lambda: glob.glob(str(out / "checkpoint-*")), "the two-process run's first checkpoint")
        assert (tmp_path / ".out.lock").read_text().strip() == str(first.pid)
        second = _cli(*TRAIN, "--out", out, "--max-steps", "2")
        assert f"another finetune (PID {first.pid})" in _error(second.returncode, second.stderr)
    finally:
        _kill(first)
    (tmp_path / ".out.lock").unlink()  # what SIGKILL leaves, which the killed processes cannot remove
    for launch_dir in glob.glob(str(tmp_path / "tmp" / "paddle-glm-launch-*")):
        shutil.rmtree(launch_dir)


# ---- 2. --overwrite keeps the old output until the new one is complete -----------------------------

def test_overwrite_swaps_at_the_end(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("the old output")
    killed = _start(*TRAIN, "--out", out, "--overwrite", "--max-steps", "100000", "--save-steps", "2",
                    "--save-total-limit", "1")
    try:
        _wait_for(lambda: glob.glob(str(tmp_path / ".out.tmp-*" / "checkpoint-*")), "the new run's checkpoint")
        assert os.listdir(out) == ["old.txt"]
    finally:
        _kill(killed)
    assert os.listdir(out) == ["old.txt"] and glob.glob(str(tmp_path / ".out.tmp-*"))
    # A run that fails (its loss turns to NaN) leaves the old output too, and removes the killed run's leftovers.
    code, captured = _run([*TRAIN, "--out", out, "--overwrite", "--max-steps", 6, "--save-steps", 1, "--lr", 1e38],
                          capsys)
    line = _error(code, captured.err)
    assert re.search(r"step \d: the loss is (nan|inf)", line) and f"--overwrite: {out} is left as it was" in line
    assert os.listdir(out) == ["old.txt"] and not glob.glob(str(tmp_path / ".out.*"))
    code, captured = _run([*TRAIN, "--out", out, "--overwrite", "--max-steps", 2], capsys)
    assert code == 0, captured.err
    assert not (out / "old.txt").exists() and (out / "config.json").is_file() and (out / "cog-pretrain.model").is_file()


def test_a_stopped_overwrite_says_the_old_output_is_left(tmp_path):
    """SIGTERM to an --overwrite run of an existing output names no checkpoint of the old run: the new
    run's checkpoints were temporary, and the old output is what is left."""
    out = tmp_path / "out"
    code, captured = _run_process([*TRAIN, "--out", out, "--max-steps", 2, "--save-steps", 1])
    assert code == 0, captured
    stopped = _start(*TRAIN, "--out", out, "--overwrite", "--max-steps", "100000", "--save-steps", "2")
    try:
        _wait_for(lambda: glob.glob(str(tmp_path / ".out.tmp-*" / "checkpoint-*")), "the new run's checkpoint")
        stopped.send_signal(signal.SIGTERM)
        _, err = stopped.communicate(timeout=60)
    finally:
        _kill(stopped)
    assert stopped.returncode == 143, err[-2000:]
    expected = f"paddle-glm finetune: stopped by SIGTERM; --overwrite: {out} is left as it was"
    assert err.strip().splitlines()[-1] == expected
    assert (out / "checkpoint-2").is_dir() and not glob.glob(str(tmp_path / ".out.*"))


def test_a_rank_never_launches_a_job_of_its_own(tmp_path, monkeypatch, capsys):
    """In a launched job every rank trains, however --nproc was spelled (argparse takes --npro for it)."""
    import paddle_glm.distributed as distributed

    monkeypatch.setattr(distributed, "in_launched_job", lambda: True)
    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("a rank launched a job"))
    code, captured = _run([*TRAIN, "--out", tmp_path / "out", "--max-steps", 1, "--npro", 2], capsys)
    assert code == 0, captured.err


def test_an_overwrite_killed_mid_swap_is_undone_by_the_next_run(tmp_path, capsys):
    # What SIGKILL between the swap's two renames leaves: the old output aside, the new one in its temporary name.
    (tmp_path / ".out.old-k1ll3d").mkdir()
    (tmp_path / ".out.old-k1ll3d" / "old.txt").write_text("the old output")
    (tmp_path / ".out.tmp-k1ll3d").mkdir()
    code, captured = _run([*TRAIN, "--out", tmp_path / "out", "--max-steps", 1], capsys)
    assert "not empty; pass --overwrite" in _error(code, captured.err)  # the old output is back in place
    assert os.listdir(tmp_path / "out") == ["old.txt"] and sorted(os.listdir(tmp_path)) == ["out", "tmp"]


# ---- 4. output paths checked before training; a full disk ------------------------------------------

def test_out_below_a_file_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, captured = _run([*TRAIN, "--out", tmp_path / "afile" / "sub", "--max-steps", 2], capsys)
    line = _error(code, captured.err)
    assert f"{tmp_path / 'afile'} is a file, not a directory" in line and "finetuned" not in captured.out


INJECT_ENOSPC = """import errno, os, sys
import paddle_glm.checkpoint.writer as writer
real, calls = writer.save_pdparams, []
def save_pdparams(path, items):
    calls.append(path)
    if len(calls) == 2:  # the second checkpoint: half a file, then the disk is full
        with open(path, "wb") as f:
            f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(path, items)
writer.save_pdparams = save_pdparams
from paddle_glm.cli import main
sys.exit(main(sys.argv[1:]))
"""


@contextlib.contextmanager
def _small_disk(path: Path, megabytes: float):
    """A tmpfs of ``megabytes`` at ``path`` (None where the test may not mount one: root only, and not in
    every container)."""
    path.mkdir()
    mounted = os.geteuid() == 0 and shutil.which("mount") and not os.environ.get("PADDLE_GLM_TEST_NO_MOUNT") and \
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(megabytes * 1024)}k", "tmpfs", str(path)],
                       capture_output=True).returncode == 0
    try:
        yield path if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=True)


def test_full_disk_keeps_the_last_checkpoint_and_resume_continues(tmp_path):
    with _small_disk(tmp_path / "disk", 1.5 * CHECKPOINT_MB) as disk:
        out = tmp_path / "disk" / "out"
        argv = [*TRAIN, "--out", out, "--max-steps", "3", "--save-steps", "1", "--save-total-limit", "1"]
        full = _cli(*argv) if disk else _cli(*argv, prefix=["-c", INJECT_ENOSPC])
        line = _error(full.returncode, full.stderr)
        assert f"{out / 'checkpoint-2'}: cannot write it (No space left on device)" in line, line
        assert f"the last complete checkpoint is {out / 'checkpoint-1'} (--resume continues from it)" in line
        assert os.listdir(out) == ["checkpoint-1"]
        assert json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())["step"] == 1
        if disk:
            subprocess.run(["mount", "-o", f"remount,size={int(6 * CHECKPOINT_MB)}m", str(disk)], check=True)
        resumed = _cli(*argv, "--resume")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "finetuned 3 steps" in resumed.stdout
        assert sorted(os.listdir(out)) == ["added_tokens.json", "checkpoint-3", "cog-pretrain.model", "config.json",
                                           "generation_config.json", "model.safetensors", "tokenizer_config.json"]


def test_a_checkpoint_is_written_in_one_temporary_directory(tmp_path, capsys, monkeypatch):
    import paddle_glm.io_utils as io_utils

    made = []
    real = io_utils.make_temp_dir
    monkeypatch.setattr(io_utils, "make_temp_dir", lambda parent, prefix: made.append(real(parent, prefix)) or made[-1])
    code, captured = _run([*TRAIN, "--out", tmp_path / "out", "--max-steps", 1, "--save-steps", 1], capsys)
    assert code == 0, captured.err
    # Before: .checkpoint-1.tmp-X for the checkpoint, and ..checkpoint-1.tmp-X.tmp-Y for the model in it.
    assert [os.path.basename(d)[:18] for d in made if "checkpoint-1" in d] == [".checkpoint-1.tmp-"]


# ---- 5. numbers that cannot train ------------------------------------------------------------------

@pytest.mark.parametrize("flags, named", [
    (["--lr", "inf"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "-1"], "--lr"), (["--lr", "0"], "--lr"),
    (["--weight-decay", "nan"], "--weight-decay"), (["--epochs", "nan"], "--epochs"), (["--epochs", "inf"], "--epochs"),
    (["--max-grad-norm", "-1"], "--max-grad-norm"), (["--save-steps", "-1"], "--save-steps"),
    (["--src-length", "-5"], "--src-length"), (["--tgt-length", "2"], "--tgt-length"),
    (["--save-total-limit", "0"], "--save-total-limit"), (["--warmup-ratio", "nan"], "--warmup-ratio"),
    (["--lora", "--lora-alpha", "nan"], "--lora-alpha"), (["--lora", "--lora-alpha", "0"], "--lora-alpha"),
    (["--lora", "--lora-alpha", "-8"], "--lora-alpha"), (["--lora", "--lora-rank", "0"], "--lora-rank"),
])
def test_numbers_that_cannot_train_are_refused(tmp_path, capsys, flags, named):
    code, captured = _run([*TRAIN, "--out", tmp_path / "out", *flags], capsys)
    assert _error(code, captured.err).startswith(f"paddle-glm finetune: error: {named}: must be")
    assert os.listdir(tmp_path) == ["tmp"]


def test_a_number_refused_by_the_command(tmp_path):
    proc = _cli(*TRAIN, "--out", tmp_path / "out", "--epochs", "inf")
    line = _error(proc.returncode, proc.stderr)
    assert line == "paddle-glm finetune: error: --epochs: must be a finite number > 0, got inf"


def test_nan_loss_stops_at_its_step_and_writes_no_nan(tmp_path, capsys):
    out = tmp_path / "out"
    code, captured = _run([*TRAIN, "--out", out, "--max-steps", 6, "--save-steps", 1, "--lr", 1e38, "--lora"], capsys)
    line = _error(code, captured.err)
    step = int(re.search(r"error: step (\d+): the (loss is|weights hold) (nan|inf)", line).group(1))
    assert f"the last complete checkpoint is {out / f'checkpoint-{step - 1}'}" in line, line
    assert sorted(os.listdir(out)) == [f"checkpoint-{s}" for s in range(1, step)]  # no final adapter
    for s in range(1, step):
        model = load_adapter(Model.from_pretrained(DEMO, show_progress=False), str(out / f"checkpoint-{s}"))
        assert all(np.isfinite(p.numpy()).all() for p in model.parameters())


# ---- 6. resume -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Finished runs of two steps (full and LoRA), a checkpoint at each step, the newest kept."""
    runs = {}
    for kind, extra in (("full", []), ("lora", ["--lora"])):
        out = tmp_path_factory.mktemp("runs") / kind
        assert main([*TRAIN, "--out", str(out), "--max-steps", "2", "--save-steps", "1", "--save-total-limit", "1",
                     *extra]) == 0
        runs[kind] = out
    return runs


def _copy(finished, kind, tmp_path) -> Path:
    return Path(shutil.copytree(finished[kind], tmp_path / kind))


def test_save_total_limit_keeps_the_newest(finished):
    for out in finished.values():
        assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]


@pytest.mark.parametrize("damage, expected", [
    (lambda c: (c / "optimizer.pdopt").write_bytes((c / "optimizer.pdopt").read_bytes()[:5000]),
     r"optimizer.pdopt: cannot read it .*truncated"),
    (lambda c: (c / "optimizer.pdopt").unlink(), r"optimizer.pdopt: no such file"),
    (lambda c: (c / "trainer_state.json").write_text('{"step": 2,'), r"trainer_state.json: not valid JSON"),
    (lambda c: (c / "trainer_state.json").write_text(json.dumps(
        {**json.loads((c / "trainer_state.json").read_text()), "stepz": 1})),
     r"trainer_state.json: unknown key 'stepz'"),
])
def test_damaged_checkpoint_is_one_line_naming_the_file(finished, tmp_path, capsys, damage, expected):
    out = _copy(finished, "full", tmp_path)
    damage(out / "checkpoint-2")
    code, captured = _run([*TRAIN, "--out", out, "--max-steps", 3, "--save-steps", 1, "--resume"], capsys)
    assert re.search(f"error: {re.escape(str(out / 'checkpoint-2'))}/{expected}", _error(code, captured.err))


@pytest.mark.parametrize("kind, flags, expected", [
    ("full", ["--lora"], "holds a full finetune (the whole model, no adapter), but this run asks for --lora"),
    ("lora", [], "holds a LoRA adapter (lora_config.json), but this run asks for full finetuning (no --lora)"),
    ("full", ["--lr", "2e-3"], "its run had --lr 0.001, this run asks --lr 0.002"),
    ("full", ["--seed", "7"], "its run had --seed 42, this run asks --seed 7"),
])
def test_resume_with_other_settings_is_refused(finished, tmp_path, capsys, kind, flags, expected):
    out = _copy(finished, kind, tmp_path)
    code, captured = _run([*TRAIN, "--out", out, "--max-steps", 3, "--resume", *flags], capsys)
    assert expected in _error(code, captured.err)


def test_resume_with_other_data_is_refused(finished, tmp_path, capsys):
    out = _copy(finished, "full", tmp_path)
    other = tmp_path / "other.jsonl"
    other.write_text(Path(FACTS).read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    argv = ["finetune", DEMO, "--train", other, "--batch-size", 5, "--lr", "1e-3", "--out", out, "--max-steps", 3,
            "--resume"]
    code, captured = _run(argv, capsys)
    line = _error(code, captured.err)
    assert f"its run trained on --train {os.path.realpath(FACTS)}" in line and f"this run gives --train {other}" in line


def test_resume_of_a_complete_run(finished, tmp_path, capsys):
    out = _copy(finished, "full", tmp_path)
    for max_steps in (2, 1):
        code, captured = _run([*TRAIN, "--out", out, "--max-steps", max_steps, "--resume"], capsys)
        assert code == 0 and captured.err == ""
        assert captured.out == f"the run is already complete at step 2 ({out / 'checkpoint-2'})\n"
    # A run stopped after its last checkpoint but before its output: resume writes the output.
    for name in ("config.json", "model.safetensors", "added_tokens.json"):
        (out / name).unlink()
    code, captured = _run([*TRAIN, "--out", out, "--max-steps", 2, "--resume"], capsys)
    assert code == 0 and f"wrote its result into {out}" in captured.out
    a = Model.from_pretrained(str(out), show_progress=False).state_dict()
    b = Model.from_pretrained(str(out / "checkpoint-2"), show_progress=False).state_dict()
    assert all(np.array_equal(a[n].numpy(), b[n].numpy()) for n in a)


# ---- 7. adapter files ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    directory = tmp_path_factory.mktemp("adapter") / "adapter"
    save_adapter(apply_lora(Model.from_pretrained(DEMO, show_progress=False), LoRAConfig(r=2)), str(directory))
    return directory


@pytest.mark.parametrize("edit, field", [
    (lambda c: [c], None), (lambda c: {**c, "lora_alpha": "abc"}, '"lora_alpha"'),
    (lambda c: {**c, "target_modules": 5}, '"target_modules"'),
    (lambda c: {**c, "target_modules": ["(["]}, '"target_modules"'),
    (lambda c: {**c, "r": None}, '"r"'),
])
def test_bad_lora_config_is_one_line_naming_file_and_field(adapter, tmp_path, capsys, edit, field):
    bad = Path(shutil.copytree(adapter, tmp_path / "adapter"))
    path = bad / CONFIG_FILE
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    expected = f"{path}: {field}" if field else f"{path}: expected a JSON object, got list"
    with pytest.raises(GLMError, match=re.escape(expected)):
        load_adapter(Model.from_pretrained(DEMO, show_progress=False), str(bad))
    with socket.socket() as taken:  # should serve get past the adapter, it fails to bind rather than serve
        taken.bind(("127.0.0.1", 0))
        port = str(taken.getsockname()[1])
        for command in (["fill", DEMO, "北京是[MASK]。"], ["serve", DEMO, "--port", port]):
            code, captured = _run([*command, "--adapter", bad], capsys)
            assert expected in _error(code, captured.err)


# ---- 9. data lines and --device --------------------------------------------------------------------

def test_json_lines_split_on_newline_only(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    lines = [{"src": "北京是[MASK]\u2028的首都", "tgt": "中国"}, {"src": "上海\u0085是[MASK]", "tgt": "城市"},
             {"src": "[MASK]很好", "tgt": 5}]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")
    code, captured = _run(["finetune", DEMO, "--train", data, "--out", tmp_path / "out"], capsys)
    assert f'{data}:3: "tgt" must be a string, got 5' in _error(code, captured.err)


def test_device_the_build_lacks_is_one_line(tmp_path, capsys):
    import paddle

    if paddle.is_compiled_with_cuda():
        pytest.skip("a CUDA build")
    code, captured = _run([*TRAIN, "--out", tmp_path / "out", "--device", "gpu:7"], capsys)
    assert "--device gpu:7: this Paddle build has no CUDA support" in _error(code, captured.err)


