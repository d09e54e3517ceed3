"""``model.generate(...)`` and ``model.generation_config`` for GLMForConditionalGeneration."""
from __future__ import annotations

from typing import Optional

from .api import generate
from .config import GenerationConfig


class GenerationMixin:
    generation_config: Optional[GenerationConfig] = None

    @classmethod
    def from_pretrained(cls, path: str, *args, **kwargs):
        """The model (see ``PretrainedMixin.from_pretrained``) with its ``generation_config``:
        ``generation_config.json`` of ``path`` when present, and the tokenizer's ``<|endofpiece|>``
        as eos (see :meth:`GenerationConfig.from_pretrained`)."""
        model = super().from_pretrained(path, *args, **kwargs)
        model.generation_config = GenerationConfig.from_pretrained(path, model.config)
        return model

    def generate(self, input_ids, position_ids=None, attention_mask=None, *,
                 generation_config: Optional[GenerationConfig] = None, streamer=None, **kwargs):
        """Generate tokens after ``input_ids`` (blank infilling or left-to-right), HF style.

        The usual inputs come from ``tokenizer.build_inputs_for_generation``: ``input_ids``
        (context + ``<|startofpiece|>``), 2-D ``position_ids`` ``[b, 2, L+G]`` and the 4-D
        0/1 ``attention_mask`` (HF's name ``generation_attention_mask`` is accepted too).
        Paddle tensors, numpy arrays or lists of integers are accepted.

        Args:
            generation_config: the settings (default: ``self.generation_config``, read from
                ``generation_config.json`` by ``from_pretrained``, else the model config's defaults).
            streamer: ``put(tokens)`` after each step (an int64 numpy array ``[rows]``), ``end()``
                at the end (not with beams). One with ``before_step(state)`` (the server's) may drop
                rows before a step with ``state.drop_rows(flags)``: later steps run and ``put`` the
                kept rows only; a dropped row is returned padded with ``pad_token_id`` from its drop on.
            **kwargs: fields of :class:`GenerationConfig` overriding it, e.g. ``max_length``
                (the whole returned sequence, HF's meaning) or ``max_new_tokens`` (default: what
                ``position_ids`` lay out, else 20; past the given ``position_ids`` GLM's pattern
                is extended, past the position table it is an error), ``min_new_tokens``,
                ``eos_token_id``, ``pad_token_id``, ``do_sample``, ``temperature``, ``top_k``,
                ``top_p``, ``seed``, ``num_beams``, ``length_penalty``, ``repetition_penalty``,
                ``bad_words_ids``, ``use_cache``, ``return_dict_in_generate``. An unknown name
                is an error.

        Returns:
            int64 paddle tensor ``[b, prompt + new]``: the full sequences (a
            :class:`GenerateOutput` with ``return_dict_in_generate=True``).
        """
        return generate(self, input_ids, position_ids, attention_mask, generation_config=generation_config,
                        streamer=streamer, **kwargs)
