"""The explicit name table between the Paddle layout and the PyTorch/HF layout.

Paddle ``Linear`` stores weights ``[in, out]``, torch ``Linear`` ``[out, in]``.
The four Linear weights of each block transpose; every other GLM tensor is the
same in both layouts. A name the table does not know is an error unless the
caller allows unknown names.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Sequence

from ..errors import CheckpointError

PADDLE, TORCH = "paddle", "torch"
LAYOUTS = (PADDLE, TORCH)

# name -> does it transpose between layouts ("{i}" is the layer number)
LAYOUT_TABLE: Dict[str, bool] = {
    "word_embeddings.weight": False,
    "transformer.position_embeddings.weight": False,
    "transformer.block_position_embeddings.weight": False,
    "transformer.final_layernorm.weight": False,
    "transformer.final_layernorm.bias": False,
    "transformer.layers.{i}.input_layernorm.weight": False,
    "transformer.layers.{i}.input_layernorm.bias": False,
    "transformer.layers.{i}.attention.query_key_value.weight": True,
    "transformer.layers.{i}.attention.query_key_value.bias": False,
    "transformer.layers.{i}.attention.dense.weight": True,
    "transformer.layers.{i}.attention.dense.bias": False,
    "transformer.layers.{i}.post_attention_layernorm.weight": False,
    "transformer.layers.{i}.post_attention_layernorm.bias": False,
    "transformer.layers.{i}.mlp.dense_h_to_4h.weight": True,
    "transformer.layers.{i}.mlp.dense_h_to_4h.bias": False,
    "transformer.layers.{i}.mlp.dense_4h_to_h.weight": True,
    "transformer.layers.{i}.mlp.dense_4h_to_h.bias": False,
}
PREFIX = "glm."
_LAYER = re.compile(r"^transformer\.layers\.(\d+)\.")

# Weights whose [in, out] shape tells the layout: (table name, out / in ratio).
_NON_SQUARE = {
    "transformer.layers.{i}.attention.query_key_value.weight": 3,
    "transformer.layers.{i}.mlp.dense_h_to_4h.weight": 4,
    "transformer.layers.{i}.mlp.dense_4h_to_h.weight": 0.25,
}


def strip_prefix(name: str) -> str:
    """A checkpoint name without the ``glm.`` prefix that GLMForConditionalGeneration adds."""
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def table_key(name: str) -> Optional[str]:
    """The LAYOUT_TABLE entry for a checkpoint name (with or without prefix), or None."""
    key = _LAYER.sub("transformer.layers.{i}.", strip_prefix(name))
    return key if key in LAYOUT_TABLE else None


def transposes(name: str) -> bool:
    """Whether ``name`` is transposed between layouts (names outside the table never are)."""
    key = table_key(name)
    return bool(key and LAYOUT_TABLE[key])


def is_non_square(name: str) -> bool:
    """Whether the tensor's shape tells the layout (see ``detect_layout``)."""
    return (table_key(name) or "") in _NON_SQUARE


def check_known(names: Iterable[str], where: str, allow_unknown: bool = False) -> List[str]:
    """The names the table does not know; an error listing them unless ``allow_unknown``."""
    unknown = [n for n in names if table_key(n) is None]
    if unknown and not allow_unknown:
        shown = ", ".join(unknown[:20]) + (" ..." if len(unknown) > 20 else "")
        raise CheckpointError(f"{where}: {len(unknown)} tensor name(s) are not GLM tensors: {shown} "
                              "(pass allow_unknown=True / --allow-unknown to copy them unchanged)")
    return unknown


def detect_layout(shapes: Dict[str, Sequence[int]], metadata_format: Optional[str], where: str) -> str:
    """Decide PADDLE or TORCH from safetensors metadata and the non-square weights' shapes.

    Raises CheckpointError if the evidence is missing or contradictory; the user
    then names the layout (``--from-layout``).
    """
    votes = set()
    for name, shape in shapes.items():
        ratio = _NON_SQUARE.get(table_key(name) or "")
        if ratio is None or len(shape) != 2:
            continue
        rows, cols = shape
        if cols == rows * ratio:
            votes.add(PADDLE)
        elif rows == cols * ratio:
            votes.add(TORCH)
    by_metadata = {"np": PADDLE, "paddle": PADDLE, "pt": TORCH}.get(metadata_format or "")
    if by_metadata:
        votes.add(by_metadata)
    if len(votes) == 1:
        return votes.pop()
    reason = "the tensor shapes and file metadata disagree" if votes else "no tensor or metadata tells it"
    raise CheckpointError(f"{where}: cannot tell the checkpoint layout ({reason}); "
                          "name it with from_layout='paddle' or 'torch' (--from-layout)")


def convert_layout(name: str, array, source: str, target: str):
    """``array`` moved from layout ``source`` to ``target`` (a transposed copy, or the array itself)."""
    if source != target and transposes(name):
        return array.T.copy()
    return array
