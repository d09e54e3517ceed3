"""The C++ weight-only CPU operator: built on first use, cached per Paddle version and CPU."""
from __future__ import annotations

import sys
from typing import Tuple

_NOTICE = {"shown": False}


def status() -> Tuple[bool, str]:
    """(loaded, reason it is not)."""
    return False, "the C++ operator is not in this version yet"


def run(rows, qweight, scale, quant_type: str, group_size: int):
    raise RuntimeError("the C++ operator is not built")


def notice_fallback() -> None:
    """One line on stderr, once per process, saying why the slower tiled route runs."""
    if not _NOTICE["shown"]:
        _NOTICE["shown"] = True
        print(f"paddle_glm: weight-only CPU operator unavailable ({status()[1]}); "
              "using the slower tiled dequantization", file=sys.stderr)
