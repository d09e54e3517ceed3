"""``model.generate(...)`` for GLMForConditionalGeneration."""
from __future__ import annotations

from typing import Optional

from .api import generate


class GenerationMixin:
    def generate(self, input_ids, position_ids=None, attention_mask=None, *, max_length: Optional[int] = None,
                 max_new_tokens: Optional[int] = None, min_new_tokens: int = 0, eos_token_id: Optional[int] = None,
                 pad_token_id: Optional[int] = None, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, num_beams: int = 1, length_penalty: float = 1.0,
                 repetition_penalty: float = 1.0, bad_words_ids=None, seed: Optional[int] = None,
                 use_cache: bool = True, streamer=None, return_dict_in_generate: bool = False, **kwargs):
        """Generate tokens after ``input_ids`` (blank infilling or left-to-right), HF style.

        The usual inputs come from ``tokenizer.build_inputs_for_generation``: ``input_ids``
        (context + ``<|startofpiece|>``), 2-D ``position_ids`` ``[b, 2, L+G]`` and the 4-D
        ``attention_mask`` (HF's name ``generation_attention_mask`` is accepted too).
        Paddle tensors or numpy arrays are accepted.

        Args:
            max_length: length of the whole returned sequence (prompt included), HF's meaning.
            max_new_tokens: new tokens to generate (give this or ``max_length``). Default: what
                ``position_ids`` lay out (``max_gen_length``), else 20. Past the given
                ``position_ids`` GLM's pattern is extended; past the position table it is an error.
            min_new_tokens: eos is suppressed until this many tokens exist.
            eos_token_id: stop token (default ``<|endofpiece|>`` when the config tells it). Rows stop
                independently; finished rows are padded with ``pad_token_id`` (default: eos).
            do_sample, temperature, top_k, top_p, seed: sampling; ``seed`` makes it reproducible.
            num_beams, length_penalty: beam search (GNMT length penalty, as PaddleNLP).
            repetition_penalty: CTRL's penalty over every token so far.
            bad_words_ids: token ids (or id sequences) never to generate; default the
                config's ``bad_words_id`` (``[gMASK]``).
            use_cache: False recomputes the whole sequence each step (the reference path).
            streamer: ``put(tokens)`` after each step, ``end()`` at the end (not with beams).
            return_dict_in_generate: return a :class:`GenerateOutput` with per-step logits.

        Returns:
            int64 paddle tensor ``[b, prompt + new]``: the full sequences.
        """
        return generate(self, input_ids, position_ids, attention_mask, max_length=max_length,
                        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, eos_token_id=eos_token_id,
                        pad_token_id=pad_token_id, do_sample=do_sample, temperature=temperature, top_k=top_k,
                        top_p=top_p, num_beams=num_beams, length_penalty=length_penalty,
                        repetition_penalty=repetition_penalty, bad_words_ids=bad_words_ids, seed=seed,
                        use_cache=use_cache, streamer=streamer, return_dict_in_generate=return_dict_in_generate,
                        **kwargs)
