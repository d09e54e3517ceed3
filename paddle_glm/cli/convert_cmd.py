"""``paddle-glm convert``: change a checkpoint's file format, weight layout or dtype."""
from __future__ import annotations

import argparse

from ..checkpoint.layout import LAYOUTS
from ..conversion import DTYPES, FROM_LAYOUTS, OUTPUT_FORMATS, convert
from ..errors import OutputExistsError


def add_parser(subparsers) -> None:
    """Register ``convert`` and its options."""
    parser = subparsers.add_parser(
        "convert", help="convert a checkpoint between pdparams/safetensors and the Paddle/PyTorch layouts",
        description="Convert the GLM checkpoint in SRC_DIR (PaddleNLP pdparams or safetensors, PyTorch "
                    "pytorch_model.bin or HF safetensors; single file or shards + index) into DST_DIR, one "
                    "shard at a time. config.json, tokenizer files and every other non-weight file are copied. "
                    "DST_DIR appears only when complete.")
    parser.add_argument("src", metavar="SRC_DIR", help="directory holding the checkpoint to convert (only read)")
    parser.add_argument("dst", metavar="DST_DIR", help="output directory (refused if not empty, see --overwrite)")
    parser.add_argument("--to", required=True, choices=OUTPUT_FORMATS, help="output file format")
    parser.add_argument("--from-layout", default="auto", choices=FROM_LAYOUTS,
                        help="layout of SRC: auto (from file metadata and weight shapes; the default), paddle "
                             "(Linear weights [in, out]) or torch ([out, in])")
    parser.add_argument("--to-layout", default="paddle", choices=LAYOUTS, help="layout of the output (default paddle)")
    parser.add_argument("--dtype", default="keep", choices=DTYPES, help="cast the weights (default: keep)")
    parser.add_argument("--max-shard-size", default="2GB",
                        help="bytes per output shard, or a size with units: 500MB, 2GB, 1GiB (default 2GB)")
    parser.add_argument("--verify", action="store_true",
                        help="re-read every output tensor and compare it with the source before finishing")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty DST_DIR")
    parser.add_argument("--allow-unknown", action="store_true",
                        help="copy tensors that are not GLM weights unchanged instead of stopping")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the conversion and print a one-line summary."""
    try:
        report = convert(args.src, args.dst, to=args.to, from_layout=args.from_layout, to_layout=args.to_layout,
                         dtype=args.dtype, max_shard_size=args.max_shard_size, verify=args.verify,
                         overwrite=args.overwrite, allow_unknown=args.allow_unknown, quiet=args.quiet)
    except OutputExistsError as e:
        raise e.naming("--overwrite") from None
    print(f"converted {args.src} ({report.source_layout} layout) -> {args.dst} ({args.to}, {args.to_layout} "
          f"layout): {report.summary()}")
    return 0
