"""``--quant-type``, ``--group-size`` and ``--keep-embeddings``: the quantization flags of generate, fill,
serve and quantize, checked (with the model's config) before anything is loaded."""
from __future__ import annotations

import argparse
from typing import Optional

from ..quantization.settings import DEFAULT_GROUP_SIZE, QUANT_TYPES, QuantSettings, requested_settings


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


def quant_settings(args: argparse.Namespace) -> Optional[QuantSettings]:
    """The settings the flags ask for (None without ``--quant-type``); a GLMError naming the flag if invalid."""
    return requested_settings(args.quant_type, args.group_size, not args.keep_embeddings)


def quant_load_kwargs(args: argparse.Namespace) -> dict:
    """The ``from_pretrained`` keyword arguments of the flags."""
    settings = quant_settings(args)
    if settings is None:
        return {}
    return dict(quant_type=settings.quant_type, group_size=settings.kernel_group_size,
                quantize_embeddings=settings.quantize_embeddings)
