"""GLMConfig: the model hyper-parameters, with PaddleNLP's field names."""
from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Tuple

from .errors import GLMError
from .io_utils import atomic_write_text, read_json_object, require_local_dir

CONFIG_NAME = "config.json"
LEGACY_CONFIG_NAME = "model_config.json"
PRESET_DIR = Path(__file__).parent / "configs"

# Field names and defaults follow PaddleNLP 2.8.1's GLMConfig, except that
# output_predict defaults to True (the LM head is what this package is for).
# Kept only for PaddleNLP compatibility (read, validated, written back; the model ignores them):
# checkpoint_num_layers (recompute here is per block), parallel_output (see parallel.py for
# tensor parallelism), spell_length / spell_func (P-tuning prompts) and pool_token
# (classification heads, which this package does not have).
_DEFAULTS: Dict[str, Any] = {
    "num_layers": 24,
    "vocab_size": 30592,
    "hidden_size": 1024,
    "num_attention_heads": 16,
    "embedding_dropout_prob": 0.1,
    "attention_dropout_prob": 0.1,
    "output_dropout_prob": 0.1,
    "max_sequence_length": 512,
    "checkpoint_num_layers": 1,
    "parallel_output": True,
    "relative_encoding": False,
    "block_position_encoding": True,
    "output_predict": True,
    "spell_length": None,
    "spell_func": "lstm",
    "attention_scale": 1.0,
    "initializer_range": 0.02,
    "pool_token": "cls",
    "layernorm_epsilon": 1e-5,
    "bad_words_id": None,
}
# Training settings (PaddleNLP reads label_smoothing from its config too; recompute = activation
# recompute): attributes like the fields above, written to config.json only when not the default.
_TRAINING_DEFAULTS: Dict[str, Any] = {"label_smoothing": 0.0, "recompute": False}

# Alternative spellings accepted on input (HF / PaddleNLP attribute_map).
_ALIASES = {"num_hidden_layers": "num_layers"}


class GLMConfig:
    """Hyper-parameters of a GLM model.

    Keyword arguments use PaddleNLP's names (``num_layers``, ``hidden_size``,
    ``num_attention_heads``, ``vocab_size``, ``max_sequence_length``,
    ``block_position_encoding``, ``layernorm_epsilon``, ``attention_scale``,
    ``output_predict``, ...). ``num_hidden_layers`` is accepted as an alias of
    ``num_layers``. Keys this class does not know are kept in ``extra`` and
    written back by :meth:`save_pretrained`, so a config round trip loses
    nothing.
    """

    def __init__(self, **kwargs: Any):
        for alias, name in _ALIASES.items():
            if alias in kwargs:
                value = kwargs.pop(alias)
                if name in kwargs and kwargs[name] != value:
                    raise GLMError(f"GLMConfig: '{alias}'={value} contradicts '{name}'={kwargs[name]}")
                kwargs[name] = value
        for name, default in {**_DEFAULTS, **_TRAINING_DEFAULTS}.items():
            setattr(self, name, copy.deepcopy(kwargs.pop(name, default)))
        self.extra: Dict[str, Any] = kwargs
        # Fields a config file left out (set by from_json_file): their values are defaults, not facts.
        self.defaulted: Tuple[str, ...] = ()
        self.validate()

    # -- derived values -------------------------------------------------
    @property
    def num_hidden_layers(self) -> int:
        return self.num_layers

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_position_embeddings(self) -> int:
        # With block positions the table has one extra row (PaddleNLP/GLM layout).
        return self.max_sequence_length + (1 if self.block_position_encoding else 0)

    # -- validation (the only place that checks the fields) --------------
    def validate(self) -> None:
        """Raise GLMError naming the field if a value has the wrong type or is inconsistent."""
        for name in ("num_layers", "vocab_size", "hidden_size", "num_attention_heads", "max_sequence_length"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise GLMError(f"GLMConfig: '{name}' must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise GLMError(
                f"GLMConfig: hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        for name in ("attention_scale", "layernorm_epsilon"):
            value = getattr(self, name)
            if not _is_real(value) or not 0 < value < math.inf:
                raise GLMError(f"GLMConfig: '{name}' must be a number > 0, got {value!r}")
        for name in ("embedding_dropout_prob", "attention_dropout_prob", "output_dropout_prob"):
            value = getattr(self, name)
            if not _is_real(value) or not 0 <= value < 1:
                raise GLMError(f"GLMConfig: '{name}' must be a number in [0, 1), got {value!r}")
        if not _is_real(self.initializer_range) or not 0 <= self.initializer_range < math.inf:
            raise GLMError(f"GLMConfig: 'initializer_range' must be a number >= 0, got {self.initializer_range!r}")
        for name in ("parallel_output", "relative_encoding", "block_position_encoding", "output_predict"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise GLMError(f"GLMConfig: '{name}' must be true or false, got {value!r}")
        bad = self.bad_words_id
        if bad is not None and (not isinstance(bad, list) or not all(_is_int(t) and 0 <= t < self.vocab_size
                                                                       for t in bad)):
            raise GLMError(f"GLMConfig: 'bad_words_id' must be a list of token ids below vocab_size "
                           f"({self.vocab_size}), got {bad!r}")
        if self.relative_encoding:
            raise GLMError("GLMConfig: relative_encoding=True (Transformer-XL style GLM) is not supported")

    # -- (de)serialisation ------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        out = {name: copy.deepcopy(getattr(self, name)) for name in _DEFAULTS}
        out.update({name: getattr(self, name) for name, default in _TRAINING_DEFAULTS.items()
                    if getattr(self, name) != default})
        out.update(copy.deepcopy(self.extra))
        out.setdefault("model_type", "glm")
        return dict(sorted(out.items()))

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> GLMConfig:
        return cls(**copy.deepcopy(data))

    @classmethod
    def from_json_file(cls, path: str) -> GLMConfig:
        """Read a config JSON file; errors name the file (and the field)."""
        data = read_json_object(path)
        try:
            config = cls.from_dict(data)
        except GLMError as e:
            raise GLMError(f"{path}: {e}") from None
        config.defaulted = tuple(name for name in _DEFAULTS if name not in data and not
                                 any(alias in data for alias, target in _ALIASES.items() if target == name))
        return config

    @classmethod
    def from_pretrained(cls, path: str) -> GLMConfig:
        """Read ``config.json`` (or the legacy ``model_config.json``) from a local directory."""
        require_local_dir(path, what="config")
        for name in (CONFIG_NAME, LEGACY_CONFIG_NAME):
            file = os.path.join(path, name)
            if os.path.isfile(file):
                return cls.from_json_file(file)
        raise GLMError(f"{path}: no {CONFIG_NAME} (or {LEGACY_CONFIG_NAME}) in this directory")

    def save_pretrained(self, path: str) -> None:
        """Write ``config.json`` into ``path`` (created if needed), atomically."""
        os.makedirs(path, exist_ok=True)
        atomic_write_text(os.path.join(path, CONFIG_NAME), self.to_json_string())

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> GLMConfig:
        """A named preset from ``configs/`` (for example ``"glm-10b-chinese"``)."""
        presets = available_presets()
        if name not in presets:
            raise GLMError(f"unknown preset {name!r}; available: {', '.join(sorted(presets))}")
        data = read_json_object(str(presets[name]))
        data.update(overrides)
        return cls.from_dict(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GLMConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        core = ", ".join(f"{k}={getattr(self, k)!r}" for k in ("num_layers", "hidden_size", "num_attention_heads",
                                                                "vocab_size", "max_sequence_length"))
        return f"GLMConfig({core})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def available_presets() -> Dict[str, Path]:
    """Map preset name -> path of its JSON (the repository's ``configs/``, linked into the package)."""
    return {p.stem: p for p in sorted(PRESET_DIR.glob("*.json"))}

