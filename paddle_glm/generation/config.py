"""``GenerationConfig``: every setting of ``generate``, held once (HF/PaddleNLP style).

``model.generate``, :func:`paddle_glm.fill_blanks` and the CLI flags all read their
settings from this dataclass: a field's ``metadata["help"]`` is its documentation and,
with ``metadata["flag"]``, its ``paddle-glm`` command-line flag.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from ..errors import GLMError
from ..io_utils import atomic_write_text, read_json_object, require_local_dir

GENERATION_CONFIG_NAME = "generation_config.json"
# Keys HF and PaddleNLP write into generation_config.json that are bookkeeping, not settings.
_METADATA_KEYS = ("_from_model_config", "transformers_version", "paddlenlp_version")
_DERIVED_MARK = "_from_model_config"  # true: written from config.json by save_pretrained, no user setting
DEFAULT_NEW_TOKENS = 20  # HF's default when nothing says how long to generate


def _setting(default, help: str, flag: bool = False):
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass
class GenerationConfig:
    """How ``generate`` decodes (HF's meanings). Give it as ``generate(..., generation_config=cfg)``
    and override single fields with keywords: ``generate(..., generation_config=cfg, top_k=5)``.

    ``GenerationConfig.from_pretrained(dir)`` reads ``generation_config.json`` (defaults when the
    file is absent); ``save_pretrained(dir)`` writes the fields that differ from the defaults.
    Unknown keys are an error naming them. Each field's ``metadata["help"]`` documents it.
    """

    max_length: Optional[int] = _setting(None, "length of the whole returned sequence (prompt included)")
    max_new_tokens: Optional[int] = _setting(
        None, "new tokens to generate (give this or max_length; default: what position_ids lay out, else "
              f"{DEFAULT_NEW_TOKENS})", flag=True)
    min_new_tokens: int = _setting(0, "eos is suppressed until this many new tokens exist")
    do_sample: bool = _setting(False, "sample instead of greedy decoding", flag=True)
    temperature: float = _setting(1.0, "sampling temperature (> 0; 1.0 = off)", flag=True)
    top_k: int = _setting(0, "sample from the k most likely tokens (0 = off)", flag=True)
    top_p: float = _setting(1.0, "nucleus sampling mass, in (0, 1] (1.0 = off)", flag=True)
    num_beams: int = _setting(1, "beam search with this many beams (1 = off)", flag=True)
    length_penalty: float = _setting(1.0, "beam search: GNMT length penalty exponent")
    repetition_penalty: float = _setting(1.0, "CTRL repetition penalty (1.0 = off)", flag=True)
    bad_words_ids: Optional[List] = _setting(
        None, "token ids (or id sequences) never to generate; default: the model config's bad_words_id "
              "([gMASK]) and the embedding rows the tokenizer has no token for (see resolved())")
    eos_token_id: Optional[int] = _setting(None, "stop token (<|endofpiece|>); rows stop independently")
    pad_token_id: Optional[int] = _setting(None, "fills finished rows (default: eos)")
    seed: Optional[int] = _setting(None, "makes sampling reproducible (>= 0)", flag=True)
    use_cache: bool = _setting(True, "False recomputes the whole sequence each step (the reference path)")
    return_dict_in_generate: bool = _setting(False, "return a GenerateOutput with per-step logits")

    # ----- building

    @classmethod
    def field_names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "GenerationConfig") -> GenerationConfig:
        """A config from a mapping; unknown keys are an error that names them."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise GLMError(f"{source}: unknown generation setting(s): {', '.join(unknown)} "
                           f"(known: {', '.join(cls.field_names())})")
        return cls(**values)

    @classmethod
    def from_model_config(cls, config, tokenizer=None) -> GenerationConfig:
        """GLM's defaults for a model: eos is ``<|endofpiece|>`` (the config's ``eop_token_id``, else
        the tokenizer's); with a tokenizer, the bad words are :func:`default_bad_words` (without
        one they are decided where the settings are used: see :meth:`resolved`)."""
        eop = config.extra.get("eop_token_id")
        if eop is None and tokenizer is not None:
            eop = tokenizer.eop_token_id
        return cls(eos_token_id=None if eop is None else int(eop),
                   bad_words_ids=None if tokenizer is None else default_bad_words(config, tokenizer))

    def resolved(self, model_config, tokenizer=None) -> GenerationConfig:
        """This config with GLM's eos and bad words where it has none: the one place they are decided
        (:meth:`from_model_config`, :func:`default_bad_words`)."""
        defaults = GenerationConfig.from_model_config(model_config, tokenizer)
        eos = defaults.eos_token_id if self.eos_token_id is None else self.eos_token_id
        bad = default_bad_words(model_config, tokenizer) if self.bad_words_ids is None else self.bad_words_ids
        return dataclasses.replace(self, eos_token_id=eos, bad_words_ids=bad)

    @classmethod
    def from_pretrained(cls, path: str, model_config=None) -> GenerationConfig:
        """``generation_config.json`` of a local directory, over the model's defaults.

        Without the file: :meth:`from_model_config` (with the directory's tokenizer, when it holds
        one) when ``model_config`` is given, else the defaults with the tokenizer's
        ``<|endofpiece|>`` as eos. A file marked ``"_from_model_config": true`` is ignored: PaddleNLP's and HF's
        ``save_pretrained`` derive it from ``config.json`` with their own defaults (PaddleNLP 2.8.1
        writes ``max_length: 20`` and ``use_cache: false`` for GLM), not from a user's choice.
        """
        require_local_dir(path, what="generation config")
        from ..tokenizer import MODEL_FILE, GLMChineseTokenizer

        tokenizer = GLMChineseTokenizer.from_pretrained(path) if os.path.isfile(os.path.join(path, MODEL_FILE)) \
            else None
        if model_config is not None:
            config = cls.from_model_config(model_config, tokenizer)
        else:
            config = cls(eos_token_id=None if tokenizer is None else tokenizer.eop_token_id)
        file = os.path.join(path, GENERATION_CONFIG_NAME)
        if os.path.isfile(file):
            config = cls.from_dict({**dataclasses.asdict(config), **_read_settings(file)}, source=file)
            for name, message in config.problems():
                raise GLMError(f"{file}: {name}: {message}")
        return config.validate()

    def save_pretrained(self, path: str) -> None:
        """Write ``generation_config.json`` (the fields that differ from the defaults) into ``path``."""
        os.makedirs(path, exist_ok=True)
        default = GenerationConfig()
        diff = {name: value for name, value in dataclasses.asdict(self).items() if getattr(default, name) != value}
        atomic_write_text(os.path.join(path, GENERATION_CONFIG_NAME), json.dumps(diff, indent=2, sort_keys=True) + "\n")

    def updated(self, **overrides) -> GenerationConfig:
        """A copy with ``overrides`` applied (unknown names are an error naming them).

        Giving one of ``max_length`` / ``max_new_tokens`` drops the other from this config,
        so a keyword always wins over the config's length.
        """
        unknown = sorted(set(overrides) - set(self.field_names()))
        if unknown:
            raise GLMError(f"generate() got unexpected argument(s): {', '.join(unknown)}")
        values = dataclasses.asdict(self)
        for given, other in (("max_length", "max_new_tokens"), ("max_new_tokens", "max_length")):
            if overrides.get(given) is not None and other not in overrides:
                values[other] = None
        values.update(overrides)
        return GenerationConfig(**values)

    # ----- validation (the only place that checks the settings)

    def problems(self) -> Iterator[Tuple[str, str]]:
        """``(field, message)`` for every invalid setting."""
        for name in ("max_length", "max_new_tokens", "eos_token_id", "pad_token_id", "seed"):
            value = getattr(self, name)
            if value is not None and not _is_int(value):
                yield name, f"expected an integer, got {value!r}"
        if _is_int(self.max_new_tokens) and self.max_new_tokens < 1:
            yield "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}"
        if _is_int(self.seed) and self.seed < 0:
            yield "seed", f"must be >= 0, got {self.seed}"
        for name, minimum in (("min_new_tokens", 0), ("top_k", 0), ("num_beams", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < minimum:
                yield name, f"expected an integer >= {minimum}, got {value!r}"
        for name in ("do_sample", "use_cache", "return_dict_in_generate"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                yield name, f"expected True or False, got {getattr(self, name)!r}"
        temperature = _as_float(self.temperature)
        # a denormal or zero temperature overflows the scaled logits to inf
        if temperature is None or not math.isfinite(temperature) or temperature < np.finfo(np.float32).tiny:
            yield "temperature", f"must be a finite number > {np.finfo(np.float32).tiny:.3g}, got {self.temperature!r}"
        top_p = _as_float(self.top_p)
        if top_p is None or not 0 < top_p <= 1:
            yield "top_p", f"must be in (0, 1], got {self.top_p!r}"
        penalty = _as_float(self.repetition_penalty)
        if penalty is None or not math.isfinite(penalty) or penalty <= 0:
            yield "repetition_penalty", f"must be a finite number > 0, got {self.repetition_penalty!r}"
        length_penalty = _as_float(self.length_penalty)
        if length_penalty is None or not math.isfinite(length_penalty):
            yield "length_penalty", f"must be a finite number, got {self.length_penalty!r}"
        if self.bad_words_ids is not None and not _valid_bad_words(self.bad_words_ids):
            yield "bad_words_ids", (f"expected a list of token ids or of id lists, e.g. [50009] or [[12, 34]], "
                                    f"got {self.bad_words_ids!r}")
        if _is_int(self.num_beams) and self.num_beams > 1 and self.do_sample is True:
            yield "num_beams", "beam sampling is not supported: use num_beams > 1 or do_sample=True, not both"

    def validate(self) -> GenerationConfig:
        """Raise GLMError naming the first invalid setting; returns ``self``."""
        for name, message in self.problems():
            raise GLMError(f"{name}: {message}")
        return self

    @classmethod
    def flag_fields(cls) -> List[dataclasses.Field]:
        """The fields the ``paddle-glm`` commands take as flags (``--max-new-tokens`` ...)."""
        return [f for f in dataclasses.fields(cls) if f.metadata["flag"]]


def default_bad_words(model_config, tokenizer=None) -> List[int]:
    """The config's ``bad_words_id`` ([gMASK]) and, with a tokenizer, every embedding row it has no token
    for (glm-10b-chinese pads 50010 ids to 50048 rows; those ids decode to nothing). Without a
    tokenizer no row is known to be padding, so none is banned: [gMASK] need not be the last id."""
    padding = range(tokenizer.vocab_size, model_config.vocab_size) if tokenizer is not None else ()
    return [int(t) for t in model_config.bad_words_id or []] + list(padding)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _as_float(value) -> Optional[float]:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value)


def _valid_bad_words(bad_words) -> bool:
    if isinstance(bad_words, np.ndarray):
        bad_words = bad_words.tolist()
    if not isinstance(bad_words, (list, tuple)):
        return False
    words = [word.tolist() if isinstance(word, np.ndarray) else word for word in bad_words]
    return all(_is_int(word) or (isinstance(word, (list, tuple)) and word and all(_is_int(t) for t in word))
               for word in words)


def _read_settings(path: str) -> Dict[str, Any]:
    """The settings of a ``generation_config.json`` (none from a file derived from ``config.json``)."""
    data = read_json_object(path)
    if data.get(_DERIVED_MARK) is True:
        return {}
    return {key: value for key, value in data.items() if key not in _METADATA_KEYS}
