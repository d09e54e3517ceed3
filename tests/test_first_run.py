"""A new user's first commands: quiet stderr, info in one vocabulary and sensible units, a prompt
that is too long said plainly, and `make test BROWSER=0` installing nothing."""
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from paddle_glm.cli.common import format_bytes, format_count
from paddle_glm.demo_cases import DEMO_MODEL_DIR

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # Python's default warning filters
    proc = subprocess.run([sys.executable, "-m", "paddle_glm", *args], capture_output=True, text=True, env=env,
                          timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_cli_stderr_holds_only_what_the_user_needs():
    code, out, err = run_cli("generate", str(DEMO_MODEL_DIR), "白日依山尽，[MASK]入海流。", "--max-new-tokens", "4")
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("loaded ") and "tokens/s" in lines[1], err
    if shutil.which("ccache") is None:  # the control: Paddle's import does warn here
        control = subprocess.run([sys.executable, "-c", "import paddle"], capture_output=True, text=True,
                                 env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}, timeout=120)
        assert "No ccache found" in control.stderr


def test_info_says_positions_and_sizes_in_units():
    code, out, err = run_cli("info", str(DEMO_MODEL_DIR))
    assert code == 0, err
    # the demo: 2 layers, hidden 128, max_sequence_length 256, so a table of 257 rows
    assert "positions 0..256 (max_sequence_length 256)" in out
    assert "parameters: 672,256 (672.3 thousand)" in out
    # 2 (keys, values) x 2 layers x 256 tokens x 128 x 4 bytes = 524,288 bytes
    assert "KV cache per sequence of 256 tokens: float32 524.29 KB, float16/bfloat16 262.14 KB" in out
    assert "weights in memory: float32 2.69 MB" in out  # 672,256 x 4 bytes
    assert "0.00" not in out and "rows" not in out


@pytest.mark.parametrize("size, text", [(0, "0 B"), (999, "999 B"), (1000, "1.00 KB"), (524_288, "524.29 KB"),
                                        (2_689_024, "2.69 MB"), (19_760_000_000, "19.76 GB")])
def test_format_bytes(size, text):
    assert format_bytes(size) == text


@pytest.mark.parametrize("count, text", [(999, "999"), (672_256, "672,256 (672.3 thousand)"),
                                         (355_000_000, "355,000,000 (355.0 million)"),
                                         (9_879_633_920, "9,879,633,920 (9.9 billion)")])
def test_format_count(count, text):
    assert format_count(count) == text


def test_a_long_prompt_is_too_long_by_itself():
    for new_tokens in ("1", "128"):
        code, out, err = run_cli("generate", str(DEMO_MODEL_DIR), "天" * 300 + "[MASK]", "--max-new-tokens", new_tokens)
        assert code == 2
        assert err.strip().splitlines()[-1] == (
            "paddle-glm generate: error: the prompt alone is too long: a 304-token prompt needs position 302, "
            "past the model's position table (positions 0..256): shorten the text")


@pytest.fixture
def fake_apt(tmp_path):
    """A PATH with an ``apt-get`` that only records its arguments, and no chromium."""
    bin_dir, log = tmp_path / "bin", tmp_path / "apt-get.log"
    bin_dir.mkdir()
    script = bin_dir / "apt-get"
    script.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"PATH": str(bin_dir)}, log


def test_make_browser_installs_chromium_unless_browser_0(fake_apt):
    make = shutil.which("make")
    if make is None:
        pytest.skip("needs make")
    env, log = fake_apt
    skipped = subprocess.run([make, "-s", "browser", "BROWSER=0"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=60)
    assert skipped.returncode == 0 and "BROWSER=0" in skipped.stdout, skipped.stderr
    assert not log.exists()
    installed = subprocess.run([make, "-s", "browser"], cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=60)
    assert installed.returncode == 0, installed.stderr
    assert log.read_text().splitlines() == ["update", "install -y chromium chromium-driver"]


def test_device_flag_is_read_one_way_by_every_command(tmp_path):
    errors = set()
    for command in (["generate", str(DEMO_MODEL_DIR), "x[MASK]"],
                    ["finetune", str(DEMO_MODEL_DIR), "--train", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)]):
        code, out, err = run_cli(*command, "--device", "tpu:7")
        assert code == 2, err
        errors.add(err.strip().splitlines()[-1].split(": error: ", 1)[1])
    (message,) = errors
    assert message.startswith("--device tpu:7: ")
