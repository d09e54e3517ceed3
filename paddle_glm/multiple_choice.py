"""Cloze scoring: GLM's log-probability of each choice filling the blank."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .config import GLMConfig
from .model import GLMModel
from .pretrained import PretrainedMixin


@dataclass
class MultipleChoiceOutput:
    """``logits``: ``[b, choices]`` summed log-probabilities (``-inf`` where a row has fewer choices);
    ``loss``: cross entropy against ``labels`` when given; ``lm_logits``: ``[b, S, vocab]``."""

    logits: paddle.Tensor
    loss: Optional[paddle.Tensor] = None
    lm_logits: Optional[paddle.Tensor] = None


class GLMForMultipleChoice(PretrainedMixin, nn.Layer):
    """Scores choices with the language-model head, as PaddleNLP's GLMForMultipleChoice.

    Feed it ``tokenizer.build_inputs_for_multiple_choice(batch, choices)``: each
    choice's score is the sum of its tokens' log-probabilities at its span positions.
    """

    def __init__(self, config: GLMConfig):
        super().__init__()
        config = copy.deepcopy(config)
        config.output_predict = True  # scoring needs the LM head (the caller's config is not changed)
        self.config = config
        self.glm = GLMModel(config)

    def forward(self, input_ids, position_ids, attention_mask, choice_ids: Sequence[Sequence],
                choice_indices: Sequence[Sequence], labels=None) -> MultipleChoiceOutput:
        lm_logits = self.glm(input_ids, position_ids, attention_mask).logits
        log_probs = F.log_softmax(lm_logits, axis=-1)  # [b, S, vocab]
        width = max(len(row) for row in choice_ids)
        rows = []
        for b, (ids_row, indices_row) in enumerate(zip(choice_ids, choice_indices)):
            scores = [log_probs[b][_ids(indices), _ids(ids)].sum() for ids, indices in zip(ids_row, indices_row)]
            scores += [paddle.full([], float("-inf"), log_probs.dtype)] * (width - len(scores))
            rows.append(paddle.stack(scores))
        logits = paddle.stack(rows)  # [b, choices]
        loss = F.cross_entropy(logits, paddle.to_tensor(labels).reshape([-1, 1])) if labels is not None else None
        return MultipleChoiceOutput(logits=logits, loss=loss, lm_logits=lm_logits)


def _ids(values) -> paddle.Tensor:
    return values.astype("int64") if isinstance(values, paddle.Tensor) else paddle.to_tensor(np.asarray(values,
                                                                                                      "int64"))
