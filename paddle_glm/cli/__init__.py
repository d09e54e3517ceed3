"""The ``paddle-glm`` command line: one module per subcommand, each with ``add_parser`` and ``run``."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from ..errors import GLMError

# subcommand -> module (relative to this package) defining add_parser(subparsers) and run(args) -> int
SUBCOMMANDS = {
    "generate": ".generate_cmd",
    "fill": ".fill_cmd",
    "convert": ".convert_cmd",
    "info": ".info_cmd",
    "demo": ".demo_cmd",
    "finetune": ".finetune_cmd",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paddle-glm", description="GLM for PaddlePaddle: generate, fill blanks, "
                                     "convert checkpoints, inspect models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in SUBCOMMANDS.items():
        importlib.import_module(module, __name__).add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``paddle-glm`` console script and ``python -m paddle_glm``."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # finetune --nproc re-runs the command line
    try:
        return int(args.run(args) or 0)
    except GLMError as e:
        print(f"paddle-glm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"paddle-glm {args.command}: interrupted", file=sys.stderr)
        return 130
