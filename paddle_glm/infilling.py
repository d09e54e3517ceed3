"""Multi-blank infilling: fill every [MASK]/[sMASK]/[gMASK] of a text, in order, as the original GLM does.

GLM is pretrained on a corrupted text (Part A) followed by the missing spans
(Part B), each span ``<|startofpiece|> tokens`` placed at its blank's position
(block positions 1, 2, ...), Part A visible to everything and Part B causal.
Inference follows that layout: blank k is generated after Part A and the spans
already generated for blanks 1..k-1, so each span sees the previous ones.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from .errors import GLMError
from .generation.api import bad_words_with_tokenizer

DEFAULT_SPAN_TOKENS = 64


def part_b_inputs(context: List[int], mask_position: int, previous: List[Tuple[int, List[int]]], sop: int,
                  span_tokens: int):
    """Prompt, positions ``[1, 2, T]`` and mask ``[1, 1, T, T]`` to generate the span of one blank.

    Args:
        context: Part A ids (the whole text with its blanks).
        mask_position: index in ``context`` of the blank to fill now.
        previous: ``(mask_position, span_ids)`` of the blanks already filled, in order.
        sop: the ``<|startofpiece|>`` id.
        span_tokens: room to lay out for the new span.
    """
    ids = list(context)
    positions, blocks = list(range(len(context))), [0] * len(context)
    for position, span in previous + [(mask_position, [])]:
        piece = [sop] + list(span)  # <|startofpiece|> then the span (its <|endofpiece|> is only a target)
        ids += piece
        positions += [position] * len(piece)
        blocks += list(range(1, len(piece) + 1))
    n0, part_a = len(ids), len(context)
    total = n0 + span_tokens - 1
    positions += [mask_position] * (total - n0)
    blocks += list(range(blocks[-1] + 1, blocks[-1] + 1 + total - n0))
    mask = np.tril(np.ones((total, total), dtype="int64"))  # Part B is causal
    mask[:, :part_a] = 1  # Part A is visible to every token
    prompt = np.array([ids], dtype="int64")  # [1, n0]
    return prompt, np.array([[positions, blocks]], dtype="int64"), mask[None, None]


def fill_blanks(model, tokenizer, text: str, **generate_kwargs) -> Tuple[str, List[str]]:
    """Fill every blank of ``text`` in order; returns the completed text and the list of spans.

    Each span is generated with ``model.generate`` (greedy unless ``generate_kwargs`` say
    otherwise; ``max_new_tokens`` defaults to 64 per blank) and stops at ``<|endofpiece|>``.
    The spans are fed back (as GLM's Part B) before the next blank is generated.
    ``max_length`` is not accepted: a blank has no whole-sequence length. A ``streamer``
    receives every blank's tokens in turn and ``end()`` once, after the last blank.
    """
    if "max_length" in generate_kwargs:
        raise GLMError("fill_blanks: give max_new_tokens (per blank), not max_length")
    context = tokenizer(text)["input_ids"]
    blanks = [i for i, token in enumerate(context) if token in tokenizer.mask_token_ids]
    if not blanks:
        raise GLMError("fill_blanks: the text has no [MASK], [sMASK] or [gMASK] to fill")
    if generate_kwargs.get("max_new_tokens") is None:
        generate_kwargs["max_new_tokens"] = DEFAULT_SPAN_TOKENS
    streamer = generate_kwargs.pop("streamer", None)
    generate_kwargs.setdefault("eos_token_id", tokenizer.eop_token_id)
    generate_kwargs.setdefault("bad_words_ids", bad_words_with_tokenizer(model.config, tokenizer))
    span_tokens = generate_kwargs["max_new_tokens"]
    filled: List[Tuple[int, List[int]]] = []
    for position in blanks:
        prompt, positions, mask = part_b_inputs(context, position, filled, tokenizer.sop_token_id, span_tokens)
        out = model.generate(prompt, positions, mask, streamer=_WithoutEnd(streamer) if streamer else None,
                             **generate_kwargs).numpy()[0, prompt.shape[1]:].tolist()
        span = out[:out.index(tokenizer.eop_token_id)] if tokenizer.eop_token_id in out else out
        filled.append((position, span))
    if streamer is not None:
        streamer.end()
    spans = [tokenizer.decode(span, skip_special_tokens=True) for _, span in filled]
    completed, start = [], 1 if context and context[0] == tokenizer.cls_token_id else 0
    for (position, span_ids), span in zip(filled, spans):
        completed.append(tokenizer.decode(context[start:position], skip_special_tokens=True))
        completed.append(span)
        start = position + 1
    completed.append(tokenizer.decode(context[start:], skip_special_tokens=True))
    return "".join(completed), spans


class _WithoutEnd:
    """Passes a streamer every token but holds back ``end()`` until all blanks are done."""

    def __init__(self, streamer):
        self.streamer = streamer

    def put(self, value) -> None:
        self.streamer.put(value)

    def end(self) -> None:
        pass
