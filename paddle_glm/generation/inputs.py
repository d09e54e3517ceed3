"""Generation inputs: one full-length position and mask layout for the whole run.

``generate`` feeds ``total = prompt + new - 1`` tokens in all (the last new token
is never fed back). Everything the loop needs per step is a slice of the arrays
built here once: positions ``[b, 2, total]`` and the boolean mask
``[b, 1, total, total]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import paddle

from ..errors import GLMError
from ..masks import build_attention_mask


@dataclass
class GenerationInputs:
    input_ids: paddle.Tensor  # [b, n0] int64, the prompt
    position_ids: paddle.Tensor  # [b, 2, total] int64
    mask: paddle.Tensor  # [b, 1, total, total] bool, True = may attend
    covered: int  # new tokens the caller's position_ids already covered (0: none given)

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def prompt_length(self) -> int:
        return self.input_ids.shape[1]

    @property
    def total(self) -> int:
        return self.position_ids.shape[2]


def to_int64(value, name: str) -> paddle.Tensor:
    """A paddle int64 tensor from a paddle tensor, numpy array or nested list."""
    if isinstance(value, paddle.Tensor):
        return value if value.dtype == paddle.int64 else value.astype("int64")
    try:
        return paddle.to_tensor(np.asarray(value, dtype=np.int64))
    except (TypeError, ValueError) as e:
        raise GLMError(f"{name}: expected integer ids (paddle tensor, numpy array or list), got {e}") from None


def covered_new_tokens(input_len: int, position_ids) -> int:
    """How many new tokens the given ``position_ids`` lay out (GLM's ``max_gen_length``), 0 if none."""
    if position_ids is None:
        return 0
    return max(0, np.shape(position_ids)[-1] - input_len + 1)


def prepare_inputs(input_ids, position_ids, attention_mask, new_tokens: int,
                   num_position_embeddings: int, block_position_encoding: bool = True) -> GenerationInputs:
    """Validate the inputs and lay out positions and mask for ``new_tokens`` new tokens.

    Positions or masks shorter than the run are extended with GLM's pattern: the
    position row repeats its last value (the mask position), the block position
    row keeps counting, and each new token sees what the last given row saw plus
    the generated tokens up to itself. Prompt rows never see generated columns.
    """
    input_ids = to_int64(input_ids, "input_ids")
    if input_ids.ndim == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise GLMError(f"input_ids: expected shape [batch, length] with length >= 1, got {list(input_ids.shape)}")
    b, n0 = input_ids.shape
    total = n0 + new_tokens - 1
    covered = 0
    if position_ids is not None:
        position_ids = to_int64(position_ids, "position_ids")
        if position_ids.ndim == 2 and not block_position_encoding:
            position_ids = paddle.stack([position_ids, paddle.zeros_like(position_ids)], axis=1)
        if position_ids.ndim != 3 or position_ids.shape[:2] != [b, 2] or position_ids.shape[2] < n0:
            raise GLMError(f"position_ids: expected shape [{b}, 2, >= {n0}] (positions, block positions) for "
                           f"input_ids of shape {[b, n0]}, got {list(position_ids.shape)}")
        covered = covered_new_tokens(n0, position_ids)
    positions = _extend_positions(position_ids, b, total)
    _check_position_table(positions, num_position_embeddings, n0, new_tokens)
    return GenerationInputs(input_ids, positions, _full_mask(attention_mask, b, n0, total), covered)


def _extend_positions(position_ids: Optional[paddle.Tensor], b: int, total: int) -> paddle.Tensor:
    if position_ids is None:
        positions = paddle.arange(total, dtype="int64").expand([b, total])
        return paddle.stack([positions, paddle.zeros_like(positions)], axis=1)  # [b, 2, total]
    given = position_ids.shape[2]
    if given >= total:
        return position_ids[:, :, :total]
    extra = paddle.arange(1, total - given + 1, dtype="int64").reshape([1, total - given])  # [1, k]
    row0 = position_ids[:, 0, -1:].expand([b, total - given])  # the mask position, repeated
    row1 = position_ids[:, 1, -1:] + extra  # block positions keep counting
    return paddle.concat([position_ids, paddle.stack([row0, row1], axis=1)], axis=2)  # [b, 2, total]


def _check_position_table(positions: paddle.Tensor, table_rows: int, n0: int, new_tokens: int) -> None:
    largest = int(positions.max())
    if largest >= table_rows:
        raise GLMError(f"generating {new_tokens} new tokens after a {n0}-token prompt needs position {largest}, but "
                       f"the model's position table has {table_rows} rows: shorten the prompt or ask for fewer tokens")


def _full_mask(attention_mask, b: int, n0: int, total: int) -> paddle.Tensor:
    """Boolean ``[b, 1, total, total]`` mask for the whole run."""
    if attention_mask is None or np.ndim(attention_mask) <= 1:
        mask = build_attention_mask(attention_mask, b, total, total)  # causal / sep: defined for any length
    else:
        given = attention_mask if isinstance(attention_mask, paddle.Tensor) else paddle.to_tensor(np.asarray(attention_mask))
        if given.ndim != 4 or given.shape[0] != b or given.shape[1] != 1 or given.shape[2] != given.shape[3] \
                or given.shape[2] < n0:
            raise GLMError(f"attention_mask: expected a square [{b}, 1, L, L] mask with L >= {n0} (the prompt "
                           f"length), got {list(given.shape)}")
        given = given.astype("bool")
        m = given.shape[2]
        if m >= total:
            mask = given[:, :, :total, :total]
        else:
            # new rows see what the last given row saw; new columns are causal (set below)
            rows = paddle.concat([given, given[:, :, -1:].expand([b, 1, total - m, m])], axis=2)  # [b, 1, total, m]
            mask = paddle.concat([rows, paddle.zeros([b, 1, total, total - m], dtype="bool")], axis=3)
    # A generated column j is visible exactly to rows i >= j: later tokens, never the prompt.
    i = paddle.arange(total, dtype="int64").reshape([total, 1])
    j = paddle.arange(total, dtype="int64").reshape([1, total])
    generated_col = paddle.logical_and(j >= n0, i >= j)  # [total, total]
    return paddle.where((j >= n0).expand([total, total]), generated_col, mask)
