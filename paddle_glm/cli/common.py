"""Shared pieces of the CLI subcommands: device/dtype flags, loading, timing lines."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Tuple

from ..checkpoint.dtypes import DTYPE_NAMES
from ..errors import GLMError
from ..io_utils import require_local_dir
from .quant_flags import add_quant_flags, check_int8_activations, quant_load_kwargs
from .ranks import ADAPTER_WITH_TP


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="MODEL_DIR",
                        help="directory with config.json, the weights and cog-pretrain.model")
    parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES,
                        help="weights dtype (float16/bfloat16 need a CUDA GPU; default float32)")
    add_device_flag(parser)
    parser.add_argument("--adapter", metavar="DIR", help="a LoRA adapter (paddle-glm finetune --lora, or PaddleNLP's "
                        "peft) to merge into the model (applied on top of a quantized one)")
    add_quant_flags(parser)


def add_device_flag(parser) -> None:
    """``--device``, read by :func:`use_device` (``parser`` may be an argument group)."""
    parser.add_argument("--device", default=None, help="cpu, gpu or gpu:N (default: Paddle's current device)")


def use_device(device: Optional[str]) -> None:
    """Make ``--device`` Paddle's current device when it was given; a bad name is a GLMError naming the flag."""
    if device:
        from ..devices import set_device

        set_device(device)


def add_generation_flags(parser: argparse.ArgumentParser, default_new_tokens: int) -> None:
    """One flag per :class:`GenerationConfig` field marked as a flag (``max_new_tokens`` -> ``--max-new-tokens``).

    A flag that is not given leaves the model's setting (its ``generation_config.json``) alone.
    """
    from ..generation.config import GenerationConfig

    group = parser.add_argument_group("generation")
    parser.set_defaults(default_new_tokens=default_new_tokens)
    for setting in GenerationConfig.flag_fields():
        flag, help_text = _flag(setting.name), setting.metadata["help"]
        if setting.name == "max_new_tokens":
            group.add_argument(flag, type=int, help=f"new tokens per blank (default {default_new_tokens})")
        elif setting.default is False:
            group.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            kind = int if "int" in str(setting.type) else float  # the annotation: "int", "Optional[int]", "float"
            group.add_argument(flag, type=kind, help=help_text)


def generation_overrides(args: argparse.Namespace) -> dict:
    """The generation settings given as flags, checked; an invalid value is a GLMError naming its flag."""
    from ..generation.config import GenerationConfig

    given = {f.name: getattr(args, f.name) for f in GenerationConfig.flag_fields() if getattr(args, f.name) is not None}
    for name, message in GenerationConfig().updated(**given).problems():
        raise GLMError(f"{_flag(name)}: {message}")
    return given


def generation_config(model, args: argparse.Namespace, overrides: dict):
    """The model's generation config with the flags applied (and the command's default length)."""
    config = model.generation_config.updated(**overrides)
    if config.max_new_tokens is None and config.max_length is None:
        config = config.updated(max_new_tokens=args.default_new_tokens)
    return config


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def ready_cpu_operators() -> None:
    """On CPU, build (on first use, with one line on stderr) or load the C++ operators now, so that a
    command's timings and a server's first request do not include the build."""
    from .. import cpu_operators
    from ..devices import device_type

    if device_type() == "cpu":
        cpu_operators.status()


def load_model_and_tokenizer(args: argparse.Namespace) -> Tuple[object, object]:
    """Model and tokenizer from ``args.model_dir`` on ``args.device``; user errors become GLMError."""
    from ..devices import device_type
    from ..model import GLMForConditionalGeneration
    from ..tokenizer import MODEL_FILE, GLMChineseTokenizer

    require_local_dir(args.model_dir)
    check_int8_activations(args)
    use_device(args.device)
    if args.int8_activations and device_type() == "gpu":
        raise GLMError("--int8-activations is a CPU option: Paddle's CUDA weight_only_linear takes float activations")
    ready_cpu_operators()
    if not os.path.isfile(os.path.join(args.model_dir, MODEL_FILE)):
        raise GLMError(f"{args.model_dir}: no tokenizer file {MODEL_FILE} in the model directory")
    tokenizer = GLMChineseTokenizer.from_pretrained(args.model_dir)
    start = time.perf_counter()
    tensor_parallel = getattr(args, "tensor_parallel", 1) > 1
    if args.adapter and tensor_parallel:
        raise GLMError(ADAPTER_WITH_TP)  # also checked before the ranks start; here for a job launched by hand
    if tensor_parallel:
        from .. import tensor_parallel as tp

        model = tp.from_pretrained(GLMForConditionalGeneration, args.model_dir, dtype=args.dtype,
                                   **quant_load_kwargs(args))
    else:
        model = GLMForConditionalGeneration.from_pretrained(args.model_dir, dtype=args.dtype,
                                                            **quant_load_kwargs(args))
    if args.adapter:
        from ..lora import load_adapter, merge_lora

        model = load_adapter(model, args.adapter)
        if getattr(model, "quantization", None) is None:  # integer weights cannot absorb the adapter
            model = merge_lora(model)
    if args.int8_activations:
        from ..quantization.rewrite import use_int8_activations

        use_int8_activations(model)
    info(f"loaded {args.model_dir} ({args.dtype}) in {time.perf_counter() - start:.1f} s")
    return model, tokenizer


def info(message: str) -> None:
    """A status line on stderr (stdout carries the results)."""
    print(message, file=sys.stderr, flush=True)


def format_count(count: int) -> str:
    """``count`` with thousands separators and its size in words: ``672,256 (672.3 thousand)``."""
    for scale, word in ((1e9, "billion"), (1e6, "million"), (1e3, "thousand")):
        if count >= scale:
            return f"{count:,} ({count / scale:.1f} {word})"
    return f"{count:,}"


def format_bytes(size: float) -> str:
    """A byte count in the largest decimal unit that keeps it at 1 or more: ``2.69 MB``, ``19.76 GB``."""
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{int(size)} B"


def speed_line(tokens: int, seconds: float) -> str:
    return f"{tokens} tokens in {seconds:.2f} s ({tokens / max(seconds, 1e-9):.1f} tokens/s)"
