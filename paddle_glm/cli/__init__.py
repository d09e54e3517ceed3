"""The ``paddle-glm`` command line: one module per subcommand, each with ``add_parser`` and ``run``."""
from __future__ import annotations

import argparse
import importlib
import io
import sys
import warnings
from typing import List, Optional

from ..distributed import (
    STOPPED_EXIT_CODES,
    RankFailed,
    Terminated,
    exit_code_of,
    exit_now,
    signal_name,
    stop_signals_raise,
)
from ..errors import GLMError
from .ranks import run_command

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
    for module in SUBCOMMANDS.values():
        importlib.import_module(module, __name__).add_parser(sub)
    return parser


def quiet_paddle_import_warnings() -> None:
    """Keep Paddle's import-time ``UserWarning: No ccache found`` off the command's stderr.

    Paddle's C++-extension helpers look for ccache (a compiler cache) when Paddle is imported,
    and warn when it is absent; no command here compiles anything. Called before Paddle's import.
    """
    warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``paddle-glm`` console script and ``python -m paddle_glm``.

    Run as the program (``argv`` None: the process's own arguments), a command stopped by a signal
    ends the process as soon as its cleanup is done (:func:`paddle_glm.distributed.exit_now`).
    """
    quiet_paddle_import_warnings()
    as_program = argv is None
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
    with stop_signals_raise():
        code = _run(args, argv)
    if as_program and code in STOPPED_EXIT_CODES:
        exit_now(code)
    return code


def _run(args: argparse.Namespace, argv: List[str]) -> int:
    """Run the subcommand; user errors and signals become one line on stderr and an exit code."""
    try:
        return int(run_command(args, argv) or 0)
    except GLMError as e:
        note = _stop_note(args) if isinstance(e, RankFailed) else ""
        print(f"paddle-glm {args.command}: error: {e}{note}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except UnicodeError as e:
        print(f"paddle-glm {args.command}: error: {_unicode_culprit(args, e)}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as e:
        print(f"paddle-glm {args.command}: stopped by {signal_name(e)}{_stop_note(args)}", file=sys.stderr)
        return exit_code_of(e)


def _stop_note(args: argparse.Namespace) -> str:
    """What a stopped or failed command left behind, for the commands that say (``args.stop_note``)."""
    note = getattr(args, "stop_note", None)
    return f"; {note(args)}" if note else ""


def _unicode_culprit(args: argparse.Namespace, error: UnicodeError) -> str:
    """What was not valid text: the --file, standard input, or a string with a lone surrogate."""
    if isinstance(error, UnicodeDecodeError):
        source = f"--file {args.file}" if getattr(args, "file", None) else "standard input"
        return f"{source} is not valid UTF-8 (byte {error.object[error.start:error.start + 1]!r} at {error.start})"
    return f"the input holds a character that is not valid Unicode text ({error.reason}); give UTF-8 text"
