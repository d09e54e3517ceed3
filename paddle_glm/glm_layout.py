"""GLM's Part A / Part B layout: the one place that writes positions, block positions and the infilling mask.

GLM fills a blank (``[MASK]``, ``[sMASK]`` or ``[gMASK]``) of a text (Part A) by
appending a span (Part B) that starts with ``<|startofpiece|>``. The span's tokens
take the blank's position in row 0 of ``position_ids`` and count ``1, 2, ...`` in
row 1 (block positions). Every token sees the whole (unpadded) Part A; Part B
tokens see Part B causally (a span sees the spans before it); Part A never sees
Part B.

Everything that lays out GLM inputs calls this module: the tokenizer's builders
(generation, teacher-forced targets and multiple-choice scoring, exactly the arrays
of PaddleNLP 2.8.1's ``GLMTokenizerMixin``), multi-blank infilling, training
samples (``tools/blank_infilling.py``), the benchmarks, and ``generate``, which
extends a layout to the tokens it decodes (:func:`extend_positions`,
:func:`generation_mask`) after checking it against the position table
(:func:`check_run_positions`) before allocating anything. The model's forward takes
its default positions (:func:`default_positions`), the 2-D form of a model without
block positions (:func:`with_block_row`) and its range check (:func:`check_positions`)
from here too, and every message names the table as :func:`position_table` does.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import paddle

from .errors import GLMError
from .ids import check_id_range
from .masks import build_attention_mask, check_binary_mask

ID_DTYPE = "int64"


def causal_mask(length: int, dtype=ID_DTYPE) -> np.ndarray:
    """``[n, n]`` lower-triangular ones: token i of a span sees the span's tokens 0..i."""
    return np.tril(np.ones([length, length], dtype=dtype))


def first_mask_positions(input_ids: np.ndarray, mask_token_ids: Sequence[int]) -> np.ndarray:
    """The position of the first mask token in each row of ``input_ids`` ``[b, L]``, as ``[b]``.

    Raises:
        GLMError (a ValueError): a row has no mask token.
    """
    is_mask = np.isin(input_ids, list(mask_token_ids))  # [b, L]
    missing = np.flatnonzero(~is_mask.any(axis=1))
    if missing.size:
        raise GLMError(
            f"input_ids: sample {int(missing[0])} has no mask token ([MASK], [sMASK] or [gMASK]); "
            "GLM generates only to fill a blank. Add [gMASK] at the end of the text for left-to-right "
            "generation, or [MASK]/[sMASK] where a word/sentence should be filled in"
        )
    return is_mask.argmax(axis=1)


def blank_infilling_mask(context_mask: np.ndarray, span_length: int) -> np.ndarray:
    """The 0/1 attention mask ``[b, 1, L+G, L+G]`` for a context ``[b, L]`` and a span of ``G`` tokens.

    Every row sees the context columns where ``context_mask`` is 1 (padding columns
    stay 0); the span block is lower-triangular; context rows never see the span.
    """
    batch, context_length = context_mask.shape
    total = context_length + span_length
    mask = np.zeros([batch, total, total], dtype=context_mask.dtype)
    mask[:, :, :context_length] = context_mask[:, None, :]
    mask[:, context_length:, context_length:] = causal_mask(span_length, context_mask.dtype)
    return mask[:, None]  # [b, 1, L+G, L+G]


def blank_infilling_positions(mask_positions: np.ndarray, context_length: int, span_length: int) -> np.ndarray:
    """``position_ids`` ``[b, 2, L+G]``: row 0 is ``0..L-1`` then the blank's position ``G`` times;
    row 1 is ``L`` zeros then ``1..G``."""
    batch = mask_positions.shape[0]
    positions = np.concatenate(
        [np.broadcast_to(np.arange(context_length), [batch, context_length]),
         np.repeat(mask_positions[:, None], span_length, axis=1)], axis=1)  # [b, L+G]
    block_positions = np.concatenate(
        [np.zeros([batch, context_length], dtype=ID_DTYPE),
         np.broadcast_to(np.arange(1, span_length + 1), [batch, span_length])], axis=1)  # [b, L+G]
    return np.stack([positions, block_positions], axis=1).astype(ID_DTYPE)  # [b, 2, L+G]


def part_b_sequence(part_a: Sequence[int], spans: Sequence[Tuple[int, Sequence[int]]], sop_token_id: int,
                    eop_token_id: int) -> Dict[str, np.ndarray]:
    """One sequence with several blanks: Part A, then ``<|startofpiece|> + span`` per blank, in order.

    Args:
        part_a: the text's ids, blanks included.
        spans: ``(mask position in part_a, span ids)`` per blank, in the order they are generated.
        sop_token_id, eop_token_id: ``<|startofpiece|>`` and ``<|endofpiece|>``.

    Returns:
        ``input_ids`` ``[T]``; ``position_ids`` ``[2, T]`` (each piece at its blank's position,
        block positions ``1..n+1``); ``labels`` ``[T]``: 0 over Part A, over each piece its
        next token (the span ids, then ``<|endofpiece|>``). Pair with :func:`part_a_b_mask`.
    """
    part_a = np.asarray(part_a, dtype=ID_DTYPE)
    zeros = np.zeros(len(part_a), dtype=ID_DTYPE)
    ids, positions, blocks, labels = [part_a], [np.arange(len(part_a))], [zeros], [zeros]
    for mask_position, span in spans:
        span = np.asarray(span, dtype=ID_DTYPE)
        ids.append(np.concatenate([[sop_token_id], span]))
        positions.append(np.full(len(span) + 1, mask_position))
        blocks.append(np.arange(1, len(span) + 2))
        labels.append(np.concatenate([span, [eop_token_id]]))
    return {
        "input_ids": np.concatenate(ids).astype(ID_DTYPE),
        "position_ids": np.stack([np.concatenate(positions), np.concatenate(blocks)]).astype(ID_DTYPE),  # [2, T]
        "labels": np.concatenate(labels).astype(ID_DTYPE),
    }


def part_a_b_mask(part_a_length: int, total: int, dtype=ID_DTYPE) -> np.ndarray:
    """The 0/1 mask ``[T, T]`` of one unpadded sequence: Part A (the first ``part_a_length``
    tokens) visible to all, Part B causal, Part A blind to Part B."""
    return blank_infilling_mask(np.ones([1, part_a_length], dtype=dtype), total - part_a_length)[0, 0]


def generation_inputs(input_ids: np.ndarray, attention_mask: np.ndarray, mask_token_ids: Sequence[int],
                      sop_token_id: int, max_gen_length: int) -> Dict[str, np.ndarray]:
    """Inputs to generate up to ``max_gen_length`` tokens into the first blank of each row.

    Args:
        input_ids: ``[b, L]`` right-padded context ids.
        attention_mask: ``[b, L]``, 1 for real tokens and 0 for padding.
        mask_token_ids: the ids of ``[MASK]``, ``[sMASK]`` and ``[gMASK]``.
        sop_token_id: the id of ``<|startofpiece|>``.
        max_gen_length: ``G``, the most tokens to generate.

    Returns:
        ``input_ids`` ``[b, L+1]`` (context + ``<|startofpiece|>``), ``position_ids``
        ``[b, 2, L+G]`` and ``attention_mask`` ``[b, 1, L+G, L+G]``.
    """
    batch, context_length = input_ids.shape
    mask_positions = first_mask_positions(input_ids, mask_token_ids)
    sop = np.full([batch, 1], sop_token_id, dtype=input_ids.dtype)
    return {
        "input_ids": np.concatenate([input_ids, sop], axis=1),  # [b, L+1]
        "position_ids": blank_infilling_positions(mask_positions, context_length, max_gen_length),
        "attention_mask": blank_infilling_mask(attention_mask, max_gen_length),
    }


def target_inputs(input_ids: np.ndarray, attention_mask: np.ndarray, targets: List[List[int]],
                  mask_token_ids: Sequence[int], sop_token_id: int, eop_token_id: int, pad_token_id: int,
                  max_gen_length: int, padding: bool = False) -> Dict[str, np.ndarray]:
    """Teacher-forced inputs (training or scoring) for target spans, as PaddleNLP builds them.

    Each target (ids, without special tokens) gets ``<|endofpiece|>`` appended and is
    cut to ``max_gen_length`` ids. The span fed to the model is ``<|startofpiece|>`` +
    target, padded with ``pad_token_id``; its labels are the target shifted by one.

    Args:
        input_ids, attention_mask: ``[b, L]`` right-padded context.
        targets: one list of ids per row.
        mask_token_ids, sop_token_id, eop_token_id, pad_token_id: special ids.
        max_gen_length: the most span tokens.
        padding: pad every span to ``max_gen_length`` (else ``G`` = the longest target + 1).

    Returns:
        ``input_ids`` ``[b, L+G]``, ``position_ids`` ``[b, 2, L+G]``, ``attention_mask``
        ``[b, 1, L+G, L+G]``, ``labels`` ``[b, L+G]`` (0 over the context, ``pad_token_id``
        past a target's end; PaddleNLP calls it ``label_ids``) and ``loss_mask``
        ``[b, L+G]`` (1 where the input token is a span token other than padding or
        ``<|endofpiece|>``, i.e. where the label is a target id or the closing
        ``<|endofpiece|>``).
    """
    batch, context_length = input_ids.shape
    if len(targets) != batch:
        raise GLMError(f"targets: got {len(targets)} targets for a batch of {batch}")
    targets = [(list(target) + [eop_token_id])[:max_gen_length] for target in targets]
    span_length = max_gen_length if padding else max(map(len, targets))
    span = np.full([batch, span_length + 1], pad_token_id, dtype=ID_DTYPE)  # sop + target + padding
    labels = np.full([batch, span_length], pad_token_id, dtype=ID_DTYPE)
    for row, target in enumerate(targets):
        span[row, 0] = sop_token_id
        span[row, 1:len(target) + 1] = target
        labels[row, :len(target)] = target
    span = span[:, :-1]  # [b, G]: the last id is never an input
    loss_mask = ((span != pad_token_id) & (span != eop_token_id)).astype(ID_DTYPE)
    context_zeros = np.zeros([batch, context_length], dtype=ID_DTYPE)
    inputs = generation_inputs(input_ids, attention_mask, mask_token_ids, sop_token_id, span_length)
    inputs["input_ids"] = np.concatenate([input_ids.astype(ID_DTYPE), span], axis=1)  # [b, L+G]
    inputs["labels"] = np.concatenate([context_zeros, labels], axis=1)  # [b, L+G]
    inputs["loss_mask"] = np.concatenate([context_zeros, loss_mask], axis=1)  # [b, L+G]
    return inputs


def multiple_choice_inputs(input_ids: np.ndarray, attention_mask: np.ndarray, choices: List[List[List[int]]],
                           mask_token_ids: Sequence[int], sop_token_id: int, pad_token_id: int) -> Dict[str, object]:
    """Cloze scoring inputs: every choice is a span filling the first blank, all in one sequence.

    For each row, the context is followed by one span per choice: ``<|startofpiece|>``
    + the choice without its last id. Span tokens see the real context and their own
    span causally, never another choice. Rows are right-padded to the longest with
    ``pad_token_id`` (PaddleNLP pads with 0; padding is never attended), padded
    ``position_ids`` repeat the last column and padded mask rows and columns are 0.

    Args:
        input_ids, attention_mask: ``[b, L]`` right-padded context.
        choices: per row, a list of choices, each a non-empty list of ids.
        mask_token_ids, sop_token_id, pad_token_id: special ids.

    Returns:
        ``input_ids`` ``[b, S]``, ``position_ids`` ``[b, 2, S]``, ``attention_mask``
        ``[b, 1, S, S]``, ``choice_ids`` (per row, a list of ``[c]`` id arrays: the
        labels of each span) and ``choice_indices`` (per row, a list of ``[c]`` arrays:
        the positions of each span in the sequence, whose logits predict ``choice_ids``).
    """
    if len(choices) != input_ids.shape[0]:
        raise GLMError(f"choices: got {len(choices)} lists of choices for a batch of {input_ids.shape[0]}")
    for row, row_choices in enumerate(choices):
        if not row_choices or not all(len(choice) for choice in row_choices):
            raise GLMError(f"choices: sample {row} needs at least one choice, and every choice at least one token")
    mask_positions = first_mask_positions(input_ids, mask_token_ids)
    samples = [_choice_sample(ids, mask, row_choices, int(position), sop_token_id)
               for ids, mask, row_choices, position in zip(input_ids, attention_mask, choices, mask_positions)]
    length = max(len(sample["input_ids"]) for sample in samples)
    batch = len(samples)
    tokens = np.full([batch, length], pad_token_id, dtype=ID_DTYPE)
    position_ids = np.zeros([batch, 2, length], dtype=ID_DTYPE)
    mask = np.zeros([batch, length, length], dtype=attention_mask.dtype)
    for row, sample in enumerate(samples):
        size = len(sample["input_ids"])
        tokens[row, :size] = sample["input_ids"]
        position_ids[row, :, :size] = sample["position_ids"]
        position_ids[row, :, size:] = sample["position_ids"][:, -1:]
        mask[row, :size, :size] = sample["attention_mask"]
    return {
        "input_ids": tokens,
        "position_ids": position_ids,
        "attention_mask": mask[:, None],  # [b, 1, S, S]
        "choice_ids": [sample["choice_ids"] for sample in samples],
        "choice_indices": [sample["choice_indices"] for sample in samples],
    }


def _choice_sample(context: np.ndarray, context_mask: np.ndarray, choices: List[List[int]], mask_position: int,
                   sop_token_id: int) -> Dict[str, object]:
    """One row of :func:`multiple_choice_inputs`, unpadded (PaddleNLP's ``_build_input_for_multiple_choice``)."""
    context_length = len(context)
    tokens, positions, block_positions = [context], [np.arange(context_length)], [np.zeros(context_length)]
    choice_ids, choice_indices = [], []
    start = context_length
    for choice in choices:
        choice = np.asarray(choice, dtype=ID_DTYPE)
        size = len(choice)
        tokens.append(np.concatenate([[sop_token_id], choice[:-1]]))
        positions.append(np.full(size, mask_position))
        block_positions.append(np.arange(1, size + 1))
        choice_ids.append(choice)
        choice_indices.append(np.arange(start, start + size, dtype=ID_DTYPE))
        start += size
    mask = np.zeros([start, start], dtype=context_mask.dtype)
    mask[:, :context_length] = context_mask[None, :]
    for indices in choice_indices:
        first, end = indices[0], indices[-1] + 1
        mask[first:end, first:end] = causal_mask(end - first, context_mask.dtype)
    return {
        "input_ids": np.concatenate(tokens).astype(ID_DTYPE),
        "position_ids": np.stack([np.concatenate(positions), np.concatenate(block_positions)]).astype(ID_DTYPE),
        "attention_mask": mask,
        "choice_ids": choice_ids,
        "choice_indices": choice_indices,
    }


# ----- positions of a whole input or run, checked against the position table

_PROMPT_TOO_LONG = "the prompt alone is too long: a {}-token prompt"


def position_table(rows: int) -> str:
    """How every message names a position table of ``rows`` rows (``max_sequence_length + 1`` with
    block positions): by the positions it holds, ``0..rows-1``."""
    return f"the model's position table (positions 0..{rows - 1})"


def default_positions(batch: int, length: int) -> paddle.Tensor:
    """``[b, 2, length]`` int64: positions ``0..length-1`` and zero block positions (a causal LM)."""
    positions = paddle.arange(length, dtype=ID_DTYPE).expand([batch, length])  # [b, length]
    return paddle.stack([positions, paddle.zeros_like(positions)], axis=1)  # [b, 2, length]


def with_block_row(position_ids: paddle.Tensor, block_position_encoding: bool) -> paddle.Tensor:
    """Positions ``[b, s]`` of a model without block positions as ``[b, 2, s]`` (a zero block row);
    anything else unchanged (the callers check the shape)."""
    if position_ids.ndim == 2 and not block_position_encoding:
        return paddle.stack([position_ids, paddle.zeros_like(position_ids)], axis=1)  # [b, 2, s]
    return position_ids


def check_position_table(largest: int, table_rows: int, what: str, advice: str) -> None:
    """Raise GLMError when position ``largest`` is past a position table of ``table_rows`` rows."""
    if largest >= table_rows:
        raise GLMError(_past_the_table(what, largest, table_rows, advice))


def _past_the_table(what: str, largest: int, table_rows: int, advice: str) -> str:
    return f"{what} needs position {largest}, past {position_table(table_rows)}: {advice}"


def check_positions(position_ids: paddle.Tensor, table_rows: int) -> None:
    """Every given position and block position indexes the position table (one host read)."""
    check_id_range(position_ids, "position_ids", table_rows, f"{position_table(table_rows)}: shorten the input")


def check_run_positions(position_ids: Optional[paddle.Tensor], prompt_length: int, new_tokens: int,
                        table_rows: int) -> None:
    """Refuse a ``generate`` run past the position table before anything of its length is allocated.

    A prompt whose own positions are past the table is refused as too long whatever the
    number of new tokens; otherwise the run's largest position (of :func:`extend_positions`,
    computed without building it) is checked. One host read.
    """
    total = prompt_length + new_tokens - 1
    if position_ids is None:
        prompt_largest, run_largest = prompt_length - 1, total - 1
    else:
        given = position_ids.shape[2]
        if given >= total:
            run_largest = position_ids[:, :, :total].max()
        else:  # the extension repeats row 0's last value and counts row 1 on from its last value
            run_largest = paddle.maximum(position_ids.max(), position_ids[:, 1, -1].max() + (total - given))
        both = paddle.stack([position_ids[:, :, :prompt_length].max(), run_largest]).numpy()
        prompt_largest, run_largest = (int(x) for x in both)
    check_position_table(prompt_largest, table_rows, _PROMPT_TOO_LONG.format(prompt_length), "shorten the text")
    check_position_table(run_largest, table_rows, f"generating {new_tokens} new tokens after a "
                         f"{prompt_length}-token prompt", "ask for fewer new tokens")


def extend_positions(position_ids: Optional[paddle.Tensor], batch: int, total: int) -> paddle.Tensor:
    """``[b, 2, total]`` positions: the given ones, extended with GLM's pattern (row 0 repeats its
    last value, the blank's position; block positions keep counting), or ``0..total-1`` and zeros."""
    if position_ids is None:
        return default_positions(batch, total)
    given = position_ids.shape[2]
    if given >= total:
        return position_ids[:, :, :total]
    extra = paddle.arange(1, total - given + 1, dtype="int64").reshape([1, total - given])  # [1, k]
    row0 = position_ids[:, 0, -1:].expand([batch, total - given])  # the mask position, repeated
    row1 = position_ids[:, 1, -1:] + extra  # block positions keep counting
    return paddle.concat([position_ids, paddle.stack([row0, row1], axis=1)], axis=2)  # [b, 2, total]


def generation_mask(attention_mask, batch: int, prompt_length: int, total: int) -> paddle.Tensor:
    """Boolean ``[b, 1, total, total]`` mask for a whole ``generate`` run.

    A 4-D 0/1 mask shorter than the run is extended: new rows see what its last row saw;
    a generated column ``j`` is visible exactly to rows ``i >= j`` (later tokens, never the
    prompt). A 1-D sep mask or None (causal) is defined for any length.
    """
    if attention_mask is None or np.ndim(attention_mask) <= 1:
        if attention_mask is not None and _is_float(attention_mask):
            raise GLMError("attention_mask: a 1-D (sep) mask holds integer positions, got floats")
        mask = build_attention_mask(attention_mask, batch, total, total)
    else:
        given = attention_mask if isinstance(attention_mask, paddle.Tensor) else \
            paddle.to_tensor(np.asarray(attention_mask))
        if given.ndim != 4 or given.shape[0] != batch or given.shape[1] != 1 or given.shape[2] != given.shape[3] \
                or given.shape[2] < prompt_length:
            raise GLMError(f"attention_mask: expected a square [{batch}, 1, L, L] mask with L >= {prompt_length} "
                           f"(the prompt length), got {list(given.shape)}")
        given = check_binary_mask(given)
        m = given.shape[2]
        if m >= total:
            mask = given[:, :, :total, :total]
        else:
            rows = paddle.concat([given, given[:, :, -1:].expand([batch, 1, total - m, m])], axis=2)  # [b, 1, total, m]
            mask = paddle.concat([rows, paddle.zeros([batch, 1, total, total - m], dtype="bool")], axis=3)
    i = paddle.arange(total, dtype="int64").reshape([total, 1])
    j = paddle.arange(total, dtype="int64").reshape([1, total])
    generated_col = paddle.logical_and(j >= prompt_length, i >= j)  # [total, total]
    return paddle.where((j >= prompt_length).expand([total, total]), generated_col, mask)


def _is_float(value) -> bool:
    if isinstance(value, paddle.Tensor):
        return value.is_floating_point()
    return np.asarray(value).dtype.kind == "f"
