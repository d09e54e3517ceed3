"""``--quant-type``, ``--group-size`` and ``--keep-embeddings``: the quantization flags of generate, fill,
serve and quantize, checked (with the model's config) before anything is loaded; ``--int8-activations`` (not
quantize's: a way to compute, not to store)."""
from __future__ import annotations

import argparse
from typing import Optional

from ..errors import GLMError
from ..quantization.settings import (
    DEFAULT_GROUP_SIZE,
    INT4,
    QUANT_TYPES,
    QuantSettings,
    recorded_quant_type,
    requested_settings,
)


def add_quant_flags(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """Add the flags; with ``required``, ``--quant-type`` must be given (``paddle-glm quantize``)."""
    group = parser.add_argument_group("quantization")
    group.add_argument("--quant-type", required=required, metavar="TYPE",
                       help=f"weight-only quantization: {' or '.join(QUANT_TYPES)} (PaddleNLP's names); "
                            + ("" if required else "quantizes while loading; a checkpoint written by "
                                                   "`paddle-glm quantize` needs no flag"))
    group.add_argument("--group-size", type=int, metavar="N",
                       help=f"int4: inputs per scale, a divisor of the hidden size (default {DEFAULT_GROUP_SIZE})")
    group.add_argument("--keep-embeddings", action="store_true",
                       help="keep the word embeddings (also the output projection) in full precision")
    if not required:
        group.add_argument("--int8-activations", action="store_true",
                           help=f"{INT4} on a CPU with AVX2: round the products' inputs to int8 instead of int16 "
                                "(faster products, ~4e-3 of the largest output more error)")


def quant_settings(args: argparse.Namespace) -> Optional[QuantSettings]:
    """The settings the flags ask for (None without ``--quant-type``); a GLMError naming the flag if invalid."""
    return requested_settings(args.quant_type, args.group_size, not args.keep_embeddings)


def check_int8_activations(args: argparse.Namespace) -> None:
    """A GLMError naming ``--int8-activations`` unless the model will be int4 (``--quant-type``, or the
    checkpoint's own quantization)."""
    if not getattr(args, "int8_activations", False):
        return
    if args.quant_type:
        if args.quant_type != INT4:
            raise GLMError(f"--int8-activations needs a {INT4} model, not --quant-type {args.quant_type}")
        return
    recorded = recorded_quant_type(args.model_dir)
    if recorded is None:
        raise GLMError(f"--int8-activations needs a {INT4} model: {args.model_dir}'s config.json records no "
                       f"quantization; add --quant-type {INT4}")
    if recorded != INT4:
        raise GLMError(f"--int8-activations needs a {INT4} model: {args.model_dir} holds a checkpoint quantized as "
                       f"{recorded}; use an int4 one or drop the flag")


def quant_load_kwargs(args: argparse.Namespace) -> dict:
    """The ``from_pretrained`` keyword arguments of the flags."""
    settings = quant_settings(args)
    if settings is None:
        return {}
    return dict(quant_type=settings.quant_type, group_size=settings.kernel_group_size,
                quantize_embeddings=settings.quantize_embeddings)
