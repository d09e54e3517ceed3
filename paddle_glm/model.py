"""The GLM architecture (Du et al., ACL 2022) as Paddle layers.

Parameter names and shapes are exactly PaddleNLP's, so its checkpoints load
without renaming. Numerics follow the original GLM: pre-LayerNorm blocks,
tanh-approximate GELU, 1/sqrt(head_dim) attention scaling, word + position +
block-position embeddings from 2-D ``position_ids`` ``[b, 2, s]``, and logits
tied to the word embeddings. Generation, checkpoint I/O and the tokenizer live
in their own modules.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .attention import BHSD, MATH, SDPA, PreparedMask, attend, cache_layout, device_type, prepare_mask
from .config import GLMConfig
from .devices import use_cpu_threads
from .errors import GLMError
from .generation.mixin import GenerationMixin
from .kv_cache import KVCache
from .masks import MaskLike, build_attention_mask
from .pretrained import PretrainedMixin

# Cache lengths are rounded up to a multiple of this: Paddle's memory-efficient attention
# needs the mask's key dimension divisible by 8 (else it falls back to the math kernel).
CACHE_ALIGN = 8


@dataclass
class GLMOutput:
    """``logits`` ``[b, s, vocab]`` (None for a GLMModel without output_predict) and
    ``last_hidden_state`` ``[b, s, hidden]``."""

    logits: Optional[paddle.Tensor]
    last_hidden_state: paddle.Tensor


class GLMAttention(nn.Layer):
    """Multi-head self-attention with a packed q|k|v projection."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: paddle.Tensor, mask: PreparedMask, cache: Optional[KVCache] = None,
                layer: int = 0) -> paddle.Tensor:
        b, s, _ = x.shape
        # [b, s, 3h] -> [b, s, 3, heads, d]: q | k | v, heads one after another within each
        qkv = self.query_key_value(x).reshape([b, s, 3, self.num_heads, self.head_dim])
        layout = cache.layout if cache is not None else cache_layout(mask.backend)
        if layout == BHSD:
            qkv = qkv.transpose([2, 0, 3, 1, 4])  # [3, b, heads, s, d]
            q, k, v = qkv[0], qkv[1], qkv[2]
        else:
            q, k, v = qkv.unbind(axis=2)  # each [b, s, heads, d]
        if cache is not None:
            k_all, v_all = cache.update(layer, k, v)  # full buffers, [b, heads, t, d] or [b, t, heads, d]
            if cache.length:  # decoding: attend over the whole (static) cache; a prefill only has its own keys
                k, v = k_all, v_all
        context = attend(q, k, v, mask)
        if layout == BHSD:
            context = context.transpose([0, 2, 1, 3])  # [b, heads, s, d] -> [b, s, heads, d]
        return self.dense(context.reshape([b, s, self.num_heads * self.head_dim]))


class GLMMLP(nn.Layer):
    """h -> 4h -> h with tanh-approximate GELU, as the original GLM."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, 4 * config.hidden_size)
        self.dense_4h_to_h = nn.Linear(4 * config.hidden_size, config.hidden_size)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate=True))


class GLMBlock(nn.Layer):
    """Pre-LN transformer block: x + attn(LN(x)), then + mlp(LN(.))."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, epsilon=config.layernorm_epsilon)
        self.attention = GLMAttention(config)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, epsilon=config.layernorm_epsilon)
        self.mlp = GLMMLP(config)

    def forward(self, x: paddle.Tensor, mask: PreparedMask, cache: Optional[KVCache] = None,
                layer: int = 0) -> paddle.Tensor:
        x = x + self.attention(self.input_layernorm(x), mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class GLMStack(nn.Layer):
    """Position embeddings, the blocks and the final LayerNorm (PaddleNLP's ``transformer``)."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.block_position_encoding = config.block_position_encoding
        self.position_embeddings = nn.Embedding(config.num_position_embeddings, config.hidden_size)
        if config.block_position_encoding:
            self.block_position_embeddings = nn.Embedding(config.num_position_embeddings, config.hidden_size)
        self.layers = nn.LayerList([GLMBlock(config) for _ in range(config.num_layers)])
        self.final_layernorm = nn.LayerNorm(config.hidden_size, epsilon=config.layernorm_epsilon)

    def forward(self, hidden: paddle.Tensor, position_ids: paddle.Tensor, mask: PreparedMask,
                cache: Optional[KVCache] = None) -> paddle.Tensor:
        hidden = hidden + self.position_embeddings(position_ids[:, 0])
        if self.block_position_encoding:
            hidden = hidden + self.block_position_embeddings(position_ids[:, 1])
        for i, layer in enumerate(self.layers):
            hidden = layer(hidden, mask, cache, i)
        return self.final_layernorm(hidden)


class GLMModel(PretrainedMixin, nn.Layer):
    """The GLM transformer: word embeddings (``word_embeddings``) and the stack (``transformer``).

    With ``config.output_predict`` its output carries logits tied to the word embeddings.
    """

    base_model_prefix = ""

    def __init__(self, config: GLMConfig):
        super().__init__()
        use_cpu_threads()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.transformer = GLMStack(config)

    def forward(self, input_ids: paddle.Tensor, position_ids: Optional[paddle.Tensor] = None,
                attention_mask: MaskLike = None, cache: Optional[KVCache] = None,
                attention_backend: Optional[str] = None, last_token_only: bool = False) -> GLMOutput:
        """Run the model.

        Args:
            input_ids: int ``[b, s]``.
            position_ids: int ``[b, 2, s]`` (positions, block positions); ``[b, s]`` is accepted
                when the model has no block positions. Default: ``offset..offset+s-1`` and zeros.
            attention_mask: 4-D ``[b, 1, s, k]`` 0/1, 1-D ``[b]`` sep, or None (causal); see ``masks.py``.
            cache: a :class:`KVCache`; the new tokens' keys/values are written at ``cache.length``
                and attention covers the whole cache (unused slots masked).
            attention_backend: force a backend ("math", "sdpa", "flashmask"); default: chosen per call.
            last_token_only: compute logits for the last position only (``[b, 1, vocab]``), as
                generation needs; saves the ``[s, vocab]`` projection of a long prompt.
        """
        input_ids = _as_tensor(input_ids, "int64")
        b, s = input_ids.shape
        offset = cache.length if cache is not None else 0
        position_ids = self._positions(position_ids, b, s, offset)
        key_len = cache.max_length if cache is not None and offset else offset + s
        mask = build_attention_mask(attention_mask, b, s, key_len, offset)
        prepared = prepare_mask(mask, self.word_embeddings.weight.dtype, self.config.head_dim, attention_backend)
        if cache is not None and cache.layout != cache_layout(prepared.backend):
            raise GLMError(f"attention backend {prepared.backend!r} reads a {cache_layout(prepared.backend)} cache, "
                           f"but this cache is {cache.layout}; build it with new_cache(..., attention_backend=...)")
        hidden = self.transformer(self.word_embeddings(input_ids), position_ids, prepared, cache)
        if cache is not None:
            cache.advance(s)
        if last_token_only:
            hidden = hidden[:, -1:]
        logits = None
        if self.config.output_predict:
            logits = paddle.matmul(hidden, self.word_embeddings.weight, transpose_y=True)  # [b, s, vocab]
        return GLMOutput(logits=logits, last_hidden_state=hidden)

    def _positions(self, position_ids, b: int, s: int, offset: int) -> paddle.Tensor:
        """``[b, 2, s]`` int64 positions (row 1 is ignored without block positions)."""
        if position_ids is None:
            if offset + s > self.config.max_sequence_length:
                raise GLMError(f"{offset + s} tokens exceed the model's position table "
                               f"(max_sequence_length={self.config.max_sequence_length})")
            positions = paddle.arange(offset, offset + s, dtype="int64").expand([b, s])
            return paddle.stack([positions, paddle.zeros_like(positions)], axis=1)  # [b, 2, s]
        position_ids = _as_tensor(position_ids, "int64")
        if position_ids.ndim == 2 and not self.config.block_position_encoding:
            position_ids = paddle.stack([position_ids, paddle.zeros_like(position_ids)], axis=1)
        if position_ids.ndim != 3 or position_ids.shape[0] != b or position_ids.shape[1] != 2 or \
                position_ids.shape[2] != s:
            raise GLMError(f"position_ids: expected shape [{b}, 2, {s}] (positions, block positions), "
                           f"got {list(position_ids.shape)}")
        return position_ids

    def new_cache(self, batch: int, max_length: int, attention_backend: Optional[str] = None) -> KVCache:
        """A KV cache for ``batch`` rows and ``max_length`` tokens, in the layout this device's backend reads."""
        backend = attention_backend or (SDPA if device_type() == "gpu" else MATH)
        max_length = -(-max_length // CACHE_ALIGN) * CACHE_ALIGN  # fused kernels want aligned key lengths
        return KVCache(self.config.num_layers, batch, max_length, self.transformer.layers[0].attention.num_heads,
                       self.config.head_dim, self.word_embeddings.weight.dtype, cache_layout(backend))


class GLMForConditionalGeneration(GenerationMixin, PretrainedMixin, nn.Layer):
    """GLM with its language-model head (logits tied to the word embeddings); the base model is ``glm``."""

    base_model_prefix = "glm"

    def __init__(self, config: GLMConfig):
        super().__init__()
        config = copy.deepcopy(config)
        config.output_predict = True  # the LM head is this class's purpose (the caller's config is not changed)
        self.config = config
        self.glm = GLMModel(config)

    def forward(self, input_ids, position_ids=None, attention_mask: MaskLike = None,
                cache: Optional[KVCache] = None, attention_backend: Optional[str] = None,
                last_token_only: bool = False) -> GLMOutput:
        """See :meth:`GLMModel.forward`; the output always has ``logits``."""
        return self.glm(input_ids, position_ids, attention_mask, cache, attention_backend, last_token_only)

    def new_cache(self, batch: int, max_length: int, attention_backend: Optional[str] = None) -> KVCache:
        return self.glm.new_cache(batch, max_length, attention_backend)


def _as_tensor(value, dtype: str) -> paddle.Tensor:
    """Paddle tensor of ``dtype`` from a tensor, numpy array or list."""
    if not isinstance(value, paddle.Tensor):
        value = paddle.to_tensor(value)
    return value if value.dtype == getattr(paddle, dtype) else value.astype(dtype)
