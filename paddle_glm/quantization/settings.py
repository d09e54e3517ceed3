"""What a quantized model is: the quant type, the int4 group size and whether the word embeddings are quantized.

A quantized checkpoint records them in ``config.json`` as
``"quantization_config": {"quant_type": ..., "group_size": ..., "quantize_embeddings": ...}``.
This module imports neither Paddle nor the kernels, so ``convert`` and ``--help`` stay fast.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

from ..errors import GLMError

QUANT_CONFIG_KEY = "quantization_config"
# The kernels' names (kernels.QUANT_TYPES), PaddleNLP's predictor names for the same thing.
INT8, INT4 = "weight_only_int8", "weight_only_int4"
QUANT_TYPES = (INT8, INT4)
DEFAULT_GROUP_SIZE = 64
QUANT_WITH_TP = ("quantization (--quant-type, or a quantized checkpoint) with tensor parallelism (--tensor-parallel) "
                 "is not supported: a quantized model runs in one process; drop one of the two")
PER_CHANNEL = -1  # int8's "group size": one scale per output channel
# int4 word embeddings use groups of 16 whatever the Linears' group size: they are both the input and
# the tied output projection, and with groups of 32 or 64 the demo model loses one of its 6 fills.
EMBEDDING_GROUP_SIZE = 16


@dataclass(frozen=True)
class QuantSettings:
    """How a model's weights are quantized.

    Args:
        quant_type: "weight_only_int8" (symmetric int8, one scale per output channel) or
            "weight_only_int4" (int4, two per byte, one scale per ``group_size`` inputs).
        group_size: the int4 group along the input dimension (default 64); ignored for int8.
        quantize_embeddings: quantize the word embeddings (per row), which are also the tied
            output projection; False keeps them in full precision.
    """

    quant_type: str
    group_size: int = DEFAULT_GROUP_SIZE
    quantize_embeddings: bool = True

    def __post_init__(self):
        if self.quant_type not in QUANT_TYPES:
            raise GLMError(f"quant type {self.quant_type!r} (--quant-type) is unknown: use {' or '.join(QUANT_TYPES)}")
        if self.quant_type == INT8:
            object.__setattr__(self, "group_size", PER_CHANNEL)
        elif not isinstance(self.group_size, int) or isinstance(self.group_size, bool) or self.group_size < 2 \
                or self.group_size % 2:
            raise GLMError(f"group size {self.group_size!r} (--group-size) must be an even integer >= 2 "
                           "(int4 values are packed two per byte)")

    def for_embeddings(self) -> QuantSettings:
        """The settings of the word embeddings: per row for int8, groups of ``EMBEDDING_GROUP_SIZE`` for int4."""
        return QuantSettings(self.quant_type, EMBEDDING_GROUP_SIZE, self.quantize_embeddings)

    @property
    def kernel_group_size(self) -> int:
        """The ``group_size`` argument of the kernels (int8 ignores it)."""
        return DEFAULT_GROUP_SIZE if self.group_size == PER_CHANNEL else self.group_size

    def check(self, config) -> None:
        """Raise GLMError unless the int4 group size divides the input dimension of every quantized layer."""
        hidden = config.hidden_size
        if self.quant_type == INT4 and hidden % self.group_size:
            raise GLMError(f"group size {self.group_size} (--group-size) does not divide the input dimension "
                           f"{hidden} (hidden_size in config.json) of the quantized layers")
        if self.quant_type == INT4 and self.quantize_embeddings and hidden % EMBEDDING_GROUP_SIZE:
            raise GLMError(f"hidden_size {hidden} (config.json) is not a multiple of {EMBEDDING_GROUP_SIZE}, the "
                           "int4 word embeddings' group: keep them in full precision (--keep-embeddings)")

    def to_dict(self) -> Dict[str, Any]:
        """The ``quantization_config`` entry of ``config.json``."""
        embedding_group = self.for_embeddings().group_size if self.quantize_embeddings else None
        return {"quant_type": self.quant_type, "group_size": self.group_size,
                "quantize_embeddings": self.quantize_embeddings, "embedding_group_size": embedding_group}

    @classmethod
    def from_config(cls, config, where: str = "config.json") -> Optional[QuantSettings]:
        """The settings a config records (``config.extra["quantization_config"]``), None for a float model."""
        entry = config.extra.get(QUANT_CONFIG_KEY)
        if entry is None:
            return None
        if not isinstance(entry, dict) or "quant_type" not in entry:
            raise GLMError(f"{where}: '{QUANT_CONFIG_KEY}' must be an object with a 'quant_type', got {entry!r}")
        try:
            settings = cls(entry["quant_type"], entry.get("group_size", DEFAULT_GROUP_SIZE),
                           entry.get("quantize_embeddings", True))
        except GLMError as e:
            raise GLMError(f"{where}: '{QUANT_CONFIG_KEY}': {e}") from None
        if entry.get("embedding_group_size", settings.to_dict()["embedding_group_size"]) != \
                settings.to_dict()["embedding_group_size"]:
            raise GLMError(f"{where}: '{QUANT_CONFIG_KEY}': embedding_group_size {entry.get('embedding_group_size')!r} "
                           f"is not supported (this version writes {settings.to_dict()['embedding_group_size']!r})")
        return settings


def requested_settings(quant_type: Optional[str], group_size: Optional[int] = None,
                       quantize_embeddings: bool = True) -> Optional[QuantSettings]:
    """The settings a caller asked for (None without ``quant_type``)."""
    if quant_type is None:
        if group_size is not None:
            raise GLMError("group size (--group-size) is given without a quant type (--quant-type)")
        return None
    return QuantSettings(quant_type, DEFAULT_GROUP_SIZE if group_size is None else group_size, quantize_embeddings)


def recorded_quant_type(directory: str) -> Optional[str]:
    """The quant type ``directory/config.json`` records, or None (also when there is no readable config)."""
    try:
        with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
            entry = json.load(f).get(QUANT_CONFIG_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return entry.get("quant_type", "unknown") if isinstance(entry, dict) else None


def refuse_quantized_source(directory: str, command: str) -> None:
    """A one-line GLMError if ``directory`` holds a quantized checkpoint (``command`` needs float weights)."""
    quant_type = recorded_quant_type(directory)
    if quant_type is not None:
        raise GLMError(f"{os.path.join(directory, 'config.json')}: the checkpoint is already quantized ({quant_type}); "
                       f"{command} needs the float checkpoint it was made from")


def settings_for_load(config, path: str, requested: Optional[QuantSettings], dtype: Optional[str], device: str,
                      tensor_parallel: bool) -> Optional[QuantSettings]:
    """The quantization a ``from_pretrained(path, quant_type=...)`` gets: the checkpoint's own
    (``config.json``), else the requested one, checked against the config, dtype, device and
    tensor parallelism; None for a float model loaded as it is."""
    where = os.path.join(path, "config.json")
    recorded = QuantSettings.from_config(config, where)
    if recorded is not None and requested is not None and requested != recorded:
        raise GLMError(f"{where}: the checkpoint is quantized as {recorded.to_dict()}; load it without quant_type "
                       f"(--quant-type) or with the same settings, not {requested.to_dict()}")
    settings = recorded or requested
    if settings is None:
        return None
    dtype = None if dtype is None else str(dtype).replace("paddle.", "")
    if dtype not in (None, "float32") and not device.startswith("gpu"):
        raise GLMError(f"dtype {dtype} (--dtype) with quantization (--quant-type) on {device}: Paddle has no "
                       "half-precision CPU kernels; the quantized model computes in float32 on CPU")
    if tensor_parallel:
        raise GLMError(QUANT_WITH_TP)
    settings.check(config)
    return settings
