"""Quantized checkpoints (``paddle-glm quantize``), the quantization flags of the CLI and its refusals,
and LoRA adapters on a quantized model. The references: the model quantized while loading, the
float model, and the LoRA delta computed by hand."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import paddle
import pytest

from paddle_glm import GLMForConditionalGeneration
from paddle_glm.checkpoint.source import find_checkpoint
from paddle_glm.demo_cases import DEMO_CASES, DEMO_MODEL_DIR
from paddle_glm.errors import GLMError
from paddle_glm.infilling import fill_blanks
from paddle_glm.lora import LoRAConfig, apply_lora, load_adapter, merge_lora, save_adapter
from paddle_glm.quantization.checkpoint import quantize_checkpoint
from paddle_glm.quantization.layers import QuantizedLoRALinear
from paddle_glm.quantization.settings import INT4, INT8, QuantSettings
from paddle_glm.tokenizer import GLMChineseTokenizer

IDS = [[5, 17, 200, 33, 900, 4, 1200]]
SHARD = "300KB"  # the demo model's ~0.9 MB int8 checkpoint in a few shards


def run_cli(*args):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "paddle_glm", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line_error(code, stderr, *needles):
    assert code == 2, stderr
    lines = [line for line in stderr.strip().splitlines() if line.startswith("paddle-glm")]
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def logits(model):
    return model(paddle.to_tensor(IDS)).logits.numpy()


@pytest.fixture(scope="module")
def quantized_dirs(tmp_path_factory):
    """The demo model quantized to int8 by the CLI (with --verify) and to int4 by the function."""
    root = tmp_path_factory.mktemp("quantized")
    code, out, err = run_cli("quantize", DEMO_MODEL_DIR, root / "int8", "--quant-type", INT8, "--max-shard-size",
                             SHARD, "--verify")
    assert code == 0, err
    assert "verified" in out
    quantize_checkpoint(str(DEMO_MODEL_DIR), str(root / "int4"), QuantSettings(INT4), max_shard_size=SHARD,
                        quiet=True)
    return {INT8: root / "int8", INT4: root / "int4"}


@pytest.mark.parametrize("quant_type", [INT8, INT4])
def test_quantized_checkpoint_loads_to_exactly_the_model_quantized_on_load(quantized_dirs, quant_type):
    directory = quantized_dirs[quant_type]
    on_load = GLMForConditionalGeneration.from_pretrained(str(DEMO_MODEL_DIR), show_progress=False,
                                                          quant_type=quant_type)
    loaded = GLMForConditionalGeneration.from_pretrained(str(directory), show_progress=False)
    assert loaded.quantization == QuantSettings(quant_type)
    np.testing.assert_array_equal(logits(loaded), logits(on_load))
    tokenizer = GLMChineseTokenizer.from_pretrained(str(directory))  # the tokenizer files were copied
    assert [fill_blanks(loaded, tokenizer, case.text)[1] for case in DEMO_CASES] == \
        [list(case.expected) for case in DEMO_CASES]


def test_quantized_checkpoint_files(quantized_dirs):
    directory = quantized_dirs[INT4]
    source = find_checkpoint(str(directory))
    assert source.format == "safetensors" and len(source.shards) > 1 and source.index_file
    specs = {name: spec for shard in source.shards for name, spec in source.specs(shard).items()}
    qkv = "glm.transformer.layers.0.attention.query_key_value"
    assert specs[f"{qkv}.weight"].dtype == np.uint8 and specs[f"{qkv}.weight"].shape == (384, 64)  # [3h, h/2]
    assert specs[f"{qkv}.weight_scale"].dtype == np.float32 and specs[f"{qkv}.weight_scale"].shape == (384, 2)
    assert specs[f"{qkv}.bias"].dtype == np.float32
    assert specs["glm.word_embeddings.weight_scale"].shape == (1638, 8)  # groups of 16 along each row
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    assert config["quantization_config"] == {"quant_type": INT4, "group_size": 64, "quantize_embeddings": True,
                                             "embedding_group_size": 16}
    assert {"cog-pretrain.model", "tokenizer_config.json"} <= set(os.listdir(directory))
    int8_size = find_checkpoint(str(quantized_dirs[INT8])).total_bytes
    # (the demo is small: its float position tables weigh; glm-large's ratios are in bench_quant.py)
    assert source.total_bytes < int8_size < find_checkpoint(str(DEMO_MODEL_DIR)).total_bytes * 0.4


def test_keep_embeddings_leaves_them_float(tmp_path):
    quantize_checkpoint(str(DEMO_MODEL_DIR), str(tmp_path / "q"), QuantSettings(INT8, quantize_embeddings=False),
                        quiet=True)
    loaded = GLMForConditionalGeneration.from_pretrained(str(tmp_path / "q"), show_progress=False)
    assert loaded.glm.word_embeddings.weight.dtype == paddle.float32
    on_load = GLMForConditionalGeneration.from_pretrained(str(DEMO_MODEL_DIR), show_progress=False,
                                                          quant_type=INT8, quantize_embeddings=False)
    np.testing.assert_array_equal(logits(loaded), logits(on_load))


def test_an_existing_destination_survives_a_failed_quantize_and_overwrite_swaps_at_the_end(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    shutil.copytree(DEMO_MODEL_DIR, src)
    dst.mkdir()
    (dst / "old.txt").write_text("old")
    code, _, err = run_cli("quantize", src, dst, "--quant-type", INT8)
    assert_one_line_error(code, err, str(dst))
    shard = src / "model_state-00002-of-00002.pdparams"
    shard.write_bytes(shard.read_bytes()[:1000])  # truncated: fails midway, after the first shard is written
    code, _, err = run_cli("quantize", src, dst, "--quant-type", INT8, "--overwrite")
    assert_one_line_error(code, err, "model_state-00002-of-00002.pdparams")
    assert os.listdir(dst) == ["old.txt"]
    assert not [name for name in os.listdir(tmp_path) if name not in ("src", "dst")]  # no temporary left
    shutil.copy(DEMO_MODEL_DIR / shard.name, shard)
    code, _, err = run_cli("quantize", src, dst, "--quant-type", INT8, "--overwrite")
    assert code == 0, err
    assert "old.txt" not in os.listdir(dst) and "config.json" in os.listdir(dst)


def test_quantized_sources_are_refused_by_quantize_and_convert(quantized_dirs, tmp_path):
    src = quantized_dirs[INT8]
    code, _, err = run_cli("quantize", src, tmp_path / "again", "--quant-type", INT4)
    assert_one_line_error(code, err, f"{src}/config.json", "already quantized (weight_only_int8)")
    code, _, err = run_cli("convert", src, tmp_path / "converted", "--to", "pdparams")
    assert_one_line_error(code, err, f"{src}/config.json", "already quantized")
    assert not (tmp_path / "again").exists() and not (tmp_path / "converted").exists()


@pytest.mark.parametrize("args,needles", [
    (["--quant-type", "int3"], ["--quant-type", "'int3'"]),
    (["--quant-type", INT4, "--group-size", "48"], ["--group-size", "48", "128"]),
    (["--quant-type", INT8, "--dtype", "float16"], ["--dtype", "--quant-type"]),
    (["--quant-type", INT8, "--tensor-parallel", "2"], ["--tensor-parallel", "--quant-type"]),
    (["--int8-activations"], ["--int8-activations", "config.json records no quantization", f"--quant-type {INT4}"]),
    (["--quant-type", INT8, "--int8-activations"], ["--int8-activations", f"not --quant-type {INT8}"]),
])
def test_cli_refuses_bad_quantization_flags_in_one_line(args, needles):
    code, _, err = run_cli("fill", DEMO_MODEL_DIR, DEMO_CASES[0].text, *args)
    assert_one_line_error(code, err, *needles)


def test_cli_generates_fills_and_describes_with_quantization(quantized_dirs):
    case = DEMO_CASES[0]
    code, out, err = run_cli("fill", DEMO_MODEL_DIR, case.text, "--quant-type", INT4)
    assert code == 0, err
    assert out.splitlines()[1] == f"[1] {case.expected[0]}"
    code, out, err = run_cli("generate", quantized_dirs[INT8], case.text, "--num-beams", "2")
    assert code == 0, err
    assert out.strip() == case.expected[0]
    for model_dir, flags in ((quantized_dirs[INT4], []), (DEMO_MODEL_DIR, ["--quant-type", INT4])):
        code, out, err = run_cli("generate", model_dir, case.text, "--int8-activations", *flags)
        assert code == 0, err
        assert out.strip() == case.expected[0]
    code, _, err = run_cli("generate", quantized_dirs[INT8], case.text, "--int8-activations")
    assert_one_line_error(code, err, "--int8-activations", f"quantized as {INT8}", "use an int4 one")
    code, out, err = run_cli("info", quantized_dirs[INT8], "--quant-type", INT4)
    assert code == 0, err
    assert "quantization: weight_only_int8 (per channel, embeddings quantized)" in out
    assert "dtype: float32, int8" in out
    assert "weights in memory quantized with weight_only_int4 (groups of 64" in out


def test_finetune_of_a_quantized_model_needs_lora(quantized_dirs, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"src": "长江全长约[MASK]千米。", "tgt": "6300"}, ensure_ascii=False) + "\n")
    code, _, err = run_cli("finetune", quantized_dirs[INT8], "--train", data, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "config.json", "--lora")


def test_lora_on_a_quantized_model_adds_the_adapter_delta(tmp_path):
    """Logits equal the quantized base's Linears plus ``x @ A @ B * scaling`` on the wrapped qkv, by hand."""
    model = GLMForConditionalGeneration.from_pretrained(str(DEMO_MODEL_DIR), show_progress=False, quant_type=INT8)
    base_qkv = model.glm.transformer.layers[0].attention.query_key_value
    apply_lora(model, LoRAConfig(r=4, lora_alpha=8))
    wrapped = model.glm.transformer.layers[0].attention.query_key_value
    assert isinstance(wrapped, QuantizedLoRALinear)
    rng = np.random.default_rng(0)
    wrapped.lora_B.set_value(rng.normal(0, 0.1, wrapped.lora_B.shape).astype("float32"))
    x = paddle.to_tensor(rng.normal(0, 1, (2, 3, 128)).astype("float32"))
    by_hand = base_qkv(x).numpy() + (x.numpy() @ wrapped.lora_A.numpy() @ wrapped.lora_B.numpy()) * 2.0
    np.testing.assert_allclose(wrapped(x).numpy(), by_hand, rtol=1e-5, atol=1e-5)
    assert wrapped.weight.dtype == paddle.int8 and wrapped.lora_A.dtype == paddle.float32
    with pytest.raises(GLMError, match="cannot be merged into quantized weights"):
        merge_lora(model)
    save_adapter(model, str(tmp_path / "adapter"))
    reloaded = load_adapter(GLMForConditionalGeneration.from_pretrained(str(DEMO_MODEL_DIR), show_progress=False,
                                                                        quant_type=INT8), str(tmp_path / "adapter"))
    np.testing.assert_array_equal(logits(reloaded), logits(model))


@pytest.mark.slow
def test_an_adapter_trained_on_fp32_keeps_its_fills_on_int8(tmp_path):
    """The README's finetuning example (LoRA on the fp32 demo model), loaded on the int8 model."""
    facts = [json.loads(line) for line in
             (DEMO_MODEL_DIR.parent.parent / "examples" / "facts.jsonl").read_text(encoding="utf-8").splitlines()]
    code, _, err = run_cli("finetune", DEMO_MODEL_DIR, "--train", DEMO_MODEL_DIR.parent.parent / "examples" /
                           "facts.jsonl", "--lora", "--epochs", "60", "--batch-size", "5", "--lr", "1e-2",
                           "--out", tmp_path / "adapter")
    assert code == 0, err
    tokenizer = GLMChineseTokenizer.from_pretrained(str(DEMO_MODEL_DIR))

    def answers(quant_type):
        model = GLMForConditionalGeneration.from_pretrained(str(DEMO_MODEL_DIR), show_progress=False,
                                                            quant_type=quant_type)
        model = load_adapter(model, str(tmp_path / "adapter"))
        return [fill_blanks(model, tokenizer, f["src"], max_new_tokens=8)[1] for f in facts]

    float_answers = answers(None)
    assert sum(a == [f["tgt"]] for a, f in zip(float_answers, facts)) >= 4
    assert answers(INT8) == float_answers


@pytest.mark.parametrize("safe_serialization", [True, False])
def test_save_pretrained_of_a_quantized_model_loads_back(tmp_path, safe_serialization):
    model = GLMForConditionalGeneration.from_pretrained(str(DEMO_MODEL_DIR), show_progress=False, quant_type=INT4)
    model.save_pretrained(str(tmp_path), safe_serialization=safe_serialization)
    loaded = GLMForConditionalGeneration.from_pretrained(str(tmp_path), show_progress=False)
    assert loaded.quantization == model.quantization
    np.testing.assert_array_equal(logits(loaded), logits(model))


def test_serve_quantizes_on_load_and_fills(tmp_path):
    """A real server (``serve --quant-type weight_only_int4``) and a real HTTP client."""
    import httpx
    from test_serve import ServerProcess

    server = ServerProcess(tmp_path / "serve.log", "--quant-type", INT4)
    try:
        server.wait_ready()
        case = DEMO_CASES[4]
        response = httpx.post(server.url + "/v1/fill", json={"text": case.text}, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["spans"] == list(case.expected)
    finally:
        server.stop()
    assert server.proc.returncode is not None
