"""Reliability (issue 14): checkpoints under concurrency, memory that does not depend on the garbage
collector, corrupt files, signals, symlinks and bad text; every refusal is one line that names the culprit."""
from __future__ import annotations

import gc
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest

from conftest import NO_DROPOUT, TINY_A

import paddle_glm
from paddle_glm import CheckpointError, GLMConfig, GLMError, GLMForConditionalGeneration
from paddle_glm.checkpoint.safe_pickle import STRUCTURED_NAME_KEY
from paddle_glm.checkpoint.safetensors_format import write_safetensors
from paddle_glm.checkpoint.source import find_checkpoint
from paddle_glm.checkpoint.writer import ShardedWriter
from paddle_glm.cli import main
from paddle_glm.conversion import convert, verify
from paddle_glm.io_utils import atomic_output_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "paddle_glm", "demo_model")
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
CLI = [sys.executable, "-m", "paddle_glm"]


def tiny_model(seed: int) -> GLMForConditionalGeneration:
    paddle.seed(seed)
    model = GLMForConditionalGeneration(GLMConfig(**NO_DROPOUT, **TINY_A))
    model.eval()
    return model


def leftovers(directory) -> list:
    """Temporary or moved-aside entries our writers make (``.X.tmp-*``, ``.X.old-*``, ``.save-tmp-*``)."""
    return sorted(n for n in os.listdir(directory) if n.startswith(".") and ("tmp" in n or ".old-" in n))


def one_error_line(stderr: str, command: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and "ccache" not in line
             and not line.lstrip().startswith("warnings.warn")]
    assert len(lines) == 1 and lines[0].startswith(f"paddle-glm {command}: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def run_main(capsys, *argv) -> str:
    """Run the CLI in this process; it must fail with exit 2 and one error line, which is returned."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    return one_error_line(err, argv[0])


def write_plain_pickle(path, state) -> None:
    """A .pdparams file as ``paddle.save`` writes it: plain pickle protocol 4 (memo on)."""
    state = dict(state)
    state[STRUCTURED_NAME_KEY] = {name: name for name in state}
    with open(path, "wb") as f:
        pickle.dump(state, f, protocol=4)


def save_plain_pickle_shards(model, directory) -> None:
    """``model``'s weights as 3 uneven plain-pickle shards plus an index and config.json."""
    os.makedirs(directory)
    state = [(name, p.numpy()) for name, p in model.state_dict().items()]
    cuts = [0, len(state) // 6, len(state) // 2, len(state)]
    weight_map = {}
    for i, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:]), 1):
        file = f"model_state-{i:05d}-of-00003.pdparams"
        write_plain_pickle(os.path.join(directory, file), state[lo:hi])
        weight_map.update({name: file for name, _ in state[lo:hi]})
    with open(os.path.join(directory, "model_state.pdparams.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    model.config.save_pretrained(directory)


# ----- item 0: shard memory maps are released when the shard is done, with the GC disabled

def _mapped(directory) -> int:
    with open("/proc/self/maps") as f:
        return sum(str(directory) in line for line in f)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps")
def test_shard_maps_are_released_without_the_garbage_collector(tmp_path):
    model = tiny_model(0)
    save_plain_pickle_shards(model, tmp_path / "ckpt")
    source = find_checkpoint(str(tmp_path / "ckpt"))
    gc.collect()
    gc.disable()
    try:
        for shard in source.shards:
            for _name, array in source.read_shard(shard):
                assert _mapped(tmp_path / "ckpt") == 1  # the shard's data is a map, not a copy
                del array
            assert _mapped(tmp_path / "ckpt") == 0, f"{shard} is still mapped after its last tensor"
        loaded = GLMForConditionalGeneration.from_pretrained(str(tmp_path / "ckpt"), show_progress=False)
        assert _mapped(tmp_path / "ckpt") == 0
    finally:
        gc.enable()
    for name, p in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name].numpy(), p.numpy())


# ----- item 1: save_pretrained into a directory that a reader loads from

_WRITER = r"""
import os, sys, time
from paddle_glm import GLMForConditionalGeneration
dst, a_dir, b_dir, stop = sys.argv[1:5]
models = [GLMForConditionalGeneration.from_pretrained(d, show_progress=False) for d in (a_dir, b_dir)]
saves = 0
while not os.path.exists(stop):
    # A and B alternate, and every other pair switches format: all transitions between formats happen.
    models[saves % 2].save_pretrained(dst, safe_serialization=(saves // 2) % 2 == 0, max_shard_size="60KB")
    saves += 1
print(saves)
"""

_READER = r"""
import json, sys, time, traceback
import numpy as np, paddle
from paddle_glm import GLMForConditionalGeneration, GLMError
dst, a_dir, b_dir, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
ids = paddle.to_tensor(np.arange(3, 40, dtype="int64")[None])
logits = lambda model: model(ids).logits.numpy()
refs = [logits(GLMForConditionalGeneration.from_pretrained(d, show_progress=False)) for d in (a_dir, b_dir)]
counts = {"a": 0, "b": 0, "mixed": 0, "errors": 0, "tracebacks": 0}
messages = []
end = time.time() + seconds
while time.time() < end:
    try:
        got = logits(GLMForConditionalGeneration.from_pretrained(dst, show_progress=False))
    except GLMError as e:
        counts["errors"] += 1
        messages.append(f"{type(e).__name__}: {e}")
        continue
    except Exception:
        counts["tracebacks"] += 1
        messages.append(traceback.format_exc())
        continue
    match = [np.allclose(got, ref, atol=1e-6) for ref in refs]
    counts["a" if match[0] else "b" if match[1] else "mixed"] += 1
print(json.dumps({"counts": counts, "messages": messages[:20]}))
"""


def test_concurrent_save_and_load_never_mixes(tmp_path):
    """A writer alternates two models (and two formats) into one directory for 20 s while a
    reader loads in a loop: every load is the whole of A or of B; a failed load is a GLMError."""
    dirs = {}
    for name, seed in (("a", 1), ("b", 2)):
        dirs[name] = str(tmp_path / name)
        tiny_model(seed).save_pretrained(dirs[name], max_shard_size="60KB")
    dst, stop = str(tmp_path / "shared"), str(tmp_path / "stop")
    shutil.copytree(dirs["a"], dst)
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, dst, dirs["a"], dirs["b"], stop], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        reader = subprocess.run([sys.executable, "-c", _READER, dst, dirs["a"], dirs["b"], "20"], env=ENV,
                                capture_output=True, text=True, timeout=120)
    finally:
        open(stop, "w").close()
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert reader.returncode == 0, reader.stderr
    result = json.loads(reader.stdout.strip().splitlines()[-1])
    counts, saves = result["counts"], int(out.strip())
    print(f"\nconcurrent save/load: {saves} saves; loads {counts}")
    assert counts["mixed"] == 0 and counts["tracebacks"] == 0, result
    assert counts["a"] > 0 and counts["b"] > 0 and saves > 20, (counts, saves)
    for message in result["messages"]:  # a failed load says what happened and that loading again works
        assert message.startswith("MissingFileError: ") and "load again" in message, message
    assert leftovers(dst) == []
    assert len([n for n in os.listdir(dst) if n.endswith((".safetensors", ".pdparams"))]) == \
        len(set(find_checkpoint(dst).shards))  # no stale shards of earlier saves


def test_save_into_existing_dir_switches_by_the_index(tmp_path):
    a, b = tiny_model(1), tiny_model(2)
    dst = tmp_path / "out"
    a.save_pretrained(str(dst), max_shard_size="60KB")
    first = find_checkpoint(str(dst))
    b.save_pretrained(str(dst), max_shard_size="60KB")
    second = find_checkpoint(str(dst))
    assert not set(first.shards) & set(second.shards)  # new names: a reader never opens a file of another save
    assert sorted(os.listdir(dst)) == sorted(second.shards + ["config.json", "model.safetensors.index.json"])
    loaded = GLMForConditionalGeneration.from_pretrained(str(dst), show_progress=False)
    for name, p in b.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name].numpy(), p.numpy())


# ----- item 2: concurrent convert runs to one new DST

def test_atomic_output_dir_lets_exactly_one_writer_win(tmp_path):
    dst = tmp_path / "dst"
    first, second = atomic_output_dir(str(dst)), atomic_output_dir(str(dst))
    tmp1, tmp2 = first.__enter__(), second.__enter__()  # both found DST absent
    open(os.path.join(tmp1, "one"), "w").close()
    open(os.path.join(tmp2, "two"), "w").close()
    first.__exit__(None, None, None)
    with pytest.raises(GLMError, match="another process filled this directory"):
        second.__exit__(None, None, None)
    assert os.listdir(dst) == ["one"] and leftovers(tmp_path) == []


def test_two_concurrent_converts_to_one_dst(tmp_path):
    sources = {}
    for name, seed in (("a", 1), ("b", 2)):
        sources[name] = str(tmp_path / name)
        tiny_model(seed).save_pretrained(sources[name], safe_serialization=False, max_shard_size="60KB")
    dst = str(tmp_path / "dst")
    runs = {name: subprocess.Popen(CLI + ["convert", src, dst, "--to", "safetensors", "--verify", "--quiet"],
                                   env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name, src in sources.items()}
    results = {name: (run.wait(timeout=120), run.stdout.read(), run.stderr.read()) for name, run in runs.items()}
    winners = [name for name, (code, _, _) in results.items() if code == 0]
    assert len(winners) == 1, results
    loser = "b" if winners == ["a"] else "a"
    code, _, err = results[loser]
    assert code == 2
    print("\nconvert race loser:", one_error_line(err, "convert"))
    assert "not empty" in err or "another process" in err
    assert verify(sources[winners[0]], dst) == len(tiny_model(0).state_dict())
    assert leftovers(tmp_path) == []


# ----- item 4: tokenizer ids beyond the model's vocabulary

def test_added_tokens_beyond_the_vocabulary(tmp_path, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(DEMO, model_dir)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    added = json.loads((model_dir / "added_tokens.json").read_text())
    added["[gMASK]"] = vocab
    (model_dir / "added_tokens.json").write_text(json.dumps(added))
    with pytest.raises(GLMError, match=rf"added_tokens.json: token '\[gMASK\]' has id {vocab}, at or above"):
        paddle_glm.GLMChineseTokenizer.from_pretrained(str(model_dir))
    line = run_main(capsys, "generate", str(model_dir), "x[MASK]")
    assert "added_tokens.json" in line and str(vocab) in line


# ----- item 5: corrupt checkpoints that used to load

def test_tensor_in_two_shards_is_rejected(tmp_path):
    model = tiny_model(3)
    directory = tmp_path / "dup"
    save_plain_pickle_shards(model, directory)
    state = model.state_dict()
    name = "glm.word_embeddings.weight"
    index = json.loads((directory / "model_state.pdparams.index.json").read_text())
    owner = index["weight_map"][name]
    other = next(f for f in sorted(set(index["weight_map"].values())) if f != owner)
    with open(directory / other, "rb") as f:
        shard = pickle.load(f)
    shard.pop(STRUCTURED_NAME_KEY)
    shard[name] = state[name].numpy() + 1  # a second, different copy
    write_plain_pickle(directory / other, shard.items())
    with pytest.raises(CheckpointError, match=rf"'{name}' is in two checkpoint files, .*{owner}.* and .*{other}|"
                                              rf"'{name}' is in two checkpoint files, .*{other}.* and .*{owner}"):
        GLMForConditionalGeneration.from_pretrained(str(directory), show_progress=False)


def _overlapping_safetensors(directory) -> str:
    """A model.safetensors whose header gives one tensor the data offsets of another of the same size."""
    model = tiny_model(4)
    model.save_pretrained(str(directory))
    path = os.path.join(directory, "model.safetensors")
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        data = f.read()
    a, b = "glm.transformer.layers.0.attention.dense.weight", "glm.transformer.layers.1.attention.dense.weight"
    header[b]["data_offsets"] = header[a]["data_offsets"]
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + data)
    return path


def test_overlapping_safetensors_offsets_are_rejected(tmp_path, capsys):
    src = tmp_path / "src"
    path = _overlapping_safetensors(src)
    safetensors = pytest.importorskip("safetensors")
    with pytest.raises(Exception, match="offset"):  # the reference library refuses it too
        safetensors.safe_open(path, "np")
    expected = r"model.safetensors: corrupt safetensors header: tensors .*layers.0.attention.dense.weight.* and " \
               r".*layers.1.attention.dense.weight.* overlap"
    with pytest.raises(CheckpointError, match=expected):
        GLMForConditionalGeneration.from_pretrained(str(src), show_progress=False)
    for argv in (["info", str(src)], ["convert", str(src), str(tmp_path / "out"), "--to", "pdparams", "--verify"]):
        line = run_main(capsys, *argv)
        assert "overlap" in line and "model.safetensors" in line
    assert not os.path.exists(tmp_path / "out") and leftovers(tmp_path) == []


@pytest.mark.parametrize("corruption", ["gap", "wrong size"])
def test_safetensors_offset_checks_agree_with_the_library(tmp_path, corruption):
    safetensors = pytest.importorskip("safetensors")
    path = str(tmp_path / "model.safetensors")
    write_safetensors(path, [("a", np.ones(4, np.float32)), ("b", np.ones(2, np.float32))])
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        data = f.read()
    if corruption == "gap":
        header["b"]["data_offsets"] = [20, 28]
        data += b"\0" * 4
    else:
        header["b"]["shape"] = [3]
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + data)
    with pytest.raises(safetensors.SafetensorError):
        safetensors.safe_open(path, "np")
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt safetensors header: .*'b'"):
        find_checkpoint(str(tmp_path)).specs("model.safetensors")


# ----- item 6: a DST that is a symlink

@pytest.mark.parametrize("overwrite", [False, True], ids=["empty target", "overwrite"])
def test_symlink_dst_writes_into_the_target(tmp_path, overwrite):
    src = tmp_path / "src"
    tiny_model(5).save_pretrained(str(src), safe_serialization=False)
    target, link = tmp_path / "target", tmp_path / "link"
    target.mkdir()
    if overwrite:
        (target / "old-file").write_text("old")
    link.symlink_to(target)
    convert(str(src), str(link), to="safetensors", overwrite=overwrite, verify=True, quiet=True)
    assert os.path.islink(link) and os.readlink(link) == str(target)
    assert "model.safetensors" in os.listdir(target) and "old-file" not in os.listdir(target)
    assert sorted(os.listdir(tmp_path)) == ["link", "src", "target"]  # no .old link, no real dir beside the link
    tiny_model(6).save_pretrained(str(link))  # save_pretrained into the link: the target changes, the link stays
    assert os.path.islink(link) and find_checkpoint(str(target)).index_file is not None


# ----- item 7: no leftovers on signals and failures

def _big_source(directory) -> None:
    """32 MB of GLM-named tensors in 16 pdparams shards: a conversion that takes a moment."""
    names = [f"transformer.layers.{i}.mlp.dense_h_to_4h.bias" for i in range(16)]
    writer = ShardedWriter(str(directory), "pdparams", [(n, 2**21) for n in names], 2**21)
    os.makedirs(directory)
    rng = np.random.default_rng(0)
    for name in names:
        writer.add(name, rng.standard_normal(2**19).astype(np.float32))
    writer.finish()


@pytest.mark.parametrize("overwrite", [False, True], ids=["new dst", "overwrite"])
def test_sigterm_during_convert_leaves_nothing(tmp_path, overwrite):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _big_source(src)
    if overwrite:
        dst.mkdir()
        (dst / "keep").write_text("the old output")
    command = CLI + ["convert", str(src), str(dst), "--to", "safetensors", "--from-layout", "paddle",
                     "--max-shard-size", "2MB", "--verify", "--quiet"] + (["--overwrite"] if overwrite else [])
    run = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and run.poll() is None:  # midway: the temporary DST holds a shard
        tmp = [n for n in os.listdir(tmp_path) if n.startswith(".dst.tmp-")]
        if tmp and any(n.endswith(".safetensors") for n in os.listdir(tmp_path / tmp[0])):
            break
        time.sleep(0.001)
    run.send_signal(signal.SIGSTOP)  # hold it midway, whatever the machine's speed
    assert run.poll() is None, "the conversion finished before it could be interrupted"
    run.send_signal(signal.SIGTERM)
    run.send_signal(signal.SIGCONT)
    code = run.wait(timeout=60)
    err = run.stderr.read()
    assert code == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "stopped by SIGTERM" in err
    assert leftovers(tmp_path) == []
    assert os.listdir(dst) == ["keep"] if overwrite else not os.path.exists(dst)


def test_failed_overwrite_leaves_dst_and_no_leftovers(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    tiny_model(7).save_pretrained(str(src), max_shard_size="60KB")
    shard = sorted(find_checkpoint(str(src)).shards)[-1]
    with open(src / shard, "r+b") as f:
        f.truncate(100)  # a corrupt source: the conversion fails midway
    dst.mkdir()
    (dst / "keep").write_text("the old output")
    line = run_main(capsys, "convert", str(src), str(dst), "--to", "pdparams", "--overwrite")
    assert shard in line
    assert os.listdir(dst) == ["keep"] and leftovers(tmp_path) == []


# ----- item 9: one line, naming the culprit, where a traceback used to be

def _demo_copy(tmp_path, **config_changes):
    model_dir = tmp_path / "model"
    shutil.copytree(DEMO, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(config_changes)
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir


@pytest.mark.parametrize("field,value", [
    ("attention_scale", "1.0"), ("layernorm_epsilon", "1e-5"), ("hidden_size", "1024"),
    ("bad_words_id", "50009"), ("block_position_encoding", "false"), ("output_dropout_prob", 1.5),
])
def test_config_field_of_the_wrong_type(tmp_path, capsys, field, value):
    model_dir = _demo_copy(tmp_path, **{field: value})
    for command in ("info", "generate"):
        argv = [command, str(model_dir)] + (["x[MASK]"] if command == "generate" else [])
        line = run_main(capsys, *argv)
        assert "config.json" in line and f"'{field}'" in line, line


def test_config_not_utf8(tmp_path, capsys):
    model_dir = _demo_copy(tmp_path)
    (model_dir / "config.json").write_bytes(b'{"num_layers": 2, "note": "\xff"}')
    line = run_main(capsys, "info", str(model_dir))
    assert "config.json: not UTF-8" in line


def test_index_value_not_a_string(tmp_path, capsys):
    model_dir = _demo_copy(tmp_path)
    index = json.loads((model_dir / "model_state.pdparams.index.json").read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = 1
    (model_dir / "model_state.pdparams.index.json").write_text(json.dumps(index))
    line = run_main(capsys, "generate", str(model_dir), "x[MASK]")
    assert "model_state.pdparams.index.json" in line and name in line


def test_empty_sentencepiece_file(tmp_path, capsys):
    model_dir = _demo_copy(tmp_path)
    (model_dir / "cog-pretrain.model").write_bytes(b"")
    line = run_main(capsys, "generate", str(model_dir), "x[MASK]")
    assert "cog-pretrain.model: empty sentencepiece model" in line


def test_text_that_is_not_utf8(tmp_path, capsys):
    model_dir = _demo_copy(tmp_path)
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes("今天天气".encode("gbk") + b"[MASK]")
    line = run_main(capsys, "generate", str(model_dir), "--file", str(prompt))
    assert f"--file {prompt} is not valid UTF-8" in line
    undecodable_arg = os.fsdecode(b"\xff[MASK]")  # what Python makes of a non-UTF-8 argv byte
    code = main(["generate", str(model_dir), undecodable_arg])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "argument 3" in err and "not valid UTF-8" in err, err
    stdin = subprocess.run(CLI + ["generate", str(model_dir), "--max-new-tokens", "2"], env=ENV,
                           input=b"\xed\xb2\x80 [MASK]\n", capture_output=True, timeout=120)  # a lone surrogate
    err = stdin.stderr.decode()
    assert stdin.returncode == 2 and "Traceback" not in err, err  # status lines, then the error
    assert err.splitlines()[-1].startswith("paddle-glm generate: error: standard input is not valid UTF-8"), err


def test_unreadable_shard(tmp_path, capsys, monkeypatch):
    model_dir = _demo_copy(tmp_path)
    shard = str(model_dir / sorted(find_checkpoint(str(model_dir)).shards)[0])
    if os.geteuid() != 0:
        os.chmod(shard, 0)
    else:  # root reads any file: make the open fail as it does for other users
        real_open = open

        def denying_open(path, *args, **kwargs):
            if os.fspath(path) == shard:
                raise PermissionError(13, "Permission denied", shard)
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr("builtins.open", denying_open)
    line = run_main(capsys, "generate", str(model_dir), "x[MASK]")
    assert f"{shard}: cannot read it (Permission denied)" in line


def test_read_only_dst_parent(tmp_path, capsys):
    src = tmp_path / "src"
    tiny_model(8).save_pretrained(str(src))
    if os.geteuid() != 0:
        parent = tmp_path / "read-only"
        parent.mkdir()
        os.chmod(parent, 0o555)
    else:  # root writes anywhere but in the kernel's own directories
        parent = "/sys/kernel"
        if not os.path.isdir(parent):
            pytest.skip("no read-only directory for root here")
    line = run_main(capsys, "convert", str(src), os.path.join(parent, "dst"), "--to", "pdparams")
    assert f"{parent}: cannot write in this directory" in line
    with pytest.raises(GLMError, match=f"{parent}: cannot write in this directory"):
        tiny_model(8).save_pretrained(os.path.join(parent, "dst"))


def test_info_on_an_int32_tensor(tmp_path, capsys):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    GLMConfig(**TINY_A).save_pretrained(str(model_dir))
    with open(model_dir / "model.safetensors", "wb") as f:
        header = {"step": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}}
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        f.write(struct.pack("<Q", len(blob)) + blob + b"\0" * 4)
    line = run_main(capsys, "info", str(model_dir))
    assert "model.safetensors: tensor 'step'" in line and "int32" in line


def test_info_on_an_empty_config_says_what_is_defaulted(tmp_path, capsys):
    model_dir = _demo_copy(tmp_path)
    (model_dir / "config.json").write_text("{}")
    assert main(["info", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "does not set num_layers, hidden_size, num_attention_heads, vocab_size, max_sequence_length, " \
           "block_position_encoding" in out and "defaults, not facts" in out
    complete = _demo_copy(tmp_path / "complete")
    assert main(["info", str(complete)]) == 0
    assert "defaults" not in capsys.readouterr().out


def test_first_save_beside_other_files_keeps_paddlenlp_names(tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "cog-pretrain.model").write_bytes(b"a tokenizer saved first")
    tiny_model(1).save_pretrained(str(dst))
    assert sorted(os.listdir(dst)) == ["cog-pretrain.model", "config.json", "model.safetensors"]
