"""``paddle-glm info``: what a model directory holds, read from config, index and headers (no weights loaded)."""
from __future__ import annotations

import argparse
import os
from collections import Counter

import numpy as np

from ..checkpoint.dtypes import STORAGE, dtype_name
from ..checkpoint.source import find_checkpoint
from ..config import GLMConfig
from ..errors import CheckpointError, GLMError
from ..io_utils import require_local_dir
from ..quantization.settings import QuantSettings, requested_settings
from .common import format_bytes, format_count


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "info", help="describe a model directory without loading its weights",
        description="Print the config, the parameter count, the checkpoint files with their format and dtype, "
                    "and the memory the weights need in each dtype. Reads config.json, the index and file headers "
                    "only.")
    parser.add_argument("model_dir", metavar="MODEL_DIR")
    parser.add_argument("--tensor-parallel", type=int, default=1, metavar="N",
                        help="also print the memory per rank when the model is split over N processes")
    parser.add_argument("--adapter", metavar="DIR", help="also describe this LoRA adapter")
    parser.add_argument("--quant-type", metavar="TYPE", help="also estimate the memory of the weights quantized with "
                        "TYPE (weight_only_int8 or weight_only_int4, int4 in groups of 64)")
    parser.set_defaults(run=run)


def parameter_count(config: GLMConfig) -> int:
    """Exact parameter count of GLMForConditionalGeneration for ``config`` (built lazily: no memory)."""
    import paddle

    from ..model import GLMForConditionalGeneration

    with paddle.LazyGuard():
        model = GLMForConditionalGeneration(config)
    return sum(int(np.prod(p.shape)) for p in model.parameters())


def checkpoint_dtype(source) -> str:
    """The weights' dtype, from headers (safetensors) or from scanning the smallest shard (pdparams)."""
    if source.format == "torch":
        return "unknown (PyTorch .bin; convert to read it without torch)"
    shard = min(source.shards, key=lambda s: os.path.getsize(source.path(s)))
    found = Counter()
    for name, spec in source.specs(shard).items():
        try:
            found[spec.dtype.name if spec.dtype.kind in "iu" and spec.dtype.itemsize == 1  # quantized weights
                  else dtype_name(np.empty(0, dtype=spec.dtype))] += 1
        except GLMError as e:
            raise CheckpointError(f"{source.path(shard)}: tensor {name!r}: {e}") from None
    return ", ".join(sorted(found))


def print_kv_cache_size(config: GLMConfig) -> None:
    """The KV cache of one sequence of ``max_sequence_length`` tokens, in each dtype's size."""
    from ..kv_cache import sequence_bytes

    length = config.max_sequence_length
    sizes = {dtype: format_bytes(sequence_bytes(config.num_layers, config.hidden_size, length, itemsize))
             for dtype, itemsize in (("float32", 4), ("float16/bfloat16", 2))}
    print(f"KV cache per sequence of {length} tokens: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))


def print_memory_per_rank(config: GLMConfig, world: int) -> None:
    """``--tensor-parallel N``: what one of N ranks holds (weights, and the KV cache of one sequence)."""
    from ..kv_cache import sequence_bytes
    from ..model import GLMForConditionalGeneration
    from ..parallel import check_split
    from ..tensor_parallel import rank_parameters

    check_split(config, world)
    params = rank_parameters(GLMForConditionalGeneration, config, world)
    kv = sequence_bytes(config.num_layers, config.hidden_size, config.max_sequence_length, 2) // world
    print(f"tensor parallel over {world} ranks: {params:,} parameters per rank; weights per rank float32 "
          f"{format_bytes(params * 4)}, float16/bfloat16 {format_bytes(params * 2)}; KV cache per sequence of "
          f"{config.max_sequence_length} tokens per rank float16/bfloat16 {format_bytes(kv)}")


def describe_quantization(settings: QuantSettings) -> str:
    """``weight_only_int4 (groups of 64, embeddings quantized)``."""
    groups = f"groups of {settings.group_size}, " if settings.group_size > 0 else "per channel, "
    embeddings = "embeddings quantized" if settings.quantize_embeddings else "embeddings in full precision"
    return f"{settings.quant_type} ({groups}{embeddings})"


def quantized_size(config: GLMConfig, settings: QuantSettings) -> int:
    """Bytes of the model's weights quantized with ``settings``."""
    from ..quantization.rewrite import quantized_model_bytes

    return quantized_model_bytes(config, settings)


def print_weights_in_memory(config: GLMConfig, params: int, args: argparse.Namespace) -> None:
    """The weights' size in memory: per float dtype, or quantized (the checkpoint's, and --quant-type's estimate)."""
    quantized = QuantSettings.from_config(config, os.path.join(args.model_dir, "config.json"))
    if quantized is None:
        print("weights in memory: " + ", ".join(f"{name} {format_bytes(params * storage.itemsize)}"
                                                for name, storage in STORAGE.items()))
    else:
        print(f"quantization: {describe_quantization(quantized)}; weights in memory "
              f"{format_bytes(quantized_size(config, quantized))} (float parts in float32)")
    if args.quant_type:
        estimate = requested_settings(args.quant_type)
        print(f"weights in memory quantized with {describe_quantization(estimate)}: "
              f"{format_bytes(quantized_size(config, estimate))} (float parts in float32)")


def run(args: argparse.Namespace) -> int:
    if args.tensor_parallel < 1:
        raise GLMError(f"--tensor-parallel must be at least 1, got {args.tensor_parallel}")
    require_local_dir(args.model_dir)
    config = GLMConfig.from_pretrained(args.model_dir)
    params = parameter_count(config)
    print(f"model: {args.model_dir}")
    print(f"config: {config.num_layers} layers, hidden {config.hidden_size}, {config.num_attention_heads} heads "
          f"(head_dim {config.head_dim}), vocab {config.vocab_size}, positions 0..{config.num_position_embeddings - 1} "
          f"(max_sequence_length {config.max_sequence_length}), "
          f"block positions {'on' if config.block_position_encoding else 'off'}")
    shown = ("num_layers", "hidden_size", "num_attention_heads", "vocab_size", "max_sequence_length",
             "block_position_encoding")
    defaulted = [name for name in shown if name in config.defaulted]
    if defaulted:
        print(f"  WARNING: the config file does not set {', '.join(defaulted)}: those values (and the counts "
              "below) are PaddleNLP's defaults, not facts about this model")
    print(f"parameters: {format_count(params)}")
    source = find_checkpoint(args.model_dir)
    print(f"checkpoint: {source.format}, {len(source.shards)} file(s)"
          + (f", index {os.path.basename(source.index_file)}" if source.index_file else "")
          + (f", metadata format '{source.metadata_format}'" if source.metadata_format else ""))
    for shard in source.shards:
        print(f"  {shard}  {format_bytes(os.path.getsize(source.path(shard)))}")
    print(f"total on disk: {format_bytes(source.total_bytes)}; dtype: {checkpoint_dtype(source)}")
    print_weights_in_memory(config, params, args)
    print_kv_cache_size(config)
    if args.tensor_parallel > 1:
        print_memory_per_rank(config, args.tensor_parallel)
    if args.adapter:
        from ..lora import describe_adapter

        print(describe_adapter(args.adapter))
    return 0
