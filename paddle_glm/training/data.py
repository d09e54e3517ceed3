"""Finetuning data: JSON lines of ``{"src": ..., "tgt": ...}`` (PaddleNLP's LLM format) -> GLM training batches.

A ``src`` without a mask token gets ``[gMASK]`` appended; ``tgt`` fills its first blank. A batch
is built by the tokenizer's public ``build_inputs_for_generation(..., targets=...)``: the
context (cut on the left to ``src_length`` tokens, keeping the mask) + ``<|startofpiece|>`` +
the target (cut on the right to ``tgt_length - 2`` tokens) + ``<|endofpiece|>``, with
``labels`` and ``loss_mask`` over the target.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
import paddle

from ..errors import GLMError
from ..tokenizer import with_mask


@dataclass(frozen=True)
class Example:
    src: str
    tgt: str
    line: int  # in its file, for error messages


def read_jsonl(path: str) -> List[Example]:
    """The examples of a JSON-lines file; a bad line raises ``GLMError("FILE:LINE: ...")``. Blank lines are skipped.

    Lines end at a newline only (``\n``, ``\r\n`` or ``\r``): U+2028, U+0085 and the other characters
    ``str.splitlines`` breaks at are text, which ``json.dumps(ensure_ascii=False)`` writes raw.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        raise GLMError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GLMError(f"{path}: cannot read it as UTF-8 text ({e})") from None
    examples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise GLMError(f"{path}:{number}: not valid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(record, dict):
            raise GLMError(f"{path}:{number}: expected a JSON object with \"src\" and \"tgt\"")
        for key in ("src", "tgt"):
            _check_field(path, number, record, key)
        examples.append(Example(record["src"], record["tgt"], number))
    if not examples:
        raise GLMError(f"{path}:1: no examples (the file is empty)")
    return examples


def _check_field(path: str, number: int, record: dict, key: str) -> None:
    """``record[key]`` must be a non-empty string."""
    shape = "each line is {\"src\": \"text with [MASK]\", \"tgt\": \"what fills it\"}"
    if key not in record:
        raise GLMError(f"{path}:{number}: missing \"{key}\" ({shape})")
    if not isinstance(record[key], str):
        raise GLMError(f"{path}:{number}: \"{key}\" must be a string, got {json.dumps(record[key])[:40]} ({shape})")
    if not record[key]:
        raise GLMError(f"{path}:{number}: \"{key}\" is empty ({shape})")


def check_examples(tokenizer, path: str, examples: Sequence[Example], src_length: int) -> None:
    """Tokenize every source as training will, so that a problem is reported before training starts
    (``FILE:LINE: ...``), not in the middle of it."""
    for example in examples:
        try:
            tokenizer(with_mask(example.src), truncation=True, max_length=src_length)
        except GLMError as e:
            raise GLMError(f"{path}:{example.line}: {e} (--src-length {src_length})") from None


class ExampleDataset(paddle.io.Dataset):
    """The examples of a file, for ``paddle.io.DataLoader`` (items are :class:`Example`)."""

    def __init__(self, examples: Sequence[Example]):
        super().__init__()
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]


class Collate:
    """``DataLoader`` collate_fn: a list of :class:`Example` -> numpy model inputs with ``labels``/``loss_mask``."""

    def __init__(self, tokenizer, src_length: int, tgt_length: int):
        self.tokenizer = tokenizer
        self.src_length = src_length
        self.tgt_length = tgt_length

    def __call__(self, examples: List[Example]) -> Dict[str, np.ndarray]:
        context = self.tokenizer([with_mask(e.src) for e in examples], return_tensors="np", padding=True,
                                 truncation=True, max_length=self.src_length)
        batch = self.tokenizer.build_inputs_for_generation(context, max_gen_length=self.tgt_length,
                                                           targets=[e.tgt for e in examples])
        return {key: batch[key] for key in ("input_ids", "position_ids", "attention_mask", "labels", "loss_mask")}


class ResumableBatchSampler(paddle.io.DistributedBatchSampler):
    """Paddle's ``DistributedBatchSampler`` that can skip the first batches of an epoch (a resumed run).

    Its shuffle is seeded by the epoch number (Paddle's choice): :meth:`start_epoch` sets it.
    """

    def __init__(self, dataset, batch_size: int, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, batch_size=batch_size, num_replicas=num_replicas, rank=rank, shuffle=True,
                         drop_last=False)
        self.seed = seed
        self.skip = 0

    def start_epoch(self, epoch: int, skip: int = 0) -> None:
        """Shuffle for ``epoch`` (the same order in every process and every run of a seed); skip ``skip`` batches."""
        self.set_epoch(self.seed * 100003 + epoch)
        self.skip = skip

    def __iter__(self):
        for i, batch in enumerate(super().__iter__()):
            if i >= self.skip:
                yield batch


def data_loader(examples: Sequence[Example], collate: Collate, batch_size: int, world_size: int, rank: int,
                seed: int) -> paddle.io.DataLoader:
    """Batches of this process's share (``batch_size`` rows each); see :class:`ResumableBatchSampler`."""
    dataset = ExampleDataset(examples)
    sampler = ResumableBatchSampler(dataset, batch_size, world_size, rank, seed)
    return paddle.io.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=0,
                                return_list=True)
