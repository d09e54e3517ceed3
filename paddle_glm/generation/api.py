"""``generate``: argument handling and dispatch to greedy/sampling decoding or beam search."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import paddle

from ..errors import GLMError
from .beam import beam_search
from .decode import StepRecord, decode
from .inputs import covered_new_tokens, prepare_inputs, to_int64
from .logits_process import LogitsSettings, normalize_bad_words

DEFAULT_NEW_TOKENS = 20  # HF's default when nothing says how long to generate


@dataclass
class GenerateOutput:
    """``generate(..., return_dict_in_generate=True)``.

    Attributes:
        sequences: int64 ``[b, prompt + new]``, as ``generate`` returns by default.
        logits: per step, the raw next-token logits ``[b, vocab]`` (greedy/sampling only).
        scores: per step, the logits after processors and warpers (greedy/sampling only).
        sequences_scores: beam search: the length-penalised log-probability of each returned sequence.
    """

    sequences: paddle.Tensor
    logits: Optional[List[paddle.Tensor]] = None
    scores: Optional[List[paddle.Tensor]] = None
    sequences_scores: Optional[np.ndarray] = None


def default_eos_token_id(config) -> Optional[int]:
    """``<|endofpiece|>`` when the config tells it: its ``eop_token_id``, or GLM's token table
    when ``bad_words_id`` is the single id of ``[gMASK]`` (N+9, so ``<|endofpiece|>`` is N+7),
    as in PaddleNLP's glm-10b/large-chinese configs."""
    if config.extra.get("eop_token_id") is not None:
        return int(config.extra["eop_token_id"])
    if config.bad_words_id and len(config.bad_words_id) == 1:
        return int(config.bad_words_id[0]) - 2
    return None


def default_bad_words(config) -> List[int]:
    """The config's ``bad_words_id`` ([gMASK]) and the embedding rows past it: GLM pads its
    vocabulary after [gMASK], its last token (50010 tokens in 50048 rows for glm-10b-chinese)."""
    banned = [int(t) for t in config.bad_words_id or []]
    return banned + list(range(max(banned) + 1, config.vocab_size)) if banned else []


def bad_words_with_tokenizer(config, tokenizer) -> List[int]:
    """The config's bad words plus every embedding row the tokenizer has no token for.

    glm-10b-chinese pads its vocabulary to 50048 rows while its tokenizer knows
    50010 ids; generating one of the others would give text nobody can decode.
    """
    return list(config.bad_words_id or []) + list(range(tokenizer.vocab_size, config.vocab_size))


def generate(model, input_ids, position_ids=None, attention_mask=None, *, max_length: Optional[int] = None,
             max_new_tokens: Optional[int] = None, min_new_tokens: int = 0, eos_token_id: Optional[int] = None,
             pad_token_id: Optional[int] = None, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, num_beams: int = 1, length_penalty: float = 1.0, repetition_penalty: float = 1.0,
             bad_words_ids=None, seed: Optional[int] = None, use_cache: bool = True, streamer=None,
             return_dict_in_generate: bool = False, generation_attention_mask=None, **unknown):
    """Generate continuations with GLM; see :meth:`GLMForConditionalGeneration.generate`."""
    if unknown:
        raise GLMError(f"generate() got unexpected argument(s): {', '.join(sorted(unknown))}")
    if generation_attention_mask is not None:
        if attention_mask is not None:
            raise GLMError("pass attention_mask or generation_attention_mask (its HF name), not both")
        attention_mask = generation_attention_mask
    config = model.config
    input_len = to_int64(input_ids, "input_ids").shape[-1]
    new_tokens = _new_token_count(input_len, position_ids, max_length, max_new_tokens)
    if num_beams < 1:
        raise GLMError(f"num_beams must be >= 1, got {num_beams}")
    if num_beams > 1 and do_sample:
        raise GLMError("beam sampling is not supported: use num_beams > 1 or do_sample=True, not both")
    if num_beams > 1 and streamer is not None:
        raise GLMError("streaming is not supported with beam search (num_beams > 1)")
    eos_token_id = default_eos_token_id(config) if eos_token_id is None else int(eos_token_id)
    pad_token_id = pad_token_id if pad_token_id is not None else (eos_token_id if eos_token_id is not None else 0)
    settings = LogitsSettings(
        temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
        bad_words_ids=normalize_bad_words(default_bad_words(config) if bad_words_ids is None else bad_words_ids),
        eos_token_id=eos_token_id, min_new_tokens=min_new_tokens,
    ).validate()
    inputs = prepare_inputs(input_ids, position_ids, attention_mask, new_tokens, config.num_position_embeddings,
                            config.block_position_encoding)
    with paddle.no_grad():
        if num_beams > 1:
            sequences, beam_scores = beam_search(model, inputs, new_tokens, num_beams, settings,
                                                 length_penalty=length_penalty, eos_token_id=eos_token_id,
                                                 pad_token_id=pad_token_id, use_cache=use_cache)
            return GenerateOutput(sequences, sequences_scores=beam_scores) if return_dict_in_generate else sequences
        record = StepRecord() if return_dict_in_generate else None
        rng = np.random.default_rng(seed) if do_sample else None
        sequences = decode(model, inputs, new_tokens, settings, sampling=do_sample, rng=rng,
                           eos_token_id=eos_token_id, pad_token_id=pad_token_id, use_cache=use_cache,
                           streamer=streamer, record=record)
    if return_dict_in_generate:
        return GenerateOutput(sequences, logits=record.logits, scores=record.scores)
    return sequences


def _new_token_count(input_len: int, position_ids, max_length: Optional[int], max_new_tokens: Optional[int]) -> int:
    if max_length is not None and max_new_tokens is not None:
        raise GLMError("pass max_length (whole sequence) or max_new_tokens (new tokens), not both")
    if max_new_tokens is not None:
        count = max_new_tokens
        what = f"max_new_tokens={max_new_tokens}"
    elif max_length is not None:
        count = max_length - input_len
        what = f"max_length={max_length} with a {input_len}-token input"
    else:
        count = covered_new_tokens(input_len, position_ids) or DEFAULT_NEW_TOKENS
        what = "the default"
    if count < 1:
        raise GLMError(f"nothing to generate: {what} leaves {count} new tokens")
    return int(count)
