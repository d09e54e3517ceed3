"""Decode-time inputs: the prompt, and one position and mask layout for the whole ``generate`` run.

``generate`` feeds ``total = prompt + new - 1`` tokens in all (the last new token
is never fed back). Everything the loop needs per step is a slice of the arrays
built here once (by :mod:`paddle_glm.glm_layout`): positions ``[b, 2, total]``
and the boolean mask ``[b, 1, total, total]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import paddle

from ..errors import GLMError
from ..glm_layout import check_run_positions, extend_positions, generation_mask, with_block_row
from ..ids import to_int64


@dataclass
class GenerationInputs:
    input_ids: paddle.Tensor  # [b, n0] int64, the prompt
    position_ids: paddle.Tensor  # [b, 2, total] int64
    mask: paddle.Tensor  # [b, 1, total, total] bool, True = may attend

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def prompt_length(self) -> int:
        return self.input_ids.shape[1]

    @property
    def total(self) -> int:
        return self.position_ids.shape[2]


def covered_new_tokens(input_len: int, position_ids) -> int:
    """How many new tokens the given ``position_ids`` lay out (GLM's ``max_gen_length``), 0 if none."""
    if position_ids is None:
        return 0
    return max(0, np.shape(position_ids)[-1] - input_len + 1)


def prepare_inputs(input_ids, position_ids, attention_mask, new_tokens: int,
                   num_position_embeddings: int, block_position_encoding: bool = True) -> GenerationInputs:
    """Validate the inputs and lay out positions and mask for ``new_tokens`` new tokens.

    Positions or masks shorter than the run are extended with GLM's pattern (see
    :func:`~paddle_glm.glm_layout.extend_positions` and
    :func:`~paddle_glm.glm_layout.generation_mask`). The run's largest position is
    checked against the position table before anything of the run's length is allocated.
    """
    input_ids = to_int64(input_ids, "input_ids")
    if input_ids.ndim == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise GLMError(f"input_ids: expected shape [batch, length] with length >= 1, got {list(input_ids.shape)}")
    b, n0 = input_ids.shape
    total = n0 + new_tokens - 1
    if position_ids is not None:
        position_ids = to_int64(position_ids, "position_ids")
        position_ids = with_block_row(position_ids, block_position_encoding)
        if position_ids.ndim != 3 or position_ids.shape[:2] != [b, 2] or position_ids.shape[2] < n0:
            raise GLMError(f"position_ids: expected shape [{b}, 2, >= {n0}] (positions, block positions) for "
                           f"input_ids of shape {[b, n0]}, got {list(position_ids.shape)}")
    check_run_positions(position_ids, n0, new_tokens, num_position_embeddings)
    positions = extend_positions(position_ids, b, total)
    return GenerationInputs(input_ids, positions, generation_mask(attention_mask, b, n0, total))
