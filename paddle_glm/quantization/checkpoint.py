"""``paddle-glm quantize``: a float checkpoint written as a weight-only quantized one.

The output is sharded safetensors + ``model.safetensors.index.json`` in the Paddle layout
(metadata ``np``), where each quantized weight is ``<name>.weight`` (int8 ``[out, in]``, or
int4 packed into uint8 ``[out, in // 2]``) beside ``<name>.weight_scale`` (float32), and every
other tensor keeps its dtype. ``config.json`` gains ``"quantization_config"``; the tokenizer
and other files are copied. It is written by ``convert``'s machinery (one input shard in
memory, a temporary directory renamed at the end, ``--verify``), and
``from_pretrained(DST)`` loads it without quantizing again.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import FrozenSet, List, Tuple

import numpy as np

from ..checkpoint.dtypes import cast_array, dtype_name
from ..checkpoint.layout import PADDLE, convert_layout, strip_prefix
from ..config import GLMConfig
from ..conversion import ConvertReport, write_transformed
from ..errors import CheckpointError, GLMError
from ..io_utils import atomic_write_text
from .kernels import quantize_weight
from .rewrite import SCALE_SUFFIX, quantized_weight_names
from .settings import QUANT_CONFIG_KEY, QuantSettings, refuse_quantized_source

EMBEDDINGS = "word_embeddings.weight"


@dataclass(frozen=True)
class QuantizeTransform:
    """Each source tensor as the quantized checkpoint stores it (see the module docstring)."""

    source_layout: str
    settings: QuantSettings
    quantized: FrozenSet[str]  # names without ``glm.`` of the weights to quantize

    def outputs(self, name: str, array: np.ndarray, where: str) -> List[Tuple[str, np.ndarray]]:
        try:
            dtype_name(array)
        except GLMError as e:
            raise CheckpointError(f"{where}: tensor {name!r}: {e}") from None
        array = convert_layout(name, array, self.source_layout, PADDLE)
        key = strip_prefix(name)
        if key not in self.quantized:
            return [(name, array)]
        weight = cast_array(array, "float32")  # one tensor at a time
        settings = self.settings.for_embeddings() if key == EMBEDDINGS else self.settings
        qweight, scale = quantize_weight(weight if key == EMBEDDINGS else weight.T,  # Linear: [in, out] -> [out, in]
                                         settings.quant_type, settings.kernel_group_size)
        return [(name, qweight), (name + SCALE_SUFFIX, scale)]


def quantize_checkpoint(src: str, dst: str, settings: QuantSettings, max_shard_size="2GB", verify: bool = False,
                        overwrite: bool = False, quiet: bool = False) -> ConvertReport:
    """Write the float GLM checkpoint in ``src`` quantized with ``settings`` into ``dst``.

    ``src`` may be any checkpoint ``convert`` reads (float32, float16 or bfloat16; Paddle or
    torch layout). ``verify`` re-reads every output tensor and compares it bit for bit with the
    source quantized again. An already quantized ``src`` is refused. ``dst`` appears only when
    complete (``overwrite`` replaces an existing one at the end).
    """
    refuse_quantized_source(src, "quantize")
    config = GLMConfig.from_pretrained(src)
    settings.check(config)
    quantized = frozenset(quantized_weight_names(config, settings))

    def finish_output(directory: str) -> None:
        path = os.path.join(directory, "config.json")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        data[QUANT_CONFIG_KEY] = settings.to_dict()
        atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")

    return write_transformed(src, dst, lambda source: QuantizeTransform(source.detect_layout(), settings, quantized),
                             max_shard_size, verify=verify, overwrite=overwrite, quiet=quiet,
                             finish_output=finish_output, desc="Quantizing")
