"""Tensor parallelism on 2 CPU processes (paddle.distributed.launch, gloo) against the single-process model.

One launch of ``tests/tp_worker.py`` covers the library (logits, greedy, beam and sampled
generation, parameter share, gathered save, errors inside a job); the CLI tests launch
``paddle-glm ... --tensor-parallel 2`` and compare with the single-process output.
"""
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from conftest import TINY_A, TINY_B, paddlenlp_model, random_model
from tokenizer_helpers import TOKENIZER_DIR
from tp_worker import GENERATE, generation_inputs

from paddle_glm import GLMChineseTokenizer, GLMConfig, GLMError, GLMForConditionalGeneration, tensor_parallel
from paddle_glm.cli import main
from paddle_glm.parallel import QKV, check_split, join_slices, local_slice

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           PYTHONWARNINGS="ignore")
TOL = 1e-5


def launch(tmp_path: Path, script: str, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
               "--log_dir", str(tmp_path / "logs"), script, "--", *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV)
    logs = "".join(p.read_text(errors="replace")[-3000:] for p in sorted((tmp_path / "logs").glob("workerlog.*")))
    assert proc.returncode == 0, logs
    return proc


def reference_outputs(path: str) -> dict:
    model = GLMForConditionalGeneration.from_pretrained(path, show_progress=False)
    ids, pos, mask = generation_inputs(model.config)
    prompt = ids[:, :9]
    with paddle.no_grad():
        logits = model(paddle.to_tensor(ids), paddle.to_tensor(pos), paddle.to_tensor(mask)).logits.numpy()
    return {
        "logits": logits,
        "greedy": model.generate(prompt, pos, mask, **GENERATE).numpy(),
        "beam": model.generate(prompt, pos, mask, num_beams=3, **GENERATE).numpy(),
        "sampled_seeded": model.generate(prompt, pos, mask, do_sample=True, top_k=50, seed=11, **GENERATE).numpy(),
    }


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """PaddleNLP-written checkpoints (sharded pdparams, TINY_A; safetensors, TINY_B), bad configs, one launch."""
    tmp = tmp_path_factory.mktemp("tp")
    models = [tmp / "pdparams", tmp / "safetensors"]
    paddlenlp_model(TINY_A, seed=3, spread=True).save_pretrained(str(models[0]), max_shard_size="30KB",
                                                                  safe_serialization=False)
    paddlenlp_model(TINY_B, seed=4, spread=True).save_pretrained(str(models[1]), max_shard_size="30KB",
                                                                  safe_serialization=True)
    bad = {"heads": dict(TINY_B, num_attention_heads=3), "vocab": dict(TINY_A, vocab_size=1011),
           "world": dict(TINY_A, hidden_size=16, num_attention_heads=1)}
    for name, cfg in bad.items():
        GLMConfig(**cfg).save_pretrained(str(tmp / name))
    out = tmp / "out"
    out.mkdir()
    launch(tmp, str(TESTS / "tp_worker.py"), str(out), *map(str, models), "--errors", *(str(tmp / n) for n in bad))
    ranks = [pickle.loads((out / f"rank{r}.pkl").read_bytes()) for r in range(2)]
    return {"models": models, "refs": [reference_outputs(str(m)) for m in models], "ranks": ranks, "out": out}


@pytest.mark.parametrize("i", [0, 1], ids=["pdparams", "safetensors"])
def test_logits_and_generation_equal_the_single_process_model(job, i):
    ref = job["refs"][i]
    assert len(set(ref["greedy"][:, 9:].ravel().tolist())) >= 3  # varied tokens, not a degenerate comparison
    for rank in job["ranks"]:
        got = rank["models"][i]
        assert got["logits"].shape == ref["logits"].shape  # [b, s, vocab] on every rank
        # 1e-5 at unit logit scale: these logits reach ~18, where float32 summation order alone (split
        # matmuls, the all_reduce) moves the last bits; measured 7.6e-6 and 8.1e-6 at 1 thread per rank
        assert np.abs(got["logits"] - ref["logits"]).max() <= TOL * max(1.0, np.abs(ref["logits"]).max())
        for key in ("greedy", "beam", "sampled_seeded"):
            np.testing.assert_array_equal(got[key], ref[key], err_msg=key)


def test_sampling_is_identical_on_every_rank(job):
    for i in range(2):
        first, second = (rank["models"][i] for rank in job["ranks"])
        np.testing.assert_array_equal(first["sampled_seeded"], second["sampled_seeded"])
        np.testing.assert_array_equal(first["sampled_unseeded"], second["sampled_unseeded"])  # rank 0's seed


def test_each_rank_holds_its_share(job):
    for i, heads in enumerate([TINY_A["num_attention_heads"], TINY_B["num_attention_heads"]]):
        for rank in job["ranks"]:
            assert rank["models"][i]["share"] <= 0.6
            assert rank["models"][i]["cache_heads"] == heads // 2  # the KV cache holds the local heads


@pytest.mark.parametrize("i", [0, 1], ids=["pdparams_to_safetensors", "safetensors_to_pdparams"])
def test_saved_tensor_parallel_model_loads_in_one_process(job, i):
    saved = str(job["out"] / f"saved-{i}")
    original = GLMForConditionalGeneration.from_pretrained(str(job["models"][i]), show_progress=False)
    loaded = GLMForConditionalGeneration.from_pretrained(saved, show_progress=False)
    theirs = original.state_dict()
    for name, p in loaded.state_dict().items():
        np.testing.assert_array_equal(p.numpy(), theirs[name].numpy(), err_msg=name)
    ids, pos, mask = generation_inputs(loaded.config)
    with paddle.no_grad():
        logits = loaded(paddle.to_tensor(ids), paddle.to_tensor(pos), paddle.to_tensor(mask)).logits.numpy()
    np.testing.assert_array_equal(logits, job["refs"][i]["logits"])


def test_errors_inside_a_job(job):
    heads, vocab, world = job["ranks"][0]["errors"]
    assert "does not divide the 3 attention heads: use one of 1, 3" in heads
    assert "does not divide the vocabulary of 1011 rows" in vocab and "pad the word embeddings" in vocab
    assert "exceeds the model's 1 attention heads" in world
    assert all("\n" not in e for e in (heads, vocab, world))


def test_outside_a_launched_job(tmp_path, monkeypatch):
    monkeypatch.delenv("PADDLE_TRAINERS_NUM", raising=False)
    random_model(TINY_A).save_pretrained(str(tmp_path))
    with pytest.raises(GLMError, match=r"needs a job of N processes: start it with `python -m "
                                       r"paddle.distributed.launch --nproc_per_node N"):
        tensor_parallel.from_pretrained(GLMForConditionalGeneration, str(tmp_path))


def test_qkv_split_takes_whole_heads_of_q_k_and_v():
    h, world = 8, 2  # 4 heads of 2: q | k | v columns, heads one after another within each
    full = np.arange(3 * h)[None].repeat(2, 0)  # [2, 3h]: the value is the column index
    parts = [local_slice(QKV, full, r, world) for r in range(world)]
    assert parts[1][0].tolist() == [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23]  # heads 2-3 of q, k, v
    np.testing.assert_array_equal(join_slices(QKV, parts), full)


def test_check_split_messages():
    with pytest.raises(GLMError, match="does not divide the 6 attention heads: use one of 1, 2, 3, 6"):
        check_split(GLMConfig(**TINY_B), 4)
    check_split(GLMConfig(num_layers=1, hidden_size=4096, num_attention_heads=64, vocab_size=50048), 8)


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tp_cli")
    random_model(dict(TINY_A, vocab_size=1210, bad_words_id=[1209]), seed=5, spread=True).save_pretrained(
        str(directory), max_shard_size="60KB")
    GLMChineseTokenizer.from_pretrained(str(TOKENIZER_DIR)).save_pretrained(str(directory))
    return directory


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paddle_glm", *args], capture_output=True, text=True, timeout=600,
                          env=ENV)


@pytest.mark.parametrize("command", [
    ["generate", "北京是中国的[MASK]，也是一座历史名城。", "--max-new-tokens", "6"],
    ["fill", "北京是中国的[MASK]，上海是[sMASK]。", "--max-new-tokens", "5", "--do-sample", "--seed", "3"],
], ids=["generate", "fill_sampled"])
def test_cli_tensor_parallel_prints_what_one_process_prints(cli_model, capsys, command):
    name, text, *flags = command
    assert main([name, str(cli_model), text, *flags]) == 0
    single = capsys.readouterr().out
    parallel = run_cli(name, str(cli_model), text, *flags, "--tensor-parallel", "2")
    assert parallel.returncode == 0, parallel.stderr[-2000:]
    assert parallel.stdout == single and single.strip()  # rank 0 only: printed once
    assert "tokens in" in parallel.stderr or "filled" in parallel.stderr  # rank 0's status lines come through
    noise = parallel.stderr + parallel.stdout
    assert "LAUNCH" not in noise and "FLAGS" not in noise  # none of the launcher's or Paddle's set-up notes
    assert not re.search(r"^[IWEF]\d{4} \d\d:\d\d", noise, flags=re.M)  # nor glog lines


def test_a_users_error_inside_the_job_is_rank_zeros_one_line(cli_model, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(b"\xff[MASK]")  # found by the ranks, not before they start
    proc = run_cli("generate", str(cli_model), "--file", str(prompt), "--tensor-parallel", "2")
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"paddle-glm generate: error: --file {prompt} is not valid UTF-8 (byte b'\\xff' at 0)"]


@pytest.mark.parametrize("size, message", [
    ("3", "does not divide the 4 attention heads: use one of 1, 2, 4"),
    ("8", "exceeds the model's 4 attention heads (every rank needs at least one): use one of 1, 2, 4"),
    ("0", "--tensor-parallel must be at least 1"),
])
def test_cli_errors_before_launching(cli_model, capsys, size, message):
    assert main(["generate", str(cli_model), "x[MASK]", "--tensor-parallel", size]) == 2
    err = capsys.readouterr().err
    assert err.startswith("paddle-glm generate: error: ") and message in err and err.count("\n") == 1


def test_cli_vocab_error(tmp_path, capsys):
    GLMConfig(**dict(TINY_A, vocab_size=1011)).save_pretrained(str(tmp_path))
    assert main(["fill", str(tmp_path), "x[MASK]", "--tensor-parallel", "2"]) == 2
    assert "does not divide the vocabulary of 1011 rows" in capsys.readouterr().err


def test_info_prints_the_memory_per_rank(cli_model, capsys):
    assert main(["info", str(cli_model), "--tensor-parallel", "2"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    h, layers, vocab, positions = 64, TINY_A["num_layers"], 1210, TINY_A["max_sequence_length"] + 1
    split = vocab * h + layers * (3 * h * h + 3 * h + h * h + 4 * h * h + 4 * h + 4 * h * h)
    replicated = 2 * positions * h + layers * (2 * h + h + 2 * h + h) + 2 * h  # LayerNorms, row-parallel biases
    assert line.startswith(f"tensor parallel over 2 ranks: {split // 2 + replicated:,} parameters per rank;")


def write_random_checkpoint(directory: Path, config: GLMConfig, shard: str) -> None:
    """Random fp32 weights for ``config`` in sharded pdparams, written tensor by tensor."""
    from paddle_glm.checkpoint.writer import ShardedWriter
    from paddle_glm.io_utils import parse_size

    with paddle.LazyGuard():
        shapes = [(n, tuple(p.shape)) for n, p in GLMForConditionalGeneration(config).state_dict().items()]
    rng = np.random.default_rng(0)
    writer = ShardedWriter(str(directory), "pdparams", [(n, int(np.prod(s)) * 4) for n, s in shapes], parse_size(shard))
    for name, shape in shapes:
        writer.add(name, rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02))
    writer.finish()
    config.save_pretrained(str(directory))


@pytest.mark.slow
def test_ranks_never_hold_the_full_model_while_loading(tmp_path):
    """Per-rank peak RSS of a ~0.5 GB fp32 model (100 MB pdparams shards) against the single process's."""
    model_dir, out = tmp_path / "model", tmp_path / "out"
    model_dir.mkdir()
    out.mkdir()
    config = GLMConfig(num_layers=12, hidden_size=768, num_attention_heads=12, vocab_size=50048,
                       max_sequence_length=512)
    write_random_checkpoint(model_dir, config, "100MB")
    worker = str(TESTS / "tp_memory_worker.py")
    subprocess.run([sys.executable, worker, str(out), str(model_dir)], check=True, env=ENV, timeout=600)
    launch(tmp_path, worker, str(out), str(model_dir))
    single = json.loads((out / "single.json").read_text())
    ranks = [json.loads((out / f"{r}.json").read_text()) for r in range(2)]
    single_growth = single["peak"] - single["after_setup"]
    assert single_growth > single["param_bytes"]  # the single process does hold the whole model
    for rank in ranks:
        assert rank["param_bytes"] <= 0.6 * single["param_bytes"]
        assert rank["peak"] - rank["after_setup"] < 0.7 * single_growth, (rank, single)
