"""Checkpoint directories made by the real producers (PaddleNLP, torch.save, the safetensors library),
and independent readers for the converter's output."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
from typing import Dict

import numpy as np
import pytest

from conftest import TINY_A, paddlenlp_model

from paddle_glm.checkpoint.layout import transposes

TOKENIZER_FILES = {"cog-pretrain.model": b"\x00sentencepiece model bytes\xff",
                   "tokenizer_config.json": b'{"tokenizer_class": "GLMChineseTokenizer"}\n',
                   "added_tokens.json": b'{"[gMASK]": 50009}\n'}


def paddle_state(model) -> Dict[str, np.ndarray]:
    """A PaddleNLP model's weights as numpy, bfloat16 as uint16 bits (as paddle.save writes them)."""
    return {name: p.numpy() for name, p in model.state_dict().items()}  # paddle gives bfloat16 as uint16


def torch_layout(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The PyTorch/HF layout of a Paddle-layout state: the table's Linear weights transposed."""
    return {name: np.ascontiguousarray(a.T) if transposes(name) else a for name, a in state.items()}


def save_paddlenlp(directory, dtype: str = "float32", safe: bool = False, shard: str = "30KB", seed: int = 0):
    """PaddleNLP 2.8.1's own save_pretrained of a tiny random GLM (sharded), plus tokenizer files.

    Returns the model's weights as written (``paddle_state`` after the cast)."""
    model = paddlenlp_model(TINY_A, seed=seed)
    if dtype != "float32":
        model = model.to(dtype=dtype)
    model.save_pretrained(str(directory), max_shard_size=shard, safe_serialization=safe)
    for name, data in TOKENIZER_FILES.items():
        (directory / name).write_bytes(data)
    return model, paddle_state(model)


def _torch_tensor(array: np.ndarray):
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.view(torch.bfloat16) if array.dtype == np.uint16 else tensor


def _to_numpy(tensor) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()


def _split(names, parts: int):
    size = -(-len(names) // parts)
    return [names[i:i + size] for i in range(0, len(names), size)]


def save_torch_dir(directory, state: Dict[str, np.ndarray], config_json: str, kind: str, shards: int = 1) -> None:
    """A PyTorch/HF checkpoint in the torch layout: ``kind`` "bin" (torch.save, pytorch_model.bin[.index.json])
    or "safetensors" (safetensors.torch.save_file with metadata {"format": "pt"}, model.safetensors[.index.json])."""
    torch = pytest.importorskip("torch", reason="torch.save is the producer of these files")
    from safetensors.torch import save_file

    directory.mkdir()
    (directory / "config.json").write_text(config_json)
    state = torch_layout(state)
    names = list(state)
    prefix, suffix = ("pytorch_model", ".bin") if kind == "bin" else ("model", ".safetensors")
    groups = _split(names, shards)
    files = [f"{prefix}{suffix}"] if shards == 1 else [
        f"{prefix}-{i:05d}-of-{len(groups):05d}{suffix}" for i in range(1, len(groups) + 1)]
    for file, group in zip(files, groups):
        tensors = {n: _torch_tensor(state[n]) for n in group}
        if kind == "bin":
            torch.save(tensors, directory / file)
        else:
            save_file(tensors, str(directory / file), metadata={"format": "pt"})
    if shards > 1:
        weight_map = {n: f for f, group in zip(files, groups) for n in group}
        index = {"metadata": {"total_size": sum(a.nbytes for a in state.values())}, "weight_map": weight_map}
        (directory / f"{prefix}{suffix}.index.json").write_text(json.dumps(index))


def weight_files(directory):
    """The index (if any) and weight file names of a converted directory, per the independent readers."""
    names = os.listdir(directory)
    for index in ("model.safetensors.index.json", "model_state.pdparams.index.json"):
        if index in names:
            weight_map = json.loads((directory / index).read_text())["weight_map"]
            return sorted(set(weight_map.values()))
    return [n for n in names if n in ("model.safetensors", "model_state.pdparams")]


def read_dir(directory) -> Dict[str, np.ndarray]:
    """Every tensor of a converted directory, read with the safetensors library or plain pickle."""
    from safetensors import safe_open

    tensors = {}
    for file in weight_files(directory):
        path = str(directory / file)
        if file.endswith(".pdparams"):
            with open(path, "rb") as f:
                state = pickle.load(f)
            state.pop("StructuredToParameterName@@", None)
            tensors.update(state)
        else:
            try:  # numpy has no bfloat16: such files are read through torch
                with safe_open(path, framework="np") as f:
                    tensors.update({n: f.get_tensor(n) for n in f.keys()})  # noqa: SIM118 (safe_open has no __iter__)
            except TypeError:
                pytest.importorskip("torch", reason="reading bfloat16 safetensors needs torch")
                with safe_open(path, framework="pt") as f:
                    tensors.update({n: _to_numpy(f.get_tensor(n)) for n in f.keys()})  # noqa: SIM118
    return tensors


def assert_bit_equal(got: Dict[str, np.ndarray], expected: Dict[str, np.ndarray]) -> None:
    """Same names, and each tensor the same dtype, shape and bytes."""
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        have = got[name]
        assert have.dtype == want.dtype and have.shape == want.shape, (name, have.dtype, have.shape, want.shape)
        assert have.tobytes() == want.tobytes(), name


def checksums(directory) -> Dict[str, str]:
    """sha256 and mtime of every file under ``directory``."""
    sums = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
                sums[os.path.relpath(path, directory)] = (digest, os.stat(path).st_mtime_ns)
    return sums
