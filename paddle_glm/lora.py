"""LoRA adapters applied to a built model from outside, in PaddleNLP ``paddlenlp.peft``'s file format.

``apply_lora`` swaps the matching ``nn.Linear`` layers for :class:`LoRALinear` (the same
weight and bias, plus ``lora_A`` ``[in, r]`` and ``lora_B`` ``[r, out]``) and freezes every
other parameter; the model code knows nothing of it. Other linear layers register their
wrapper in ``LORA_WRAPPERS`` (the quantized Linears of ``paddle_glm/quantization``). ``save_adapter`` writes
``lora_config.json`` and ``lora_model_state.pdparams`` under PaddleNLP's parameter names
(``glm.transformer.layers.0.attention.query_key_value.lora_A``), so PaddleNLP's
``LoRAModel.from_pretrained`` reads ours and ``load_adapter`` reads PaddleNLP's.
``merge_lora`` folds the adapters into the weights (``W += A @ B * scaling``) for inference.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import paddle
import paddle.nn as nn

from .checkpoint.safe_pickle import open_pdparams, save_pdparams
from .errors import GLMError
from .io_utils import atomic_write_text, read_json_object
from .linear import Linear, linear

CONFIG_FILE = "lora_config.json"  # PaddleNLP's LORA_CONFIG_NAME
WEIGHTS_FILE = "lora_model_state.pdparams"  # PaddleNLP's LORA_WEIGHTS_NAME
DEFAULT_TARGETS = [".*query_key_value.*"]  # PaddleNLP's GLM example
# PaddleNLP LoRAConfig options that change the computation and that this module does not implement.
_UNSUPPORTED = {"rslora": False, "pissa": False, "do_qat": False, "trainable_bias": None, "enable_lora_list": None,
                "trainable_modules": None}


@dataclass
class LoRAConfig:
    """PaddleNLP's ``LoRAConfig`` fields that plain LoRA uses.

    Args:
        r: the adapter rank.
        lora_alpha: the scale numerator: ``scaling = lora_alpha / r``.
        lora_dropout: dropout on the adapter's input (train mode only).
        target_modules: regexes matched in full against sublayer names
            (``glm.transformer.layers.0.attention.query_key_value``); default the qkv projection.
        base_model_name_or_path: recorded in the file, as PaddleNLP does.
    """

    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    target_modules: List[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    base_model_name_or_path: Optional[str] = None

    def __post_init__(self):
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        problem = config_problem(vars(self))
        if problem:
            raise GLMError(f"LoRA config: {problem[0]}: {problem[1]}")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r

    def to_dict(self) -> Dict:
        """The JSON PaddleNLP writes (its other fields at their plain-LoRA defaults)."""
        return dict(sorted({**_UNSUPPORTED, "r": self.r, "lora_alpha": self.lora_alpha,
                            "lora_dropout": self.lora_dropout, "target_modules": self.target_modules,
                            "base_model_name_or_path": self.base_model_name_or_path, "merge_weights": False,
                            "tensor_parallel_degree": -1, "dtype": None, "head_dim": None, "lora_plus_scale": 1.0,
                            "use_quick_lora": False, "scaling": self.scaling}.items()))

    @classmethod
    def from_file(cls, path: str) -> LoRAConfig:
        """Read a ``lora_config.json`` written by :func:`save_adapter` or by PaddleNLP; a bad field is a
        GLMError naming the file and the field."""
        if not os.path.isfile(path):
            raise GLMError(f"{path}: no LoRA config here (an adapter directory holds {CONFIG_FILE} and "
                           f"{WEIGHTS_FILE})")
        data = read_json_object(path)
        for name, plain in _UNSUPPORTED.items():
            if data.get(name, plain) not in (plain, False, None, []):
                raise GLMError(f"{path}: '{name}' = {data[name]!r} is not supported (plain LoRA only)")
        if data.get("lora_plus_scale", 1.0) != 1.0:
            raise GLMError(f"{path}: lora_plus_scale != 1 is not supported")
        values = {"r": 8, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": list(DEFAULT_TARGETS),
                  "base_model_name_or_path": None}
        values.update({name: data[name] for name in values if name in data})
        if values["target_modules"] in (None, []):  # PaddleNLP's unset value: our default targets
            values["target_modules"] = list(DEFAULT_TARGETS)
        elif isinstance(values["target_modules"], str):
            values["target_modules"] = [values["target_modules"]]
        problem = config_problem(values)
        if problem:
            raise GLMError(f"{path}: \"{problem[0]}\": {problem[1]}")
        return cls(**values)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def config_problem(values: Dict) -> Optional[Tuple[str, str]]:
    """The first invalid field of a LoRA config's ``values`` as ``(field, what is wrong)``, or None.

    The one place these rules live: :class:`LoRAConfig`, :meth:`LoRAConfig.from_file` and the
    finetune flags (``--lora-rank``, ``--lora-alpha``, ``--lora-dropout``) report what it finds.
    """
    r, alpha, dropout = values["r"], values["lora_alpha"], values["lora_dropout"]
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        return "r", f"must be a positive integer, got {r!r}"
    if not _is_number(alpha) or alpha <= 0:
        return "lora_alpha", f"must be a finite number > 0, got {alpha!r}"
    if not _is_number(dropout) or not 0 <= dropout < 1:
        return "lora_dropout", f"must be a number in [0, 1), got {dropout!r}"
    targets = values["target_modules"]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        return "target_modules", f"must be a regex or a non-empty list of regexes, got {targets!r}"
    for pattern in targets:
        try:
            re.compile(pattern)
        except re.error as e:
            return "target_modules", f"{pattern!r} is not a valid regex ({e})"
    base = values.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        return "base_model_name_or_path", f"must be a string or null, got {base!r}"
    return None


class LoRALinear(nn.Layer):
    """``y = x W + b + dropout(x) @ lora_A @ lora_B * scaling``, as PaddleNLP's LoRALinear.

    ``weight`` and ``bias`` are the wrapped Linear's own parameters (frozen); ``lora_A``
    starts Kaiming-uniform and ``lora_B`` at zero, so a fresh adapter changes nothing.
    """

    def __init__(self, linear: nn.Layer, config: LoRAConfig):
        super().__init__()
        in_features, out_features, dtype = self._take_base(linear)
        self.scaling = config.scaling
        self.lora_dropout = nn.Dropout(config.lora_dropout)
        self.lora_A = self.create_parameter(
            [in_features, config.r], dtype=dtype,
            default_initializer=nn.initializer.KaimingUniform(negative_slope=math.sqrt(5), nonlinearity="leaky_relu"))
        self.lora_B = self.create_parameter(
            [config.r, out_features], dtype=dtype, default_initializer=nn.initializer.Constant(0.0))

    def _take_base(self, linear: nn.Linear):
        """Keep the wrapped layer's parameters under their own names; returns ``(in, out, adapter dtype)``."""
        self.weight = linear.weight
        self.bias = linear.bias
        in_features, out_features = linear.weight.shape
        return in_features, out_features, linear.weight.dtype

    def base(self, x: paddle.Tensor) -> paddle.Tensor:
        """The wrapped layer's output ``x W + b``."""
        return linear(x, self.weight, self.bias)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        update = (self.lora_dropout(x) if self.training else x) @ self.lora_A @ self.lora_B
        return self.base(x) + update * self.scaling

    def merged_linear(self) -> nn.Linear:
        """A plain Linear holding ``W + A @ B * scaling`` and the bias."""
        in_features, out_features = self.weight.shape
        with paddle.LazyGuard():  # its own parameters are replaced at once: never allocate them
            merged = Linear(in_features, out_features, bias_attr=None if self.bias is not None else False)
        with paddle.no_grad():
            self.weight.set_value(self.weight + self.lora_A @ self.lora_B * self.scaling)
        merged.weight = self.weight
        if self.bias is not None:
            merged.bias = self.bias
        return merged


# The layers apply_lora wraps, and their wrapper (quantization registers its QuantizedLinear).
LORA_WRAPPERS: Dict[type, type] = {nn.Linear: LoRALinear, Linear: LoRALinear}


def _lora_layers(model: nn.Layer) -> Dict[str, LoRALinear]:
    return {name: layer for name, layer in model.named_sublayers() if isinstance(layer, LoRALinear)}


def _sublayer(model: nn.Layer, name: str) -> nn.Layer:
    """The sublayer at a dotted ``name`` ("" is the model)."""
    for part in name.split(".") if name else []:
        model = getattr(model, part)
    return model


def _replace(model: nn.Layer, name: str, layer: nn.Layer) -> None:
    parent, _, child = name.rpartition(".")
    setattr(_sublayer(model, parent), child, layer)


def apply_lora(model: nn.Layer, config: Optional[LoRAConfig] = None) -> nn.Layer:
    """Wrap the Linears of ``model`` whose names match ``config.target_modules`` and freeze the rest.

    Returns ``model`` (changed in place). Only ``lora_A``/``lora_B`` are trainable afterwards.
    """
    config = config or LoRAConfig()
    if _lora_layers(model):
        raise GLMError("this model already has LoRA adapters; merge_lora() them or start from the base model")
    patterns = [re.compile(p) for p in config.target_modules]
    targets = [name for name, layer in model.named_sublayers()
               if type(layer) in LORA_WRAPPERS and any(p.fullmatch(name) for p in patterns)]
    if not targets:
        raise GLMError(f"LoRA: target_modules {config.target_modules} match no Linear layer of the model "
                       "(names look like glm.transformer.layers.0.attention.query_key_value)")
    for param in model.parameters():
        param.stop_gradient = True
    for name in targets:
        layer = _sublayer(model, name)
        _replace(model, name, LORA_WRAPPERS[type(layer)](layer, config))
    model.lora_config = config
    return model


def adapter_state(model: nn.Layer) -> Dict[str, paddle.Tensor]:
    """The adapter parameters under the model's parameter names (PaddleNLP's key names)."""
    return {name: p for name, p in model.state_dict().items() if name.endswith((".lora_A", ".lora_B"))}


def save_adapter(model: nn.Layer, directory: str) -> None:
    """Write ``lora_config.json`` and ``lora_model_state.pdparams`` into ``directory`` (each file atomically)."""
    state = adapter_state(model)
    if not state:
        raise GLMError("save_adapter: this model has no LoRA adapters (apply_lora first)")
    os.makedirs(directory, exist_ok=True)
    weights = os.path.join(directory, WEIGHTS_FILE)
    tmp = weights + ".tmp"
    try:
        save_pdparams(tmp, ((name, p.numpy()) for name, p in state.items()))
        os.replace(tmp, weights)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    atomic_write_text(os.path.join(directory, CONFIG_FILE), json.dumps(model.lora_config.to_dict(), indent=2) + "\n")


def load_adapter(model: nn.Layer, directory: str) -> nn.Layer:
    """Apply the adapter saved in ``directory`` (by :func:`save_adapter` or PaddleNLP) to ``model``.

    Every adapter tensor of the model must be in the file with its shape, and nothing else.
    """
    if not os.path.isdir(directory):
        raise GLMError(f"{directory}: no such adapter directory")
    config = LoRAConfig.from_file(os.path.join(directory, CONFIG_FILE))
    arrays = _read_weights(os.path.join(directory, WEIGHTS_FILE))  # read before changing the model
    apply_lora(model, config)
    return load_adapter_weights(model, directory, arrays)


def load_adapter_weights(model: nn.Layer, directory: str, arrays: Optional[Dict[str, np.ndarray]] = None) -> nn.Layer:
    """Set the adapter weights of a model with LoRA already applied from ``directory``'s weights file."""
    path = os.path.join(directory, WEIGHTS_FILE)
    arrays = _read_weights(path) if arrays is None else arrays
    expected = adapter_state(model)
    missing, unexpected = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or unexpected:
        raise GLMError(f"{path}: does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, param in expected.items():
        if tuple(arrays[name].shape) != tuple(param.shape):
            raise GLMError(f"{path}: {name} has shape {list(arrays[name].shape)}, the model needs {list(param.shape)}")
        param.set_value(paddle.to_tensor(arrays[name]).astype(param.dtype))
    return model


def _read_weights(path: str) -> Dict[str, np.ndarray]:
    """The adapter file's arrays, copied out of its memory map (adapters are small)."""
    with open_pdparams(path) as arrays:
        return {name: np.array(array) for name, array in arrays.items()}


def describe_adapter(directory: str) -> str:
    """One line on the adapter in ``directory``: rank, scaling, targets, wrapped layers, parameters."""
    lora = LoRAConfig.from_file(os.path.join(directory, CONFIG_FILE))
    arrays = _read_weights(os.path.join(directory, WEIGHTS_FILE))
    count = sum(int(np.prod(a.shape)) for a in arrays.values())
    layers = len({name.rsplit(".", 1)[0] for name in arrays})
    return (f"adapter: {directory}: LoRA r={lora.r}, alpha={lora.lora_alpha:g} (scaling {lora.scaling:g}), "
            f"targets {lora.target_modules}, {layers} Linear layers wrapped, {count:,} parameters")


def merge_lora(model: nn.Layer) -> nn.Layer:
    """Fold every adapter into its Linear's weight and put plain Linears back; returns ``model``."""
    for name, layer in _lora_layers(model).items():
        _replace(model, name, layer.merged_linear())
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model
