"""Multi-blank infilling: fill every [MASK]/[sMASK]/[gMASK] of a text, in order, as the original GLM does.

GLM is pretrained on a corrupted text (Part A) followed by the missing spans
(Part B), each span ``<|startofpiece|> tokens`` placed at its blank's position
(block positions 1, 2, ...), Part A visible to everything and Part B causal.
Inference follows that layout: blank k is generated after Part A and the spans
already generated for blanks 1..k-1, so each span sees the previous ones.
"""
from __future__ import annotations

import dataclasses
from typing import List, Tuple

from .errors import GLMError
from .generation.api import resolve_settings
from .glm_layout import part_a_b_mask, part_b_sequence

DEFAULT_SPAN_TOKENS = 64


def part_b_inputs(context: List[int], mask_position: int, previous: List[Tuple[int, List[int]]], sop: int,
                  eop: int):
    """Prompt ``[1, n0]``, positions ``[1, 2, n0]`` and mask ``[1, 1, n0, n0]`` to generate the span of one blank.

    The prompt is Part A, the spans already filled (each ``<|startofpiece|> span``) and the
    new blank's ``<|startofpiece|>``; ``generate`` extends positions and mask over the new
    span with GLM's pattern after checking them against the position table.

    Args:
        context: Part A ids (the whole text with its blanks).
        mask_position: index in ``context`` of the blank to fill now.
        previous: ``(mask_position, span_ids)`` of the blanks already filled, in order.
        sop, eop: the ``<|startofpiece|>`` and ``<|endofpiece|>`` ids.
    """
    sequence = part_b_sequence(context, previous + [(mask_position, [])], sop, eop)
    total = len(sequence["input_ids"])
    mask = part_a_b_mask(len(context), total)
    return sequence["input_ids"][None], sequence["position_ids"][None], mask[None, None]


def fill_blanks(model, tokenizer, text: str, **generate_kwargs) -> Tuple[str, List[str]]:
    """Fill every blank of ``text`` in order; returns the completed text and the list of spans.

    Each span is generated with ``model.generate`` (greedy unless ``generate_kwargs`` say
    otherwise, as fields of :class:`~paddle_glm.generation.GenerationConfig` or a
    ``generation_config``; ``max_new_tokens`` defaults to 64 per blank) and stops at
    ``<|endofpiece|>``. The spans are fed back (as GLM's Part B) before the next blank is
    generated. ``max_length`` is not accepted (a blank has no whole-sequence length), nor
    ``return_dict_in_generate`` (the result is text). A ``streamer`` receives every blank's
    tokens in turn and ``end()`` once, after the last blank. One text per call.
    """
    if not isinstance(text, str):
        raise GLMError(f"fill_blanks: expected one text (a str), got {type(text).__name__}; call it once per text")
    for name, why in (("max_length", "give max_new_tokens (per blank), not max_length"),
                      ("return_dict_in_generate", "it returns the completed text and the spans; call "
                                                  "model.generate for per-step logits")):
        if generate_kwargs.get(name):
            raise GLMError(f"fill_blanks: {name} is not supported: {why}")
    streamer = generate_kwargs.pop("streamer", None)
    config = resolve_settings(model, generate_kwargs.pop("generation_config", None), generate_kwargs, tokenizer)
    config = dataclasses.replace(config, max_length=None, return_dict_in_generate=False,
                                 max_new_tokens=config.max_new_tokens or DEFAULT_SPAN_TOKENS).validate()
    context = tokenizer(text)["input_ids"]
    blanks = [i for i, token in enumerate(context) if token in tokenizer.mask_token_ids]
    if not blanks:
        raise GLMError("fill_blanks: the text has no [MASK], [sMASK] or [gMASK] to fill")
    eop = config.eos_token_id
    filled: List[Tuple[int, List[int]]] = []
    for position in blanks:
        prompt, positions, mask = part_b_inputs(context, position, filled, tokenizer.sop_token_id,
                                                tokenizer.eop_token_id)
        out = model.generate(prompt, positions, mask, generation_config=config,
                             streamer=_WithoutEnd(streamer) if streamer else None).numpy()[0, prompt.shape[1]:]
        out = out.tolist()
        span = out[:out.index(eop)] if eop in out else out
        filled.append((position, span))
    if streamer is not None:
        streamer.end()
    spans = [tokenizer.decode(span, skip_special_tokens=True) for _, span in filled]
    completed, start = [], 1 if context and context[0] == tokenizer.cls_token_id else 0
    for (position, _span_ids), span in zip(filled, spans):
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
