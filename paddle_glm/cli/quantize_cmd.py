"""``paddle-glm quantize``: write a weight-only int8/int4 checkpoint from a float one."""
from __future__ import annotations

import argparse

from .quant_flags import add_quant_flags, quant_settings


def add_parser(subparsers) -> None:
    """Register ``quantize`` and its options."""
    parser = subparsers.add_parser(
        "quantize", help="write a weight-only int8/int4 checkpoint from a float one",
        description="Quantize the float GLM checkpoint in SRC_DIR (any checkpoint `convert` reads) into DST_DIR: "
                    "sharded safetensors with each Linear weight (and the word embeddings) as <name>.weight "
                    "(int8, or int4 two per byte) and <name>.weight_scale (float32), and config.json recording "
                    "quantization_config. One input shard is in memory at a time; DST_DIR appears only when "
                    "complete. `from_pretrained(DST_DIR)` and --model-dir load it without quantizing again.")
    parser.add_argument("src", metavar="SRC_DIR", help="directory holding the float checkpoint (only read)")
    parser.add_argument("dst", metavar="DST_DIR", help="output directory (refused if not empty, see --overwrite)")
    add_quant_flags(parser, required=True)
    parser.add_argument("--max-shard-size", default="2GB",
                        help="bytes per output shard, or a size with units: 500MB, 2GB, 1GiB (default 2GB)")
    parser.add_argument("--verify", action="store_true",
                        help="re-read every output tensor and compare it with the source quantized again")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty DST_DIR (at the end)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Quantize and print a one-line summary."""
    from ..quantization.checkpoint import quantize_checkpoint  # imports Paddle: not for --help

    settings = quant_settings(args)
    report = quantize_checkpoint(args.src, args.dst, settings, max_shard_size=args.max_shard_size,
                                 verify=args.verify, overwrite=args.overwrite, quiet=args.quiet)
    print(f"quantized {args.src} -> {args.dst} ({settings.quant_type}"
          + (f", groups of {settings.group_size}" if settings.group_size > 0 else "")
          + (", embeddings kept in full precision" if not settings.quantize_embeddings else "")
          + f"): {report.summary()}")
    return 0
