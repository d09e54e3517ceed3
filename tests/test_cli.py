"""The paddle-glm command line, run as subprocesses: outputs and exit codes."""
import os
import subprocess
import sys

import numpy as np
import pytest

from tokenizer_helpers import TOKENIZER_DIR

import paddle_glm
from paddle_glm import GLMChineseTokenizer, GLMConfig, GLMForConditionalGeneration
from paddle_glm.cli.info_cmd import parameter_count

CFG = dict(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=1210, max_sequence_length=64,
           bad_words_id=[1209])


def run_cli(*args, stdin=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "paddle_glm", *args], capture_output=True, text=True, input=stdin,
                          env=env, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli_model")
    import paddle

    paddle.seed(0)
    model = GLMForConditionalGeneration(GLMConfig(**CFG))
    model.save_pretrained(str(directory), safe_serialization=False, max_shard_size="40KB")
    GLMChineseTokenizer.from_pretrained(str(TOKENIZER_DIR)).save_pretrained(str(directory))
    return directory


def assert_one_line_error(code, stderr, *needles):
    assert code != 0
    lines = [line for line in stderr.strip().splitlines() if line.startswith("paddle-glm")]
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_generate_fill_and_info(model_dir):
    code, out, err = run_cli("generate", str(model_dir), "今天天气[MASK]，我们去公园。", "--max-new-tokens", "5")
    assert code == 0, err
    assert out.strip() and "tokens/s" in err
    code, out, err = run_cli("generate", str(model_dir), "从前有座山", "--max-new-tokens", "4", "--do-sample",
                             "--seed", "3", "--stream")
    assert code == 0, err
    assert "appending [gMASK]" in err and "tokens/s" in err
    code, out, err = run_cli("fill", str(model_dir), "春眠不觉晓，[MASK]闻啼鸟。夜来[MASK]雨声。",
                             "--max-new-tokens", "4")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[1].startswith("[1] ") and lines[2].startswith("[2]")  # a random model's span may be empty
    assert lines[0].startswith("春眠不觉晓，") and "tokens/s" in err
    code, out, err = run_cli("info", str(model_dir))
    assert code == 0, err
    assert f"parameters: {parameter_count(GLMConfig(**CFG)):,}" in out
    assert "pdparams" in out and "model_state-00001-of-" in out and "dtype: float32" in out


def test_parameter_count_is_exact():
    model = GLMForConditionalGeneration(GLMConfig(**CFG))
    assert parameter_count(GLMConfig(**CFG)) == sum(int(np.prod(p.shape)) for p in model.parameters())
    big = parameter_count(GLMConfig.from_name("glm-10b-chinese"))
    assert 9.8e9 < big < 10.0e9


def test_prompt_from_file_and_stdin(model_dir, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("我喜欢[MASK]。\n", encoding="utf-8")
    code, out, err = run_cli("generate", str(model_dir), "--file", str(prompt), "--max-new-tokens", "3")
    assert code == 0 and out.strip(), err
    code, out, err = run_cli("generate", str(model_dir), "--max-new-tokens", "3", stdin="第一句[MASK]\n第二句[MASK]\n")
    assert code == 0, err
    assert err.count("tokens/s") == 2


def test_errors_are_one_line(model_dir, tmp_path):
    assert_one_line_error(*run_cli("generate", str(tmp_path / "missing"), "x")[::2], "no such model directory")
    no_tokenizer = tmp_path / "no_tok"
    no_tokenizer.mkdir()
    for name in os.listdir(model_dir):
        if name != "cog-pretrain.model":
            (no_tokenizer / name).write_bytes((model_dir / name).read_bytes())
    assert_one_line_error(*run_cli("fill", str(no_tokenizer), "x[MASK]")[::2], "cog-pretrain.model")
    assert_one_line_error(*run_cli("generate", str(model_dir), "x", "--dtype", "float16")[::2],
                          "float16 needs a CUDA GPU")
    long_prompt = "天" * 80 + "[MASK]"
    assert_one_line_error(*run_cli("generate", str(model_dir), long_prompt, "--max-new-tokens", "4")[::2],
                          "position table")
    assert_one_line_error(*run_cli("info", "THUDM/glm-10b-chinese")[::2], "does not download")


def test_help_for_every_subcommand():
    for command in ("generate", "fill", "convert", "info", "demo"):
        code, out, _ = run_cli(command, "--help")
        assert code == 0 and "usage: paddle-glm " + command in out
    assert paddle_glm.__version__


def test_demo_runs_offline_and_fills_the_corpus_blanks():
    from paddle_glm.demo_cases import DEMO_CASES

    code, out, err = run_cli("demo")
    assert code == 0, err
    assert "converted to safetensors" in out and "verified" in out and "tokens/s" in err
    for case in DEMO_CASES:
        assert case.text in out
    assert f"{len(DEMO_CASES)} of {len(DEMO_CASES)} texts filled exactly" in out


def test_convert_and_help_do_not_import_paddle():
    """Conversion and every --help start without Paddle (its import costs about a second)."""
    code = ("import sys\nfrom paddle_glm.cli import main\n"
            "for argv in (['--help'], ['convert', '--help'], ['generate', '--help'], ['finetune', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "assert 'paddle' not in sys.modules, 'paddle was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
