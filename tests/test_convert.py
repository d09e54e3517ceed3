"""The checkpoint converter against real producers and independent readers (issue 4 acceptance)."""
import json
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest

from conftest import NO_DROPOUT, TINY_A, generation_batch, logits_of, random_model
from convert_helpers import (
    TOKENIZER_FILES,
    assert_bit_equal,
    checksums,
    paddle_state,
    read_dir,
    save_paddlenlp,
    save_torch_dir,
    torch_layout,
    weight_files,
)

import paddle_glm
from paddle_glm import CheckpointError, GLMError
from paddle_glm.checkpoint.writer import ShardedWriter
from paddle_glm.conversion import convert, verify

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def fp32_dir(tmp_path_factory):
    """Sharded fp32 pdparams + tokenizer files written by our save_pretrained (the same files as
    PaddleNLP's, see test_checkpoint_loading.py), so the converter's own behaviour is tested without
    PaddleNLP: (directory, model, state). Tests about PaddleNLP's files use ``save_paddlenlp``."""
    directory = tmp_path_factory.mktemp("ours") / "fp32"
    model = random_model(TINY_A)
    model.save_pretrained(str(directory), safe_serialization=False, max_shard_size="30KB")
    for name, data in TOKENIZER_FILES.items():
        (directory / name).write_bytes(data)
    return directory, model, paddle_state(model)


@pytest.fixture(scope="module")
def batch():
    return generation_batch(TINY_A, lengths=(9, 6), mask_at=(2, 5))


def _listing(path):
    return sorted(os.listdir(path))


# ---- 1. round trip through PaddleNLP's own files ------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_pdparams_safetensors_pdparams_is_bit_exact(tmp_path, dtype):
    src = tmp_path / "src"
    _, state = save_paddlenlp(src, dtype=dtype)
    assert len(weight_files(src)) > 5 and {a.dtype for a in state.values()} == {
        np.dtype({"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[dtype])}

    report = convert(str(src), str(tmp_path / "st"), to="safetensors", max_shard_size="60KB", quiet=True)
    assert report.tensors == len(state) and report.bytes == sum(a.nbytes for a in state.values())
    assert_bit_equal(read_dir(tmp_path / "st"), state)
    assert "model.safetensors.index.json" in report.files

    convert(str(tmp_path / "st"), str(tmp_path / "back"), to="pdparams", max_shard_size="30KB", quiet=True)
    assert_bit_equal(read_dir(tmp_path / "back"), state)
    # same sharding rule as PaddleNLP: the same file names for the same max_shard_size
    assert weight_files(tmp_path / "back") == weight_files(src)
    for name, data in TOKENIZER_FILES.items():
        assert (tmp_path / "back" / name).read_bytes() == data
    for name in ("config.json", "generation_config.json"):
        assert (tmp_path / "back" / name).read_bytes() == (src / name).read_bytes()


@pytest.mark.parametrize("to", ["safetensors", "pdparams"])
def test_paddlenlp_loads_converted_output(tmp_path, batch, to):
    src = tmp_path / "src"
    model, _ = save_paddlenlp(src)
    from paddlenlp.transformers import GLMForConditionalGeneration as PaddleNLPGLM

    convert(str(src), str(tmp_path / "out"), to=to, max_shard_size="50KB", quiet=True)
    theirs = PaddleNLPGLM.from_pretrained(str(tmp_path / "out"), **NO_DROPOUT)
    theirs.eval()
    np.testing.assert_array_equal(logits_of(theirs, *batch), logits_of(model, *batch))


# ---- 2. from PyTorch / HF files -----------------------------------------------------------------

@pytest.mark.parametrize("kind,shards,dtype", [("bin", 1, "float32"), ("bin", 3, "float32"),
                                               ("safetensors", 3, "float32"), ("safetensors", 2, "bfloat16")])
def test_from_torch_layout(tmp_path, fp32_dir, batch, kind, shards, dtype):
    src_paddle, _, state = fp32_dir
    if dtype == "bfloat16":
        state = paddle_state(random_model(TINY_A).to(dtype="bfloat16"))
    src = tmp_path / "torch"
    save_torch_dir(src, state, (src_paddle / "config.json").read_text(), kind, shards)

    for to in ("pdparams", "safetensors"):
        dst = tmp_path / f"paddle-{to}"
        report = convert(str(src), str(dst), to=to, max_shard_size="40KB", quiet=True)
        assert report.source_layout == "torch"  # auto-detected (from shapes; for safetensors also metadata)
        assert_bit_equal(read_dir(dst), state)  # the transposed torch tensors are the Paddle originals

    ours_src = paddle_glm.GLMForConditionalGeneration.from_pretrained(str(src), show_progress=False)
    ours_dst = paddle_glm.GLMForConditionalGeneration.from_pretrained(str(dst), show_progress=False)
    np.testing.assert_array_equal(logits_of(ours_dst, *batch), logits_of(ours_src, *batch))


# ---- 3. to the torch layout, casts, --verify ----------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_to_torch_layout_reads_back_in_torch(tmp_path, dtype):
    torch = pytest.importorskip("torch", reason="the independent reader here is torch")
    from safetensors import safe_open
    from safetensors.torch import load_file

    src = tmp_path / "src"
    _, state = save_paddlenlp(src, dtype=dtype, safe=True)
    convert(str(src), str(tmp_path / "torch"), to="safetensors", to_layout="torch", max_shard_size="70KB",
            quiet=True)
    expected = torch_layout(state)
    files = weight_files(tmp_path / "torch")
    loaded = {}
    for file in files:
        loaded.update(load_file(str(tmp_path / "torch" / file)))
        with safe_open(str(tmp_path / "torch" / file), framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
    assert sorted(loaded) == sorted(expected)
    for name, want in expected.items():
        got = loaded[name]
        if dtype == "bfloat16":
            assert got.dtype == torch.bfloat16
            got = got.view(torch.int16).numpy().view(np.uint16)
        else:
            got = got.numpy()
        assert got.shape == want.shape and got.tobytes() == want.tobytes(), name

    # and back, detecting the torch layout from the shapes of a pdparams written in it
    convert(str(tmp_path / "torch"), str(tmp_path / "torch-pd"), to="pdparams", to_layout="torch", quiet=True)
    report = convert(str(tmp_path / "torch-pd"), str(tmp_path / "paddle"), to="pdparams", quiet=True)
    assert report.source_layout == "torch"
    assert_bit_equal(read_dir(tmp_path / "paddle"), state)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dtype_cast_is_exact(tmp_path, fp32_dir, dtype):
    torch = pytest.importorskip("torch", reason="torch is the independent float16/bfloat16 caster here")

    src, _, state = fp32_dir
    report = convert(str(src), str(tmp_path / "out"), to="safetensors", dtype=dtype, verify=True, quiet=True)
    assert report.verified
    if dtype == "float16":
        expected = {n: a.astype(np.float16) for n, a in state.items()}
    else:  # torch's round-to-nearest-even cast, as bit patterns
        expected = {n: torch.from_numpy(a).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
                    for n, a in state.items()}
    assert_bit_equal(read_dir(tmp_path / "out"), expected)


def test_verify_passes_on_good_output_and_fails_on_a_corrupted_one(tmp_path, fp32_dir):
    src, _, state = fp32_dir
    dst = tmp_path / "out"
    report = convert(str(src), str(dst), to="safetensors", max_shard_size="60KB", verify=True, quiet=True)
    assert report.verified and verify(str(src), str(dst)) == len(state)

    # flip one byte inside the data of one tensor
    name = "glm.transformer.layers.1.mlp.dense_4h_to_h.weight"
    path = dst / json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"][name]
    raw = bytearray(path.read_bytes())
    header_len = int.from_bytes(raw[:8], "little")
    begin, _ = json.loads(raw[8:8 + header_len])[name]["data_offsets"]
    raw[8 + header_len + begin + 5] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"dense_4h_to_h.weight.*1 of 16384 values differ"):
        verify(str(src), str(dst))
    # verifying against the wrong options fails too
    with pytest.raises(CheckpointError, match="shape"):
        verify(str(src), str(tmp_path / "out"), to_layout="torch")


def test_verify_failure_during_convert_leaves_no_output(tmp_path, fp32_dir, monkeypatch):
    import paddle_glm.checkpoint.writer as writer

    real = writer.write_safetensors

    def flip_one_value(path, tensors, **kwargs):
        tensors = list(tensors)
        if any(n == "glm.transformer.final_layernorm.bias" for n, _ in tensors):
            tensors = [(n, a + np.float32(1e-3) if n.endswith("final_layernorm.bias") else a) for n, a in tensors]
        real(path, tensors, **kwargs)

    monkeypatch.setattr(writer, "write_safetensors", flip_one_value)
    src, _, _ = fp32_dir
    with pytest.raises(CheckpointError, match=r"final_layernorm.bias.*64 of 64 values differ"):
        convert(str(src), str(tmp_path / "out"), to="safetensors", verify=True, quiet=True)
    assert _listing(tmp_path) == []


# ---- 4. refusals and failures -------------------------------------------------------------------

def test_refuses_non_empty_dst_unless_overwrite(tmp_path, fp32_dir):
    src, _, state = fp32_dir
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(GLMError, match="not empty; pass overwrite=True to replace it"):
        convert(str(src), str(dst), to="safetensors", quiet=True)
    assert _listing(dst) == ["keep.txt"]
    convert(str(src), str(dst), to="safetensors", overwrite=True, quiet=True)
    assert "keep.txt" not in _listing(dst)
    assert_bit_equal(read_dir(dst), state)
    assert _listing(tmp_path) == ["out"]


@pytest.mark.parametrize("cut", ["half", "tail"])
@pytest.mark.parametrize("fmt", ["pdparams", "safetensors"])
def test_truncated_source_shard_names_it_and_leaves_nothing(tmp_path, fmt, cut):
    src = tmp_path / "src"
    save_paddlenlp(src, safe=fmt == "safetensors")
    shard = max((src / name for name in weight_files(src)), key=os.path.getsize)  # "half" cuts into array data
    data = shard.read_bytes()
    assert len(data) > 2 * 65536
    shard.write_bytes(data[:len(data) // 2] if cut == "half" else data[:-100])
    before = checksums(src)
    with pytest.raises(CheckpointError, match=f"{shard.name}.*(truncated|corrupt)"):
        convert(str(src), str(tmp_path / "out"), to="pdparams" if fmt == "safetensors" else "safetensors",
                quiet=True)
    assert _listing(tmp_path) == ["src"]  # no DST, no temporary directory
    assert checksums(src) == before


def test_source_is_never_modified(tmp_path, fp32_dir):
    src, _, _ = fp32_dir
    before = checksums(src)
    convert(str(src), str(tmp_path / "a"), to="safetensors", to_layout="torch", dtype="bfloat16", verify=True,
            quiet=True)
    convert(str(src), str(tmp_path / "b"), to="pdparams", max_shard_size="1KB", quiet=True)
    with pytest.raises(GLMError):
        convert(str(src), str(src / "inside"), to="pdparams", quiet=True)
    assert checksums(src) == before


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_dst_must_be_outside_src(tmp_path, fp32_dir, where):
    src, _, _ = fp32_dir
    dst = {"same": src, "inside": src / "out", "parent": src.parent}[where]
    with pytest.raises(GLMError, match="output directory"):
        convert(str(src), str(dst), to="safetensors", overwrite=True, quiet=True)
    assert os.path.isdir(src) and not os.path.exists(src / "out")


def test_ambiguous_layout_asks_for_from_layout(tmp_path, fp32_dir):
    from safetensors.numpy import save_file

    _, _, state = fp32_dir
    src = tmp_path / "src"
    src.mkdir()
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})  # says torch, shapes say paddle
    with pytest.raises(CheckpointError, match="cannot tell the checkpoint layout.*--from-layout"):
        convert(str(src), str(tmp_path / "out"), to="pdparams", quiet=True)
    assert _listing(tmp_path) == ["src"]
    convert(str(src), str(tmp_path / "out"), to="pdparams", from_layout="paddle", quiet=True)
    assert_bit_equal(read_dir(tmp_path / "out"), state)


def test_unknown_tensor_names_are_listed_or_copied_unchanged(tmp_path, fp32_dir):
    from safetensors.numpy import save_file

    _, _, state = fp32_dir
    extra = {"glm.adapter.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
             "lm_head.extra_bias": np.ones(3, dtype=np.float16)}
    src = tmp_path / "src"
    src.mkdir()
    save_file({**state, **extra}, str(src / "model.safetensors"), metadata={"format": "np"})
    with pytest.raises(CheckpointError, match=r"2 tensor name\(s\).*glm.adapter.weight, lm_head.extra_bias.*"
                                              r"--allow-unknown"):
        convert(str(src), str(tmp_path / "out"), to="pdparams", quiet=True)
    convert(str(src), str(tmp_path / "out"), to="pdparams", to_layout="torch", dtype="bfloat16",
            allow_unknown=True, verify=True, quiet=True)
    got = read_dir(tmp_path / "out")
    assert_bit_equal({n: got[n] for n in extra}, extra)  # neither transposed nor cast
    assert got["glm.transformer.layers.0.mlp.dense_h_to_4h.weight"].shape == (256, 64)


def test_numpy_pickled_edge_cases(tmp_path):
    """Arrays pickled by numpy itself: Fortran order, 0-d, empty, above and below the mapping size."""
    import pickle

    rng = np.random.default_rng(0)
    state = {"glm.transformer.layers.0.attention.dense.weight": np.asfortranarray(rng.random((200, 100), np.float32)),
             "glm.transformer.final_layernorm.bias": np.array(1.5, np.float32),
             "glm.transformer.final_layernorm.weight": np.zeros((0,), np.float16),
             "glm.transformer.layers.0.mlp.dense_h_to_4h.weight": rng.random((100, 400), np.float32)}
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "model_state.pdparams", "wb") as f:
        pickle.dump(state, f, protocol=4)
    convert(str(src), str(tmp_path / "out"), to="safetensors", to_layout="torch", quiet=True)
    expected = {n: np.require(a, requirements="C") for n, a in torch_layout(state).items()}
    assert_bit_equal(read_dir(tmp_path / "out"), expected)


def test_streaming_writer_shards_like_the_planned_one(tmp_path, fp32_dir):
    _, _, state = fp32_dir
    planned = [(n, a.nbytes) for n, a in state.items()]
    for sizes, out in ((None, tmp_path / "streamed"), (planned, tmp_path / "planned")):
        out.mkdir()
        writer = ShardedWriter(str(out), "safetensors", sizes, 45_000)
        for name, array in state.items():
            writer.add(name, array)
        writer.finish()
    assert _listing(tmp_path / "streamed") == _listing(tmp_path / "planned")
    for name in _listing(tmp_path / "planned"):
        assert (tmp_path / "streamed" / name).read_bytes() == (tmp_path / "planned" / name).read_bytes()


# ---- 5. command line ----------------------------------------------------------------------------

def test_cli_success_and_one_line_error(tmp_path, fp32_dir):
    src, _, state = fp32_dir
    script = os.path.join(os.path.dirname(sys.executable), "paddle-glm")
    ok = subprocess.run([script, "convert", str(src), str(tmp_path / "out"), "--to", "safetensors",
                         "--max-shard-size", "60KB", "--verify", "--quiet"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert f"{len(state)} tensors" in ok.stdout and "verified" in ok.stdout and " s" in ok.stdout
    assert_bit_equal(read_dir(tmp_path / "out"), state)

    bad = subprocess.run([sys.executable, "-m", "paddle_glm", "convert", str(src), str(tmp_path / "out"),
                          "--to", "pdparams"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("paddle-glm convert: error: ")
    assert "not empty; pass --overwrite to replace it" in bad.stderr and "overwrite=True" not in bad.stderr


def test_converter_scripts_are_thin_entries(tmp_path, fp32_dir, monkeypatch, capsys):
    src, _, state = fp32_dir

    def run(script, *args):
        monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
        with pytest.raises(SystemExit) as done:
            runpy.run_path(os.path.join(REPO, "converters", script), run_name="__main__")
        assert done.value.code == 0

    run("paddle_to_torch.py", src, tmp_path / "torch", "--quiet")
    assert_bit_equal(read_dir(tmp_path / "torch"), torch_layout(state))
    run("torch_to_paddle.py", tmp_path / "torch", tmp_path / "paddle", "--to", "pdparams", "--quiet")
    assert_bit_equal(read_dir(tmp_path / "paddle"), state)
    run("pdparams_to_safetensors.py", tmp_path / "paddle", tmp_path / "st", "--quiet")
    run("safetensors_to_pdparams.py", tmp_path / "st", tmp_path / "pd", "--quiet")
    assert_bit_equal(read_dir(tmp_path / "pd"), state)
    assert "tensors" in capsys.readouterr().out


def test_package_level_convert_is_the_function():
    import paddle_glm
    import paddle_glm.conversion  # noqa: F401  (importing the module must not shadow the function)

    assert paddle_glm.convert is paddle_glm.conversion.convert and callable(paddle_glm.verify)
