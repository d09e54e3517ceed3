"""Beam search over the KV cache, with HF/PaddleNLP's scoring.

Each step keeps ``num_beams`` live beams per input row out of the ``2 * num_beams``
best (beam, token) pairs; a beam that emits eos becomes a finished hypothesis
scored ``sum_logprobs / ((generated + 5) / 6) ** length_penalty`` (the GNMT
penalty PaddleNLP uses). A row is done when it has ``num_beams`` hypotheses and
no live beam can beat the worst of them.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import paddle
import paddle.nn.functional as F

from .decode import DecodeRun, decode_one_token, prefill
from .inputs import GenerationInputs
from .logits_process import LogitsSettings, process_logits, raise_problems, row_problems

_UNREACHABLE = -1e9  # initial score of beams 1..K-1, so step one expands beam 0 only


class Hypotheses:
    """The ``num_beams`` best finished sequences of one input row."""

    def __init__(self, num_beams: int, length_penalty: float):
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.beams: List[Tuple[float, List[int]]] = []

    def score(self, sum_logprobs: float, generated: int) -> float:
        return sum_logprobs / (((generated + 5) / 6) ** self.length_penalty)

    @property
    def worst(self) -> float:
        return min(s for s, _ in self.beams)

    def add(self, tokens: List[int], sum_logprobs: float, generated: int) -> None:
        score = self.score(sum_logprobs, generated)
        if len(self.beams) < self.num_beams or score > self.worst:
            self.beams.append((score, tokens))
            if len(self.beams) > self.num_beams:
                self.beams.remove(min(self.beams, key=lambda b: b[0]))

    def is_done(self, best_sum_logprobs: float, generated: int) -> bool:
        return len(self.beams) >= self.num_beams and self.worst >= self.score(best_sum_logprobs, generated)

    def best(self) -> Tuple[float, List[int]]:
        return max(self.beams, key=lambda b: b[0])


def expand_for_beams(inputs: GenerationInputs, num_beams: int) -> GenerationInputs:
    """Repeat every row ``num_beams`` times (rows of one input stay adjacent)."""
    index = paddle.arange(inputs.batch_size, dtype="int64").repeat_interleave(num_beams)
    return GenerationInputs(paddle.index_select(inputs.input_ids, index),
                            paddle.index_select(inputs.position_ids, index), paddle.index_select(inputs.mask, index))


def beam_search(model, inputs: GenerationInputs, new_tokens: int, num_beams: int, settings: LogitsSettings, *,
                length_penalty: float, eos_token_id: Optional[int], pad_token_id: int, use_cache: bool,
                decode_step=None) -> Tuple[paddle.Tensor, np.ndarray]:
    """The best sequence per input row ``[b, prompt + generated]`` (eos appended, then padding) and its score.

    One device read per step: the top candidates and the rows' problem flags together; the
    sequences are kept on the host, where the beams are chosen. ``decode_step`` replaces
    ``model.decode_step`` (e.g. :func:`~paddle_glm.generation.decode.static_decode_step`).
    """
    b, n0 = inputs.batch_size, inputs.prompt_length
    inputs = expand_for_beams(inputs, num_beams)
    run = DecodeRun(model, inputs, use_cache, decode_step)
    history = inputs.input_ids.numpy()  # [b*K, length], the beams' tokens on the host
    beam_scores = np.zeros((b, num_beams), dtype=np.float64)
    beam_scores[:, 1:] = _UNREACHABLE
    hyps = [Hypotheses(num_beams, length_penalty) for _ in range(b)]
    done = [False] * b
    sequences = inputs.input_ids
    logits = prefill(run, sequences)
    for step in range(new_tokens):
        if step:
            logits = decode_one_token(run, sequences)  # [b*K, V]
        top_scores, top_ids = _candidates(logits, sequences, step, settings, beam_scores, 2 * num_beams)
        next_rows, next_tokens = _advance(top_scores, top_ids, logits.shape[-1], history, hyps, done, beam_scores,
                                          step, n0, eos_token_id, pad_token_id)
        history = np.concatenate([history[next_rows.reshape([-1])], next_tokens.reshape([-1, 1])], axis=1)
        if all(done):
            break
        if step + 1 < new_tokens:
            index = paddle.to_tensor(next_rows.reshape([-1]))
            sequences = paddle.to_tensor(history)
            run.reorder(index)
    return _finalize(history, beam_scores, hyps, done, n0, num_beams, eos_token_id, pad_token_id, new_tokens)


def _candidates(logits: paddle.Tensor, sequences: paddle.Tensor, step: int, settings: LogitsSettings,
                beam_scores: np.ndarray, count: int) -> Tuple[np.ndarray, np.ndarray]:
    """The ``count`` best (score, beam * vocab + token) of each input row, read in one go with the
    rows' problem flags (raised as GLMError)."""
    b, num_beams = beam_scores.shape
    logprobs = process_logits(F.log_softmax(logits.astype("float32"), axis=-1), sequences, step, settings,
                              sampling=False)
    problems = row_problems(logits, logprobs)
    totals = logprobs + paddle.to_tensor(beam_scores.reshape([-1, 1]), dtype="float32")
    top_scores, top_ids = paddle.topk(totals.reshape([b, num_beams * logprobs.shape[-1]]), count, axis=1)
    # float64 holds the float32 scores and the ids (< 2**53) exactly
    host = paddle.concat([top_scores.astype("float64").reshape([-1]), top_ids.astype("float64").reshape([-1]),
                          problems.astype("float64")]).numpy()
    raise_problems(host[2 * b * count:].astype(np.int64), step)
    return host[:b * count].reshape([b, count]), host[b * count:2 * b * count].reshape([b, count]).astype(np.int64)


def _advance(top_scores: np.ndarray, top_ids: np.ndarray, vocab: int, history: np.ndarray, hyps: List[Hypotheses],
             done: List[bool], beam_scores: np.ndarray, step: int, n0: int, eos_token_id: Optional[int],
             pad_token_id: int) -> Tuple[np.ndarray, np.ndarray]:
    """Each input row's next beams from its candidates: ``(source beam rows, tokens)``, each ``[b, K]``;
    an eos among the top K candidates finishes a hypothesis. Updates ``beam_scores`` and ``done``."""
    b, num_beams = beam_scores.shape
    next_rows, next_tokens = np.zeros((b, num_beams), np.int64), np.full((b, num_beams), pad_token_id, np.int64)
    for row in range(b):
        if done[row]:
            next_rows[row] = row * num_beams  # keep a placeholder beam alive; its output is ignored
            beam_scores[row] = 0.0
            continue
        kept = 0
        for rank, (score, flat) in enumerate(zip(top_scores[row], top_ids[row])):
            beam, token = divmod(int(flat), vocab)
            source = row * num_beams + beam
            if eos_token_id is not None and token == eos_token_id:
                if rank < num_beams:
                    hyps[row].add(history[source, n0:].tolist(), float(score), step)
                continue
            next_rows[row, kept], next_tokens[row, kept], beam_scores[row, kept] = source, token, score
            kept += 1
            if kept == num_beams:
                break
        done[row] = hyps[row].is_done(float(top_scores[row].max()), step)
    return next_rows, next_tokens


def _finalize(history: np.ndarray, beam_scores: np.ndarray, hyps: List[Hypotheses], done: List[bool], n0: int,
              num_beams: int, eos_token_id: Optional[int], pad_token_id: int, new_tokens: int
              ) -> Tuple[paddle.Tensor, np.ndarray]:
    for row, hyp in enumerate(hyps):
        if not done[row]:
            for beam in range(num_beams):
                generated = history[row * num_beams + beam, n0:].tolist()
                hyp.add(generated, float(beam_scores[row, beam]), len(generated))
    best = [hyp.best() for hyp in hyps]
    outputs = []
    for _score, tokens in best:
        if eos_token_id is not None and len(tokens) < new_tokens:
            tokens = tokens + [eos_token_id]
        outputs.append(tokens)
    width = max(len(t) for t in outputs)
    prompt = history[::num_beams, :n0]
    out = np.full((len(outputs), n0 + width), pad_token_id, dtype=np.int64)
    out[:, :n0] = prompt
    for row, tokens in enumerate(outputs):
        out[row, n0:n0 + len(tokens)] = tokens
    return paddle.to_tensor(out), np.array([s for s, _ in best])
