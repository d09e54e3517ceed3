"""The ``paddle-glm`` command line: one module per subcommand, each with ``add_parser`` and ``run``."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import signal
import sys
import threading
from typing import Iterator, List, Optional

from ..errors import GLMError
from .launch import run_command

# subcommand -> module (relative to this package) defining add_parser(subparsers) and run(args) -> int
SUBCOMMANDS = {
    "generate": ".generate_cmd",
    "fill": ".fill_cmd",
    "convert": ".convert_cmd",
    "quantize": ".quantize_cmd",
    "info": ".info_cmd",
    "demo": ".demo_cmd",
    "serve": ".serve_cmd",
    "finetune": ".finetune_cmd",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paddle-glm", description="GLM for PaddlePaddle: generate, fill blanks, "
                                     "convert checkpoints, inspect models, finetune, serve.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in SUBCOMMANDS.items():
        importlib.import_module(module, __name__).add_parser(sub)
    return parser


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM/SIGHUP, so temporary outputs are cleaned up as on Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame) -> None:
    raise Terminated(signum)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``paddle-glm`` console script and ``python -m paddle_glm``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    for position, arg in enumerate(argv, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            printable = arg.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
            print(f"paddle-glm: error: argument {position} ({printable}) is not valid UTF-8 text", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    if isinstance(sys.stdin, io.TextIOWrapper):
        sys.stdin.reconfigure(errors="strict")  # a non-UTF-8 line is an error, not surrogates passed on
    args.argv = argv  # finetune --nproc re-runs the command line
    with _signals_raise_terminated():
        return _run(args, argv)


@contextlib.contextmanager
def _signals_raise_terminated() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``Terminated`` while a command runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_terminated) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run(args: argparse.Namespace, argv: List[str]) -> int:
    """Run the subcommand; user errors and signals become one line on stderr and an exit code."""
    try:
        return int(run_command(args, argv) or 0)
    except GLMError as e:
        print(f"paddle-glm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except UnicodeError as e:
        print(f"paddle-glm {args.command}: error: {_unicode_culprit(args, e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"paddle-glm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated as e:
        print(f"paddle-glm {args.command}: terminated by {signal.Signals(e.signum).name}", file=sys.stderr)
        return 128 + e.signum


def _unicode_culprit(args: argparse.Namespace, error: UnicodeError) -> str:
    """What was not valid text: the --file, standard input, or a string with a lone surrogate."""
    if isinstance(error, UnicodeDecodeError):
        source = f"--file {args.file}" if getattr(args, "file", None) else "standard input"
        return f"{source} is not valid UTF-8 (byte {error.object[error.start:error.start + 1]!r} at {error.start})"
    return f"the input holds a character that is not valid Unicode text ({error.reason}); give UTF-8 text"
