"""Loading and saving checkpoints in PaddleNLP's formats, with PaddleNLP itself as producer and consumer."""
import json
import os
import pickle
import re

import numpy as np
import paddle
import pytest

from conftest import NO_DROPOUT, TINY_A, TINY_B, generation_batch, logits_of, paddlenlp_model, random_model

import paddle_glm
from paddle_glm import CheckpointError, GLMError, GLMForConditionalGeneration, GLMModel
from paddle_glm.checkpoint.dtypes import bf16_to_float32


@pytest.fixture(scope="module")
def reference():
    return paddlenlp_model(TINY_A, seed=7)


@pytest.fixture(scope="module")
def batch():
    return generation_batch(TINY_A, lengths=(9, 6), mask_at=(2, 5))


def _paddlenlp_save(model, directory, safe, shard="30KB"):
    model.save_pretrained(str(directory), max_shard_size=shard, safe_serialization=safe)
    return directory


@pytest.mark.parametrize("safe", [False, True], ids=["pdparams", "safetensors"])
def test_load_what_paddlenlp_wrote(tmp_path, reference, batch, safe):
    directory = _paddlenlp_save(reference, tmp_path / "ckpt", safe)
    index = "model.safetensors.index.json" if safe else "model_state.pdparams.index.json"
    assert os.path.isfile(directory / index)  # really sharded
    ours = GLMForConditionalGeneration.from_pretrained(str(directory))
    np.testing.assert_allclose(logits_of(ours, *batch), logits_of(reference, *batch), atol=1e-5)


@pytest.mark.parametrize("safe", [False, True], ids=["pdparams", "safetensors"])
def test_paddlenlp_loads_what_we_wrote(tmp_path, reference, batch, safe):
    from paddlenlp.transformers import GLMForConditionalGeneration as PaddleNLPGLM

    ours = GLMForConditionalGeneration.from_pretrained(str(_paddlenlp_save(reference, tmp_path / "src", True)))
    ours.save_pretrained(str(tmp_path / "out"), safe_serialization=safe, max_shard_size="30KB")
    theirs = PaddleNLPGLM.from_pretrained(str(tmp_path / "out"), **NO_DROPOUT)
    theirs.eval()
    np.testing.assert_allclose(logits_of(theirs, *batch), logits_of(ours, *batch), atol=1e-5)


@pytest.mark.parametrize("safe", [False, True], ids=["pdparams", "safetensors"])
def test_file_names_and_index_match_paddlenlp(tmp_path, reference, safe):
    _paddlenlp_save(reference, tmp_path / "theirs", safe, shard="60KB")
    ours = GLMForConditionalGeneration.from_pretrained(str(tmp_path / "theirs"))
    ours.save_pretrained(str(tmp_path / "ours"), safe_serialization=safe, max_shard_size="60KB")
    weights = lambda d: sorted(n for n in os.listdir(d) if n.startswith("model"))  # noqa: E731
    assert weights(tmp_path / "ours") == weights(tmp_path / "theirs")
    index = "model.safetensors.index.json" if safe else "model_state.pdparams.index.json"
    read = lambda d: json.loads((d / index).read_text())  # noqa: E731
    assert read(tmp_path / "ours") == read(tmp_path / "theirs")


def test_prefixless_keys(tmp_path, batch):
    base = paddlenlp_model(TINY_A, seed=8, cls_name="GLMModel")  # saves names without "glm."
    base.save_pretrained(str(tmp_path / "base"), max_shard_size="40KB", safe_serialization=False)
    keys = json.loads((tmp_path / "base" / "model_state.pdparams.index.json").read_text())["weight_map"]
    assert not any(k.startswith("glm.") for k in keys)
    ours = GLMForConditionalGeneration.from_pretrained(str(tmp_path / "base"))
    np.testing.assert_allclose(logits_of(ours, *batch), logits_of(base, *batch), atol=1e-5)
    ours_base = GLMModel.from_pretrained(str(tmp_path / "base"))
    np.testing.assert_allclose(logits_of(ours_base, *batch), logits_of(base, *batch), atol=1e-5)


@pytest.mark.parametrize("safe", [False, True], ids=["pdparams", "safetensors"])
def test_bf16_shards_load_as_exact_float32(tmp_path, safe):
    ref = paddlenlp_model(TINY_B, seed=9)
    ref.to(dtype="bfloat16")
    ref.save_pretrained(str(tmp_path / "bf16"), max_shard_size="20KB", safe_serialization=safe)
    ours = GLMForConditionalGeneration.from_pretrained(str(tmp_path / "bf16"), dtype="float32")
    theirs = ref.state_dict()
    for name, p in ours.state_dict().items():
        bits = theirs[name].view(paddle.uint16).numpy() if hasattr(theirs[name], "view") else theirs[name].numpy()
        assert bits.dtype == np.uint16
        np.testing.assert_array_equal(p.numpy(), bf16_to_float32(bits), err_msg=name)


# ---- errors -------------------------------------------------------------------------------------

# The error cases below damage checkpoints that our own writer made (its files equal PaddleNLP's:
# test_file_names_and_index_match_paddlenlp), so they run without PaddleNLP.
@pytest.fixture(scope="module")
def own():
    return random_model(TINY_A, seed=7)


def _own_save(model, directory, safe):
    model.save_pretrained(str(directory), max_shard_size="30KB", safe_serialization=safe)
    return directory


@pytest.fixture()
def pdparams_dir(tmp_path, own):
    return _own_save(own, tmp_path / "pd", False)


@pytest.fixture()
def safetensors_dir(tmp_path, own):
    return _own_save(own, tmp_path / "st", True)


def _shard_of(directory, tensor):
    for index in ("model_state.pdparams.index.json", "model.safetensors.index.json"):
        if (directory / index).exists():
            return directory / json.loads((directory / index).read_text())["weight_map"][tensor]


def _drop_tensor(directory, name, from_index=True):
    """Remove a tensor from its pdparams shard (and from the index, for a consistent checkpoint)."""
    shard = _shard_of(directory, name)
    state = pickle.loads(shard.read_bytes())
    del state[name]
    shard.write_bytes(pickle.dumps(state, protocol=4))
    if from_index:
        index_path = directory / "model_state.pdparams.index.json"
        index = json.loads(index_path.read_text())
        del index["weight_map"][name]
        index_path.write_text(json.dumps(index))
    return shard


def test_missing_key(pdparams_dir):
    _drop_tensor(pdparams_dir, "glm.transformer.layers.1.mlp.dense_4h_to_h.bias")
    with pytest.raises(CheckpointError, match="lacks 1 model tensor.*transformer.layers.1.mlp.dense_4h_to_h.bias"):
        GLMForConditionalGeneration.from_pretrained(str(pdparams_dir))


def test_missing_key_non_strict_warns(pdparams_dir):
    _drop_tensor(pdparams_dir, "glm.transformer.layers.1.mlp.dense_4h_to_h.bias")
    with pytest.warns(UserWarning, match="dense_4h_to_h.bias"):
        model = GLMForConditionalGeneration.from_pretrained(str(pdparams_dir), strict=False)
    assert model.glm.transformer.layers[1].mlp.dense_4h_to_h.bias.shape == [64]


def test_shard_lacking_what_the_index_lists(pdparams_dir):
    shard = _drop_tensor(pdparams_dir, "glm.transformer.layers.1.mlp.dense_4h_to_h.bias", from_index=False)
    with pytest.raises(CheckpointError, match=f"{shard.name}.*index.*dense_4h_to_h.bias"):
        GLMForConditionalGeneration.from_pretrained(str(pdparams_dir))


def test_shape_mismatch_names_tensor_and_shapes(pdparams_dir):
    config = json.loads((pdparams_dir / "config.json").read_text())
    config["max_sequence_length"] = 100
    (pdparams_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as e:
        GLMForConditionalGeneration.from_pretrained(str(pdparams_dir))
    msg = str(e.value)
    assert "position_embeddings.weight" in msg and "[129, 64]" in msg and "[101, 64]" in msg and ".pdparams" in msg


@pytest.mark.parametrize("fmt", ["pd", "st"])
def test_missing_shard(request, fmt):
    directory = request.getfixturevalue("pdparams_dir" if fmt == "pd" else "safetensors_dir")
    shard = _shard_of(directory, "glm.transformer.final_layernorm.bias")
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        GLMForConditionalGeneration.from_pretrained(str(directory))


@pytest.mark.parametrize("fmt", ["pd", "st"])
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_truncated_or_corrupt_shard(request, fmt, damage):
    directory = request.getfixturevalue("pdparams_dir" if fmt == "pd" else "safetensors_dir")
    shard = _shard_of(directory, "glm.transformer.layers.0.attention.query_key_value.weight")
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x80\x04garbage" + os.urandom(64))
    with pytest.raises(CheckpointError, match=shard.name):
        GLMForConditionalGeneration.from_pretrained(str(directory))


def test_malicious_pdparams_is_rejected_and_never_runs(tmp_path, pdparams_dir):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    shard = _shard_of(pdparams_dir, "glm.word_embeddings.weight")
    state = pickle.loads(shard.read_bytes())
    state["glm.word_embeddings.weight"] = Payload()
    shard.write_bytes(pickle.dumps(state, protocol=4))
    with pytest.raises(CheckpointError) as e:
        GLMForConditionalGeneration.from_pretrained(str(pdparams_dir))
    assert shard.name in str(e.value) and "system" in str(e.value)
    assert not marker.exists()


def test_unexpected_keys_warn(pdparams_dir):
    shard = _shard_of(pdparams_dir, "glm.word_embeddings.weight")
    state = pickle.loads(shard.read_bytes())
    state["glm.extra_head.weight"] = np.zeros((2, 2), dtype="float32")
    shard.write_bytes(pickle.dumps(state, protocol=4))
    with pytest.warns(UserWarning, match="extra_head"):
        GLMForConditionalGeneration.from_pretrained(str(pdparams_dir))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_on_cpu_is_refused_up_front(pdparams_dir, dtype, monkeypatch):
    import paddle_glm.checkpoint.loader as loader

    monkeypatch.setattr(loader, "find_checkpoint", lambda *a: pytest.fail("weights were touched"))
    with pytest.raises(ValueError, match=f"{dtype} needs a CUDA GPU"):
        GLMForConditionalGeneration.from_pretrained(str(pdparams_dir), dtype=dtype)


def test_hub_name_and_missing_dir(tmp_path):
    with pytest.raises(GLMError, match="does not download"):
        GLMForConditionalGeneration.from_pretrained("THUDM/glm-10b-chinese")
    with pytest.raises(GLMError, match="no such model directory"):
        GLMForConditionalGeneration.from_pretrained(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(GLMError, match="config.json"):
        GLMForConditionalGeneration.from_pretrained(str(tmp_path / "empty"))


def test_no_checkpoint_in_dir(tmp_path):
    paddle_glm.GLMConfig(**TINY_A).save_pretrained(str(tmp_path))
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        GLMForConditionalGeneration.from_pretrained(str(tmp_path))


# ---- saving -------------------------------------------------------------------------------------

def test_save_is_atomic(tmp_path, own, monkeypatch):
    ours = own  # any model: what matters here is the files
    target = tmp_path / "out"
    ours.save_pretrained(str(target), max_shard_size="30KB")
    (target / "cog-pretrain.model").write_bytes(b"tokenizer")
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    import paddle_glm.checkpoint.writer as writer
    real = writer.save_pdparams
    calls = []

    def crash_after_one(path, tensors):
        calls.append(path)
        if len(calls) > 1:
            raise OSError("disk full")
        real(path, tensors)

    monkeypatch.setattr(writer, "save_pdparams", crash_after_one)
    with pytest.raises(OSError, match="disk full"):
        ours.save_pretrained(str(target), safe_serialization=False, max_shard_size="30KB")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # untouched
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temp dir left


def test_save_keeps_other_files_and_drops_stale_shards(tmp_path, own):
    ours = own  # any model: what matters here is the files
    target = tmp_path / "out"
    ours.save_pretrained(str(target), max_shard_size="30KB")
    (target / "cog-pretrain.model").write_bytes(b"tokenizer")
    ours.save_pretrained(str(target), safe_serialization=False, max_shard_size="10GB")
    names = sorted(os.listdir(target))  # in an existing directory: a new shard name, and an index (the switch)
    assert names[:2] == ["cog-pretrain.model", "config.json"] and names[3] == "model_state.pdparams.index.json"
    assert re.fullmatch(r"model_state-00001-of-00001-[0-9a-f]{8}\.pdparams", names[2]), names


@pytest.mark.parametrize("size,expected", [("60KB", 60_000), ("500MB", 500_000_000), ("2GB", 2 * 10**9),
                                           ("1GiB", 2**30), (1234, 1234)])
def test_parse_size(size, expected):
    from paddle_glm.io_utils import parse_size

    assert parse_size(size) == expected


def test_parse_size_rejects_garbage():
    from paddle_glm.io_utils import parse_size

    with pytest.raises(GLMError, match="max_shard_size"):
        parse_size("lots")


def test_save_into_a_busy_directory_touches_only_checkpoint_files(tmp_path, own, monkeypatch):
    ours = own  # any model: what matters here is the files
    target = tmp_path / "busy"
    (tmp_path / "shared").mkdir()
    target.mkdir()
    (target / "link").symlink_to("../shared")
    (target / "notes.txt").write_text("keep me")
    (target / "pytorch_model.bin").write_bytes(b"another framework's checkpoint")
    ours.save_pretrained(str(target), safe_serialization=False, max_shard_size="30KB")
    monkeypatch.chdir(target)
    ours.save_pretrained(".", max_shard_size="40KB")  # replaces the pdparams checkpoint with safetensors
    assert os.getcwd() == str(target)
    assert (target / "link").is_symlink() and (target / "notes.txt").read_text() == "keep me"
    assert (target / "pytorch_model.bin").read_bytes() == b"another framework's checkpoint"
    names = os.listdir(target)
    assert not any(n.endswith(".pdparams") or n.startswith("model_state") or n.startswith(".save-tmp")
                   for n in names)
    again = GLMForConditionalGeneration.from_pretrained(str(target))
    for name, p in again.state_dict().items():
        np.testing.assert_array_equal(p.numpy(), ours.state_dict()[name].numpy())


@pytest.mark.parametrize("header", [b"[1, 2]", b'{"w": {"dtype": "F32", "shape": [2]}}',
                                    b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}'])
def test_malformed_safetensors_header_names_the_file(tmp_path, header):
    import struct

    from paddle_glm.checkpoint.safetensors_format import SafetensorsFile

    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt safetensors header"):
        SafetensorsFile(str(path))
