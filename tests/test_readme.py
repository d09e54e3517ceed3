"""The README's commands and Python examples run as written (placeholders pointed at a tiny model)."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tokenizer_helpers import TOKENIZER_DIR

from paddle_glm import GLMChineseTokenizer, GLMConfig, GLMForConditionalGeneration, convert
from paddle_glm.demo_cases import DEMO_MODEL_DIR

README = Path(__file__).resolve().parent.parent / "README.md"
CFG = dict(num_layers=1, hidden_size=32, num_attention_heads=2, vocab_size=1210, max_sequence_length=1024,
           bad_words_id=[1209])
# Exercised elsewhere: the setup commands by CI and `make demo` / `make test` themselves, the demo by
# `make demo` and tests/test_cli.py, the server and the requests to it by tests/test_serve.py.
ELSEWHERE = ("make ", "pip install", "paddle-glm demo", "paddle-glm serve", "curl ")


def blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("readme_model")
    import paddle

    paddle.seed(1)
    GLMForConditionalGeneration(GLMConfig(**CFG)).save_pretrained(str(directory), max_shard_size="100KB")
    GLMChineseTokenizer.from_pretrained(str(TOKENIZER_DIR)).save_pretrained(str(directory))
    return directory


def test_python_examples_run_as_written_on_the_demo_model(monkeypatch):
    """The Python blocks, exactly as the README has them, from the repository's root: MODEL_DIR is
    the shipped demo model, whose position table the example's lengths fit."""
    monkeypatch.chdir(README.parent)
    namespace = {}
    code = "\n".join(blocks("python"))
    assert "build_inputs_for_generation" in code and "fill_blanks" in code
    exec(compile(code, str(README), "exec"), namespace)
    assert Path(namespace["MODEL_DIR"]).resolve() == DEMO_MODEL_DIR.resolve()
    prompt_length = namespace["inputs"]["input_ids"].shape[1]
    assert prompt_length < namespace["outputs"].shape[1] <= prompt_length + 128
    assert len(namespace["spans"]) == 2
    assert list(namespace["log_probs"].shape) == [1, 2]


def readme_commands():
    for block in blocks("bash"):
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if command and not command.startswith(ELSEWHERE):
                yield command


def brief(argv, scratch):
    """Commands whose full run takes minutes run briefly here, writing into ``scratch``: the extra
    arguments, and the exit codes that count as success."""
    if "tools/train_tiny.py" in argv:
        return ["--steps", "30"], (0,)
    if "finetune" in argv:  # two steps, a checkpoint after each (for the --resume command)
        return ["--max-steps", "2", "--save-steps", "1"], (0,)
    if "benchmarks/run_all.py" in argv:  # exit code 1 = ran, but missed a target: expected of a tiny model
        return ["--model", "glm-tiny-test", "--work", str(scratch), "--out", str(scratch)], (0, 1)
    return [], (0,)


# Commands that take about a minute even when run briefly: `make test-slow` runs them (CI does too).
SLOW = ("tools/train_tiny.py", "benchmarks/run_all.py")


def command_params():
    for i, command in enumerate(readme_commands()):
        marks = [pytest.mark.slow] if any(s in command for s in SLOW) else []
        yield pytest.param(i, command, marks=marks, id=f"{i}-{command.split()[0]}-{command.split()[1]}")


def test_readme_has_commands():
    assert len(list(readme_commands())) >= 6


@pytest.fixture(scope="module")
def torch_layout(model_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("readme_torch") / "torch_src"
    convert(str(model_dir), str(directory), to="safetensors", to_layout="torch", quiet=True)
    return directory


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Where ADAPTER_DIR and OUT_DIR live: a finetune command writes them, later commands read them
    (the commands run in README order)."""
    return tmp_path_factory.mktemp("readme_shared")


@pytest.mark.parametrize("i, command", list(command_params()))
def test_shell_command_runs(model_dir, torch_layout, shared, tmp_path, i, command):
    src = torch_layout if "torch_to_paddle" in command else model_dir
    command = (command.replace("MODEL_DIR", str(model_dir)).replace("SRC_DIR", str(src))
               .replace("DST_DIR", str(tmp_path / f"dst{i}")).replace("ADAPTER_DIR", str(shared / "adapter"))
               .replace("OUT_DIR", str(shared / "finetuned")).replace("LOG_DIR", str(tmp_path / "launch_logs"))
               .replace("--out paddle_glm/demo_model", f"--out {tmp_path / f'out{i}'}"))
    argv = shlex.split(command)
    extra, success = brief(argv, tmp_path / f"brief{i}")
    argv += extra
    # this venv's python and paddle-glm first on PATH, for the launcher and shell command lines
    env = dict(os.environ, PYTHONWARNINGS="ignore",
               PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    if "$(" in command:  # a shell command line (the raw launcher)
        argv = ["bash", "-c", " ".join([command] + [shlex.quote(a) for a in extra])]
    elif argv[0] == "paddle-glm":
        argv = [sys.executable, "-m", "paddle_glm", *argv[1:]]
    elif argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=README.parent, env=env)
    assert proc.returncode in success, f"{command}\n{proc.stderr[-2000:]}"


def test_benchmark_tables_are_those_of_results_md():
    readme = README.read_text(encoding="utf-8")
    copied = readme.split("<!-- copied from benchmarks/RESULTS.md -->\n", 1)[1].split("<!-- end of copy -->", 1)[0]
    results = (README.parent / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    sections = results[results.index("## "):]  # after RESULTS.md's own header
    assert copied.replace("### ", "## ").strip() == sections.strip()
    assert "Written by `python benchmarks/run_all.py` on" in results  # the figures come from a full run
