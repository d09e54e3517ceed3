"""``paddle-glm finetune``: bad input, resume, data parallel vs one process, and the shipped example learning."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from conftest import NO_DROPOUT
from tokenizer_helpers import TOKENIZER_DIR

from paddle_glm import GLMChineseTokenizer, GLMConfig, GLMForConditionalGeneration, fill_blanks
from paddle_glm.cli import main
from paddle_glm.lora import load_adapter
from paddle_glm.model import GLMForConditionalGeneration as Model

ROOT = Path(__file__).resolve().parent.parent
CFG = dict(num_layers=2, hidden_size=32, num_attention_heads=2, vocab_size=1210, max_sequence_length=64)
DROPOUT = dict(embedding_dropout_prob=0.1, attention_dropout_prob=0.1, output_dropout_prob=0.1)
SOURCES = ["北京是中国的[MASK]。", "上海位于长江入海口", "凯旋门位于意大利米兰市古城堡旁。", "长江是中国最长的[MASK]",
           "今天天气很好", "[MASK]是中华人民共和国的首都。", "我们在北京", "文化和科技创新中心"]


def _model_dir(path: Path, **config) -> str:
    paddle.seed(0)
    GLMForConditionalGeneration(GLMConfig(**CFG, **config)).save_pretrained(str(path))
    GLMChineseTokenizer.from_pretrained(str(TOKENIZER_DIR)).save_pretrained(str(path))
    return str(path)


def _data(path: Path, tokenizer=None) -> str:
    """Eight examples; with ``tokenizer``, every target has the same number of tokens (so per-process
    mean losses average to the one-process mean)."""
    targets = ["北京", "城市", "上海", "长江", "文化", "世界", "人民", "中心"]  # two tokens each
    if tokenizer is not None:
        lengths = {len(tokenizer.encode(t, add_special_tokens=False)) for t in targets}
        assert len(lengths) == 1, lengths
    path.write_text("".join(json.dumps({"src": s, "tgt": t}, ensure_ascii=False) + "\n"
                            for s, t in zip(SOURCES, targets)), encoding="utf-8")
    return str(path)


def _weights(directory) -> dict:
    model = Model.from_pretrained(str(directory), show_progress=False)
    return {name: p.numpy() for name, p in model.state_dict().items()}


def _run(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr()


# ---- 8. bad input -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _model_dir(tmp_path_factory.mktemp("tiny_model"))


@pytest.mark.parametrize("content, expected", [
    ('{"src": "a[MASK]", "tgt": "b"}\n{"src": "x", "tgt"\n', r":2: not valid JSON"),
    ('{"src": "a[MASK]", "tgt": "b"}\n\n{"src": "c"}\n', r":3: missing \"tgt\""),
    ('{"tgt": "b"}\n', r":1: missing \"src\""),
    ("", r":1: no examples"),
    ('{"src": "[MASK]' + "北京" * 40 + '", "tgt": "b"}\n', r":1: .*would remove every mask token"),
])
def test_bad_data_is_one_line_error(tiny, tmp_path, capsys, content, expected):
    data = tmp_path / "train.jsonl"
    data.write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    code, captured = _run(["finetune", tiny, "--train", str(data), "--out", str(out), "--src-length", "16"], capsys)
    assert code != 0
    line = captured.err.strip()
    assert "\n" not in line and line.startswith(f"paddle-glm finetune: error: {data}:"), line
    assert re.search(expected, line), line
    assert not out.exists()


def test_fp16_on_cpu_and_nonempty_out(tiny, tmp_path, capsys):
    data = _data(tmp_path / "train.jsonl")
    out = tmp_path / "out"
    code, captured = _run(["finetune", tiny, "--train", data, "--out", str(out), "--dtype", "float16"], capsys)
    assert code != 0 and "float16 needs a CUDA GPU" in captured.err and not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, captured = _run(["finetune", tiny, "--train", data, "--out", str(out)], capsys)
    assert code != 0 and "not empty; pass --overwrite" in captured.err
    assert captured.err.count("\n") == 1 and os.listdir(out) == ["keep.txt"]
    code, captured = _run(["finetune", tiny, "--train", data, "--out", str(out), "--resume"], capsys)
    assert code != 0 and "no checkpoint-STEP" in captured.err and os.listdir(out) == ["keep.txt"]
    code, captured = _run(["finetune", tiny, "--train", data, "--out", tiny, "--overwrite"], capsys)
    assert code != 0 and "an input of this run" in captured.err and os.path.isfile(os.path.join(tiny, "config.json"))


# ---- 7. resume equals an uninterrupted run ------------------------------------------------------

@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_equals_uninterrupted(tmp_path, capsys, lora):
    model = _model_dir(tmp_path / "model", **DROPOUT)  # dropout on: the RNG state must be restored too
    data = _data(tmp_path / "train.jsonl")
    command = ["finetune", model, "--train", data, "--max-steps", "4", "--save-steps", "2", "--batch-size", "3",
               "--lr", "1e-2", "--warmup-ratio", "0.25", "--weight-decay", "0.1"] + (["--lora"] if lora else [])
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert _run(command + ["--out", str(whole)], capsys)[0] == 0
    # What a run that crashed after its step-2 checkpoint leaves behind.
    shutil.copytree(whole / "checkpoint-2", resumed / "checkpoint-2")
    assert _run(command + ["--out", str(resumed), "--resume"], capsys)[0] == 0
    if lora:
        base = Model.from_pretrained(model, show_progress=False)
        a = load_adapter(Model.from_pretrained(model, show_progress=False), str(whole)).state_dict()
        b = load_adapter(base, str(resumed)).state_dict()
        names = [n for n in a if "lora_" in n]
    else:
        a, b = _weights(whole), _weights(resumed)
        names = list(a)
    differs_from_step_2 = False
    step2 = (load_adapter(Model.from_pretrained(model, show_progress=False), str(whole / "checkpoint-2")).state_dict()
             if lora else _weights(whole / "checkpoint-2"))
    for name in names:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        np.testing.assert_array_equal(x, y, err_msg=name)
        differs_from_step_2 |= bool(np.abs(x - np.asarray(step2[name])).max() > 0)
    assert differs_from_step_2
    assert (resumed / "cog-pretrain.model").is_file()


# ---- 7. data parallel: 2 processes x B rows == 1 process x 2B rows -------------------------------

def test_two_processes_equal_one_with_double_batch(tmp_path, capsys):
    model = _model_dir(tmp_path / "model", **NO_DROPOUT)
    data = _data(tmp_path / "train.jsonl", GLMChineseTokenizer.from_pretrained(str(TOKENIZER_DIR)))
    common = ["finetune", model, "--train", data, "--max-steps", "3", "--lr", "1e-3", "--seed", "3"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert _run(common + ["--batch-size", "4", "--out", str(one)], capsys)[0] == 0
    proc = subprocess.run([sys.executable, "-m", "paddle_glm", *common, "--batch-size", "2", "--nproc", "2",
                           "--out", str(two)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finetuned 3 steps" in proc.stdout
    a, b, start = _weights(one), _weights(two), _weights(model)
    moved = 0.0
    for name in a:
        scale = max(np.abs(a[name] - start[name]).max(), 1e-12)
        moved = max(moved, scale)
        assert np.abs(a[name] - b[name]).max() <= 1e-5 * max(np.abs(a[name]).max(), 1.0), name
    assert moved > 1e-4


# ---- 6. the README's example learns its facts ---------------------------------------------------

def _readme_finetune_command() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [line.split("  #")[0].strip() for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
                for line in block.splitlines()]
    matches = [c for c in commands if c.startswith("paddle-glm finetune paddle_glm/demo_model")
               and "examples/facts.jsonl" in c and "--lora" in c]
    assert len(matches) == 1, matches
    return matches[0]


def test_shipped_example_learns_the_facts(tmp_path):
    adapter = tmp_path / "adapter"
    argv = shlex.split(_readme_finetune_command().replace("ADAPTER_DIR", str(adapter)))
    proc = subprocess.run([sys.executable, "-m", "paddle_glm", *argv[1:]], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = [json.loads(line) for line in (ROOT / "examples" / "facts.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(facts) == 5
    demo = str(ROOT / "paddle_glm" / "demo_model")
    tokenizer = GLMChineseTokenizer.from_pretrained(demo)

    def answered(model):
        return sum(fill_blanks(model, tokenizer, f["src"], max_new_tokens=8)[1] == [f["tgt"]] for f in facts)

    assert answered(Model.from_pretrained(demo, show_progress=False)) == 0
    assert answered(load_adapter(Model.from_pretrained(demo, show_progress=False), str(adapter))) >= 4


# ---- --adapter on the CLI ---------------------------------------------------------------------

def test_adapter_flag_on_generate_fill_info(tiny, tmp_path, capsys):
    from paddle_glm.lora import LoRAConfig, apply_lora, merge_lora, save_adapter

    paddle.seed(2)
    model = apply_lora(Model.from_pretrained(tiny, show_progress=False), LoRAConfig(r=2, lora_alpha=64))
    for name, p in model.named_parameters():
        if name.endswith("lora_B"):
            p.set_value(np.random.default_rng(0).normal(0, 1, p.shape).astype("float32"))
    save_adapter(model, str(tmp_path / "adapter"))
    tokenizer = GLMChineseTokenizer.from_pretrained(tiny)
    expected = fill_blanks(merge_lora(model), tokenizer, "北京是[MASK]。", max_new_tokens=4)[0]
    base = fill_blanks(Model.from_pretrained(tiny, show_progress=False), tokenizer, "北京是[MASK]。",
                       max_new_tokens=4)[0]
    assert expected != base  # the adapter changes the answer
    code, captured = _run(["fill", tiny, "北京是[MASK]。", "--adapter", str(tmp_path / "adapter"),
                           "--max-new-tokens", "4"], capsys)
    assert code == 0 and captured.out.splitlines()[0] == expected
    code, captured = _run(["generate", tiny, "北京是[MASK]。", "--adapter", str(tmp_path / "adapter"),
                           "--max-new-tokens", "4"], capsys)
    assert code == 0 and expected.startswith("北京是" + captured.out.strip())
    code, captured = _run(["info", tiny, "--adapter", str(tmp_path / "adapter")], capsys)
    assert code == 0 and "LoRA r=2, alpha=64 (scaling 32)" in captured.out and "2 Linear layers" in captured.out
