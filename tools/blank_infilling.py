"""GLM's autoregressive blank-infilling objective, in the layout ``paddle_glm.infilling`` generates with
(both laid out by ``paddle_glm.glm_layout``).

A training sample is one corpus line with some blanks:

* **Part A** is the corrupted text, ``tokenizer(text)["input_ids"]``: ``[CLS]``, the line
  with each blank replaced by a mask token, ``<|endoftext|>``. Part A sees all of Part A.
* **Part B** holds, for each blank in text order, ``<|startofpiece|> t1..tn``; its targets
  are ``t1..tn <|endofpiece|>``. Its position ids are the blank's index in Part A, its
  block position ids ``1..n+1``. Part B sees Part A and itself causally, so a span sees
  the spans before it, as ``fill_blanks`` feeds them back.

Blanks are chosen in characters and the corrupted text is re-tokenized, so every blank
a user types at a character boundary is tokenized exactly as in training. Three kinds
of samples, as in GLM:

* ``[MASK]``: spans with Poisson(3) lengths covering 25-50% of the characters (GLM uses
  15%; denser corruption gives more targets, and more span ends, per sample);
* ``[gMASK]``: a prefix of the line followed by ``[gMASK]``, the rest is one span
  (left-to-right generation);
* ``[sMASK]``: one whole sentence of a line of several sentences.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from paddle_glm.glm_layout import part_a_b_mask, part_b_sequence
from paddle_glm.tokenizer import GMASK_TOKEN, MASK_TOKEN, SMASK_TOKEN, GLMChineseTokenizer

SPAN_LENGTH_MEAN = 3  # GLM's Poisson lambda for span lengths
# Share of a line's characters in [MASK] spans, drawn uniformly per sample.
MASK_RATIO_RANGE = (0.25, 0.5)
# Sampling weights of the three kinds; [sMASK] falls back to [MASK] on one-sentence lines.
# [MASK] dominates: [gMASK] and [sMASK] spans (left-to-right text up to a sentence or line
# end) are learned much sooner.
KIND_WEIGHTS = {MASK_TOKEN: 0.8, GMASK_TOKEN: 0.15, SMASK_TOKEN: 0.05}
# Loss weight of the <|endofpiece|> targets: ending a span where the text after its blank
# starts is the hardest decision to learn (the model has to compare its memorized
# continuation with the right context); the other targets weigh 1.
EOP_LOSS_WEIGHT = 2.0
SENTENCE = re.compile(r"[^。！？；]+[。！？；]?")

Blank = Tuple[int, int, str]  # (start, end) characters of a line and the mask token replacing them


@dataclass
class Sample:
    """One sequence: Part A then Part B, as lists of equal length ``T`` (``part_a`` ids are Part A)."""

    input_ids: List[int]
    positions: List[int]
    block_positions: List[int]
    labels: List[int]  # the next id at Part B positions, 0 elsewhere
    part_a: int

    def __len__(self) -> int:
        return len(self.input_ids)


def mask_blanks(length: int, rng: np.random.Generator) -> List[Blank]:
    """``[MASK]`` spans for a line of ``length`` characters: Poisson lengths until a random share
    (:data:`MASK_RATIO_RANGE`) is covered, placed at random with at least one character between
    two spans and one left visible."""
    budget = max(1, round(rng.uniform(*MASK_RATIO_RANGE) * length))
    lengths: List[int] = []
    while sum(lengths) < budget:
        lengths.append(max(1, int(rng.poisson(SPAN_LENGTH_MEAN))))
    while len(lengths) > 1 and sum(lengths) + len(lengths) - 1 > length - 1:
        lengths.pop()
    lengths[0] = min(lengths[0], length - 1)
    free = length - sum(lengths) - (len(lengths) - 1)  # characters to spread over the gaps
    cuts = np.sort(rng.integers(0, free + 1, size=len(lengths)))
    gaps = np.diff(np.concatenate([[0], cuts]))  # extra room before each span
    blanks, start = [], 0
    for i, (gap, span) in enumerate(zip(gaps, lengths)):
        start += int(gap) + (1 if i else 0)
        blanks.append((start, start + span, MASK_TOKEN))
        start += span
    return blanks


def choose_blanks(line: str, rng: np.random.Generator) -> List[Blank]:
    """The blanks of one sample: a kind drawn by :data:`KIND_WEIGHTS`, then its spans."""
    kinds, weights = zip(*KIND_WEIGHTS.items())
    kind = kinds[rng.choice(len(kinds), p=np.array(weights) / sum(weights))]
    if kind == GMASK_TOKEN:
        cut = int(rng.integers(1, len(line)))
        return [(cut, len(line), GMASK_TOKEN)]
    sentences = [m.span() for m in SENTENCE.finditer(line)]
    if kind == SMASK_TOKEN and len(sentences) > 1:
        start, end = sentences[rng.integers(len(sentences))]
        return [(start, end, SMASK_TOKEN)]
    return mask_blanks(len(line), rng)


def build_sample(tokenizer: GLMChineseTokenizer, line: str, blanks: Sequence[Blank]) -> Sample:
    """Part A (``line`` with ``blanks`` replaced by their mask tokens) and Part B (the spans in order)."""
    pieces, previous_end = [], 0
    for start, end, token in blanks:
        pieces += [line[previous_end:start], token]
        previous_end = end
    part_a = tokenizer("".join(pieces) + line[previous_end:])["input_ids"]
    mask_positions = [i for i, token_id in enumerate(part_a) if token_id in tokenizer.mask_token_ids]
    assert len(mask_positions) == len(blanks), (line, blanks)
    spans = [(position, tokenizer.encode(line[start:end], add_special_tokens=False))
             for position, (start, end, _) in zip(mask_positions, blanks)]
    sequence = part_b_sequence(part_a, spans, tokenizer.sop_token_id, tokenizer.eop_token_id)
    positions, block_positions = sequence["position_ids"].tolist()
    return Sample(sequence["input_ids"].tolist(), positions, block_positions, sequence["labels"].tolist(), len(part_a))


def collate(samples: Sequence[Sample], pad_token_id: int, eop_token_id: int) -> dict:
    """Right-padded numpy arrays: ``input_ids`` ``[b, T]``, ``position_ids`` ``[b, 2, T]``, the 0/1
    ``attention_mask`` ``[b, 1, T, T]`` (padding rows and columns 0), ``labels`` ``[b, T]`` and the
    float ``loss_mask`` ``[b, T]`` (the loss weight of Part B targets, 0 elsewhere)."""
    batch, length = len(samples), max(map(len, samples))
    input_ids = np.full([batch, length], pad_token_id, dtype="int64")
    position_ids = np.zeros([batch, 2, length], dtype="int64")
    attention_mask = np.zeros([batch, 1, length, length], dtype="int64")
    labels = np.zeros([batch, length], dtype="int64")
    loss_mask = np.zeros([batch, length], dtype="float32")
    for row, sample in enumerate(samples):
        n, a = len(sample), sample.part_a
        input_ids[row, :n] = sample.input_ids
        position_ids[row, 0, :n] = sample.positions
        position_ids[row, 1, :n] = sample.block_positions
        attention_mask[row, 0, :n, :n] = part_a_b_mask(a, n)
        labels[row, :n] = sample.labels
        loss_mask[row, a:n] = np.where(labels[row, a:n] == eop_token_id, EOP_LOSS_WEIGHT, 1.0)
    return dict(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                labels=labels, loss_mask=loss_mask)


def batches(tokenizer: GLMChineseTokenizer, lines: Sequence[str], batch_size: int, rng: np.random.Generator):
    """An endless stream of batches (lists of samples): each epoch visits every line once with
    fresh blanks; samples are grouped by length (within a window of a few batches) to limit padding."""
    window = batch_size * 8
    while True:
        order = rng.permutation(len(lines))
        for lo in range(0, len(order), window):
            samples = [build_sample(tokenizer, lines[i], choose_blanks(lines[i], rng)) for i in order[lo:lo + window]]
            samples.sort(key=len)
            groups = [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]
            for g in rng.permutation(len(groups)):
                yield groups[g]
