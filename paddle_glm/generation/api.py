"""``generate``: argument handling and dispatch to greedy/sampling decoding or beam search."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import paddle

from ..errors import GLMError
from ..ids import to_int64
from .beam import beam_search
from .config import DEFAULT_NEW_TOKENS, GenerationConfig
from .decode import StepRecord, TokenChooser, decode
from .inputs import covered_new_tokens, prepare_inputs
from .logits_process import LogitsSettings, normalize_bad_words


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


def resolve_settings(model, generation_config: Optional[GenerationConfig], overrides: dict,
                     tokenizer=None) -> GenerationConfig:
    """The validated settings of one ``generate`` call: ``generation_config`` (default: the
    model's ``generation_config``, else its config's defaults), with eos and the bad words where
    it has none (:meth:`GenerationConfig.resolved`), then ``overrides`` applied."""
    if generation_config is not None and not isinstance(generation_config, GenerationConfig):
        raise GLMError(f"generation_config: expected a GenerationConfig, got {type(generation_config).__name__}")
    base = generation_config or getattr(model, "generation_config", None) or \
        GenerationConfig.from_model_config(model.config)
    return base.resolved(model.config, tokenizer).updated(**overrides).validate()


def generate(model, input_ids, position_ids=None, attention_mask=None, *,
             generation_config: Optional[GenerationConfig] = None, streamer=None, generation_attention_mask=None,
             **overrides):
    """Generate continuations with GLM; see :meth:`GLMForConditionalGeneration.generate`.

    The settings are ``generation_config`` (default: the model's ``generation_config``)
    with ``overrides`` (fields of :class:`GenerationConfig`) applied.
    """
    cfg = resolve_settings(model, generation_config, overrides)
    if generation_attention_mask is not None:
        if attention_mask is not None:
            raise GLMError("pass attention_mask or generation_attention_mask (its HF name), not both")
        attention_mask = generation_attention_mask
    config = model.config
    input_ids = to_int64(input_ids, "input_ids")
    new_tokens = _new_token_count(input_ids.shape[-1], position_ids, cfg.max_length, cfg.max_new_tokens)
    if cfg.num_beams > 1 and streamer is not None:
        raise GLMError("streaming is not supported with beam search (num_beams > 1)")
    eos_token_id = cfg.eos_token_id
    pad_token_id = cfg.pad_token_id if cfg.pad_token_id is not None else \
        (eos_token_id if eos_token_id is not None else 0)
    settings = LogitsSettings(
        temperature=float(cfg.temperature), top_k=cfg.top_k, top_p=float(cfg.top_p),
        repetition_penalty=float(cfg.repetition_penalty),
        bad_words_ids=normalize_bad_words(cfg.bad_words_ids),
        eos_token_id=eos_token_id, min_new_tokens=cfg.min_new_tokens,
    )
    inputs = prepare_inputs(input_ids, position_ids, attention_mask, new_tokens, config.num_position_embeddings,
                            config.block_position_encoding)
    with paddle.no_grad():
        if cfg.num_beams > 1:
            sequences, beam_scores = beam_search(model, inputs, new_tokens, cfg.num_beams, settings,
                                                 length_penalty=cfg.length_penalty, eos_token_id=eos_token_id,
                                                 pad_token_id=pad_token_id, use_cache=cfg.use_cache)
            return GenerateOutput(sequences, sequences_scores=beam_scores) if cfg.return_dict_in_generate \
                else sequences
        record = StepRecord() if cfg.return_dict_in_generate else None
        chooser = TokenChooser.for_rows(settings, cfg.do_sample, inputs.batch_size, cfg.seed)
        sequences = decode(model, inputs, new_tokens, chooser, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                           use_cache=cfg.use_cache, streamer=streamer, record=record)
    if cfg.return_dict_in_generate:
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
