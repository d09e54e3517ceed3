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

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.distributed.fleet.utils import recompute as fleet_recompute

from .attention import (BHSD, DECODE_BACKEND, MATH, SDPA, PreparedMask, attend, cache_layout, device_type,
                        dtype_str, prepare_mask)
from .config import GLMConfig
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
    """``logits`` ``[b, s, vocab]`` (None for a GLMModel without output_predict),
    ``last_hidden_state`` ``[b, s, hidden]`` and, when labels were given, the scalar ``loss``."""

    logits: Optional[paddle.Tensor]
    last_hidden_state: paddle.Tensor
    loss: Optional[paddle.Tensor] = None


def _init(config: GLMConfig) -> paddle.ParamAttr:
    """GLM's initialisation of Linear and Embedding weights (biases start at 0, LayerNorms at 1/0).
    Under ``paddle.LazyGuard`` (loading) it never runs."""
    return paddle.ParamAttr(initializer=nn.initializer.Normal(0.0, config.initializer_range))


def _dropout(layer: nn.Dropout, x: paddle.Tensor) -> paddle.Tensor:
    """``layer(x)`` in train mode; ``x`` itself in eval mode (no copy, so inference is unchanged)."""
    return layer(x) if layer.training else x


class WordEmbeddings(nn.Embedding):
    """The word embeddings ``[vocab, hidden]``, which are also the tied output projection."""

    def project(self, hidden: paddle.Tensor) -> paddle.Tensor:
        """The tied LM head: ``[..., hidden]`` -> ``[..., vocab]`` (``hidden @ Eᵀ``)."""
        return paddle.matmul(hidden, self.weight, transpose_y=True)


class GLMAttention(nn.Layer):
    """Multi-head self-attention with a packed q|k|v projection."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size, weight_attr=_init(config))
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, weight_attr=_init(config))
        self.attention_dropout_prob = config.attention_dropout_prob
        self.output_dropout = nn.Dropout(config.output_dropout_prob)

    def forward(self, x: paddle.Tensor, mask: PreparedMask, cache: Optional[KVCache] = None,
                layer: int = 0, write_index: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        b, s, _ = x.shape
        # [b, s, 3h] -> [b, s, 3, heads, d]: q | k | v, heads one after another within each
        qkv = self.query_key_value(x).reshape([b, s, 3, self.num_heads, self.head_dim])
        layout = cache.layout if cache is not None else cache_layout(mask.backend)
        if layout == BHSD:
            q, k, v = qkv.transpose([2, 0, 3, 1, 4]).unbind(axis=0)  # [3, b, heads, s, d] -> each [b, heads, s, d]
        else:
            q, k, v = qkv.unbind(axis=2)  # each [b, s, heads, d]
        if cache is not None:
            # a prefill writes slots 0..s-1 and attends over its own keys; a decode step writes slot
            # write_index and attends over the whole (static) cache, [b, heads, t, d] or [b, t, heads, d]
            k_all, v_all = cache.write(layer, k, v, 0 if write_index is None else write_index)
            if write_index is not None:
                k, v = k_all, v_all
        context = attend(q, k, v, mask, self.attention_dropout_prob if self.training else 0.0)
        if layout == BHSD:
            context = context.transpose([0, 2, 1, 3])  # [b, heads, s, d] -> [b, s, heads, d]
        return _dropout(self.output_dropout, self.dense(context.reshape([b, s, self.num_heads * self.head_dim])))


class GLMMLP(nn.Layer):
    """h -> 4h -> h with tanh-approximate GELU, as the original GLM."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, 4 * config.hidden_size, weight_attr=_init(config))
        self.dense_4h_to_h = nn.Linear(4 * config.hidden_size, config.hidden_size, weight_attr=_init(config))
        self.dropout = nn.Dropout(config.output_dropout_prob)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return _dropout(self.dropout, self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate=True)))


class GLMBlock(nn.Layer):
    """Pre-LN transformer block: x + attn(LN(x)), then + mlp(LN(.))."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, epsilon=config.layernorm_epsilon)
        self.attention = GLMAttention(config)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, epsilon=config.layernorm_epsilon)
        self.mlp = GLMMLP(config)

    def forward(self, x: paddle.Tensor, mask: PreparedMask, cache: Optional[KVCache] = None,
                layer: int = 0, write_index: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        x = x + self.attention(self.input_layernorm(x), mask, cache, layer, write_index)
        return x + self.mlp(self.post_attention_layernorm(x))


class GLMStack(nn.Layer):
    """Position embeddings, the blocks and the final LayerNorm (PaddleNLP's ``transformer``)."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.config = config
        self.block_position_encoding = config.block_position_encoding
        self.embedding_dropout = nn.Dropout(config.embedding_dropout_prob)
        self.position_embeddings = nn.Embedding(config.num_position_embeddings, config.hidden_size,
                                                weight_attr=_init(config))
        if config.block_position_encoding:
            self.block_position_embeddings = nn.Embedding(config.num_position_embeddings, config.hidden_size,
                                                          weight_attr=_init(config))
        self.layers = nn.LayerList([GLMBlock(config) for _ in range(config.num_layers)])
        self.final_layernorm = nn.LayerNorm(config.hidden_size, epsilon=config.layernorm_epsilon)

    def forward(self, hidden: paddle.Tensor, position_ids: paddle.Tensor, mask: PreparedMask,
                cache: Optional[KVCache] = None, write_index: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        hidden = hidden + self.position_embeddings(position_ids[:, 0])
        if self.block_position_encoding:
            hidden = hidden + self.block_position_embeddings(position_ids[:, 1])
        hidden = _dropout(self.embedding_dropout, hidden)
        recompute = self.config.recompute and self.training and cache is None and not hidden.stop_gradient
        for i, layer in enumerate(self.layers):
            if recompute:  # keep only each block's input; rerun the block in the backward pass
                # (non-reentrant: paddle.DataParallel's gradient hooks then fire once per parameter)
                hidden = fleet_recompute(layer, hidden, mask, None, i, preserve_rng_state=True,
                                         use_reentrant=False)
            else:
                hidden = layer(hidden, mask, cache, i, write_index)
        return self.final_layernorm(hidden)


class GLMModel(PretrainedMixin, nn.Layer):
    """The GLM transformer: word embeddings (``word_embeddings``) and the stack (``transformer``).

    With ``config.output_predict`` its output carries logits tied to the word embeddings.
    ``forward`` runs whole sequences (and a generation's prefill into a :class:`KVCache`);
    ``decode_step`` feeds one token per row through the cache.
    """

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.config = config
        self.word_embeddings = WordEmbeddings(config.vocab_size, config.hidden_size, weight_attr=_init(config))
        self.transformer = GLMStack(config)

    def forward(self, input_ids: paddle.Tensor, position_ids: Optional[paddle.Tensor] = None,
                attention_mask: MaskLike = None, cache: Optional[KVCache] = None,
                attention_backend: Optional[str] = None, last_token_only: bool = False) -> GLMOutput:
        """Run the model.

        Args:
            input_ids: int ``[b, s]``.
            position_ids: int ``[b, 2, s]`` (positions, block positions); ``[b, s]`` is accepted
                when the model has no block positions. Default: ``0..s-1`` and zeros.
            attention_mask: 4-D ``[b, 1, s, s]`` 0/1, 1-D ``[b]`` sep, or None (causal); see ``masks.py``.
            cache: a :class:`KVCache` to prefill: the tokens' keys/values are written at slots
                ``0..s-1`` (decode steps then go through :meth:`decode_step`).
            attention_backend: force a backend ("math", "sdpa", "flashmask"); default: chosen per call.
            last_token_only: compute logits for the last position only (``[b, 1, vocab]``), as
                generation needs; saves the ``[s, vocab]`` projection of a long prompt.
        """
        input_ids = _int_tensor(input_ids, "input_ids")
        if input_ids.ndim != 2:
            raise GLMError(f"input_ids: expected shape [batch, length], got {list(input_ids.shape)}")
        _check_range(input_ids, "input_ids", self.config.vocab_size, "the vocabulary (vocab_size): ids come from the "
                     "model's own tokenizer")
        b, s = input_ids.shape
        position_ids = self._positions(position_ids, b, s)
        mask = build_attention_mask(attention_mask, b, s, s)
        prepared = prepare_mask(mask, self.compute_dtype, self.config.head_dim, attention_backend)
        if cache is not None and cache.layout != cache_layout(prepared.backend):
            raise GLMError(f"attention backend {prepared.backend!r} reads a {cache_layout(prepared.backend)} cache, "
                           f"but this cache is {cache.layout}; build it with new_cache(..., attention_backend=...)")
        hidden = self.transformer(self.word_embeddings(input_ids), position_ids, prepared, cache)
        return self._output(hidden[:, -1:] if last_token_only else hidden)

    def decode_step(self, input_ids: paddle.Tensor, position_ids: paddle.Tensor, write_index: paddle.Tensor,
                    cache: KVCache) -> paddle.Tensor:
        """One token per row through a prefilled cache: a function of tensors only.

        Shapes are static and nothing synchronises with the host (no checks here: see
        ``forward`` for validated input), so the step can be wrapped by ``paddle.jit.to_static``
        or captured as a CUDA graph.

        Args:
            input_ids: int64 ``[b, 1]``, the tokens to feed.
            position_ids: int64 ``[b, 2, 1]``, their positions and block positions.
            write_index: int64 ``[1]``, the cache slot of these tokens (their sequence index).
            cache: after a prefill, with ``key_bias`` set to what the rows' queries see. The step
                writes slot ``write_index`` of every layer and reveals it in ``key_bias``.

        Returns:
            The next-token logits ``[b, vocab]`` (the LM head tied to the word embeddings).
        """
        cache.reveal(write_index)  # a token sees its own key
        mask = PreparedMask(DECODE_BACKEND[cache.layout], bias=cache.key_bias)  # [b, heads, 1, max_length]
        hidden = self.transformer(self.word_embeddings(input_ids), position_ids, mask, cache, write_index)
        return self.lm_logits(hidden[:, 0])  # [b, vocab]

    def lm_logits(self, hidden: paddle.Tensor) -> paddle.Tensor:
        """The LM head, tied to the word embeddings: ``[..., hidden]`` -> ``[..., vocab]``."""
        return self.word_embeddings.project(hidden)

    @property
    def compute_dtype(self):
        """The activations' dtype: the final LayerNorm's (rewrites such as quantization keep LayerNorms float)."""
        return self.transformer.final_layernorm.weight.dtype

    def _output(self, hidden: paddle.Tensor) -> GLMOutput:
        logits = self.lm_logits(hidden) if self.config.output_predict else None  # [b, s, vocab]
        return GLMOutput(logits=logits, last_hidden_state=hidden)

    def _positions(self, position_ids, b: int, s: int) -> paddle.Tensor:
        """``[b, 2, s]`` int64 positions (row 1 is ignored without block positions)."""
        if position_ids is None:
            if s > self.config.max_sequence_length:
                raise GLMError(f"{s} tokens exceed the model's position table "
                               f"(max_sequence_length={self.config.max_sequence_length})")
            positions = paddle.arange(s, dtype="int64").expand([b, s])
            return paddle.stack([positions, paddle.zeros_like(positions)], axis=1)  # [b, 2, s]
        position_ids = _int_tensor(position_ids, "position_ids")
        if position_ids.ndim == 2 and not self.config.block_position_encoding:
            position_ids = paddle.stack([position_ids, paddle.zeros_like(position_ids)], axis=1)
        if position_ids.ndim != 3 or position_ids.shape[0] != b or position_ids.shape[1] != 2 or \
                position_ids.shape[2] != s:
            raise GLMError(f"position_ids: expected shape [{b}, 2, {s}] (positions, block positions), "
                           f"got {list(position_ids.shape)}")
        _check_range(position_ids, "position_ids", self.config.num_position_embeddings,
                     "the position table (max_sequence_length + 1 rows with block positions): shorten the input")
        return position_ids

    def new_cache(self, batch: int, max_length: int, attention_backend: Optional[str] = None) -> KVCache:
        """A KV cache for ``batch`` rows and ``max_length`` tokens, in the layout this device's backend reads."""
        backend = attention_backend or (SDPA if device_type() == "gpu" else MATH)
        max_length = -(-max_length // CACHE_ALIGN) * CACHE_ALIGN  # fused kernels want aligned key lengths
        return KVCache.allocate(self.config.num_layers, batch, max_length, self.transformer.layers[0].attention.num_heads,
                                self.config.head_dim, self.compute_dtype, cache_layout(backend))


class GLMForConditionalGeneration(GenerationMixin, PretrainedMixin, nn.Layer):
    """GLM with its language-model head (logits tied to the word embeddings); the base model is ``glm``."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        config = copy.deepcopy(config)
        config.output_predict = True  # the LM head is this class's purpose (the caller's config is not changed)
        self.config = config
        self.glm = GLMModel(config)

    def forward(self, input_ids, position_ids=None, attention_mask: MaskLike = None,
                cache: Optional[KVCache] = None, attention_backend: Optional[str] = None,
                last_token_only: bool = False, labels=None, loss_mask=None, label_ids=None) -> GLMOutput:
        """See :meth:`GLMModel.forward`; the output always has ``logits``.

        With ``labels`` ``[b, s]`` (PaddleNLP's name ``label_ids`` is accepted too) the output
        carries ``loss``: see :func:`lm_loss`. ``labels`` and ``loss_mask`` are what
        ``tokenizer.build_inputs_for_generation(..., targets=...)`` returns.
        """
        if labels is not None and label_ids is not None:
            raise GLMError("give labels or label_ids (the same thing under PaddleNLP's name), not both")
        labels = labels if labels is not None else label_ids
        if labels is not None and last_token_only:
            raise GLMError("labels: a loss needs the logits of every position, not last_token_only")
        output = self.glm(input_ids, position_ids, attention_mask, cache, attention_backend, last_token_only)
        if labels is not None:
            output.loss = lm_loss(output.logits, labels, loss_mask, self.config.label_smoothing)
        return output

    def decode_step(self, input_ids: paddle.Tensor, position_ids: paddle.Tensor, write_index: paddle.Tensor,
                    cache: KVCache) -> paddle.Tensor:
        """See :meth:`GLMModel.decode_step`."""
        return self.glm.decode_step(input_ids, position_ids, write_index, cache)

    def new_cache(self, batch: int, max_length: int, attention_backend: Optional[str] = None) -> KVCache:
        return self.glm.new_cache(batch, max_length, attention_backend)


def lm_loss(logits: paddle.Tensor, labels, loss_mask=None, label_smoothing: float = 0.0) -> paddle.Tensor:
    """PaddleNLP 2.8.1's GLM loss: per-token cross entropy of ``logits`` ``[b, s, V]`` against
    ``labels`` ``[b, s]``, mixed with ``label_smoothing`` times the mean of ``-log_softmax`` over
    the vocabulary, then averaged over the positions where ``loss_mask`` is 1 (all without it).
    Computed in float32.
    """
    logits = _float32_tensor(logits)
    labels = _int_tensor(labels, "labels")
    if list(labels.shape) != list(logits.shape[:2]):
        raise GLMError(f"labels: expected shape {list(logits.shape[:2])} (one per input token), "
                       f"got {list(labels.shape)}")
    vocab = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape([-1, vocab]), labels.reshape([-1]), reduction="none").reshape([-1])
    if label_smoothing > 0:
        smooth = (-F.log_softmax(logits, axis=-1) / vocab).sum(axis=-1).reshape([-1])  # [b*s]
        loss = (1 - label_smoothing) * loss + label_smoothing * smooth
    if loss_mask is None:
        return loss.mean()
    loss_mask = _float32_tensor(loss_mask).reshape([-1])
    if loss_mask.shape[0] != loss.shape[0]:
        raise GLMError(f"loss_mask: expected shape {list(logits.shape[:2])}, got {list(loss_mask.shape)}")
    return (loss * loss_mask).sum() / loss_mask.sum()


def _float32_tensor(value) -> paddle.Tensor:
    """float32 paddle tensor from a tensor, numpy array or list."""
    value = value if isinstance(value, paddle.Tensor) else paddle.to_tensor(np.asarray(value))
    return value if value.dtype == paddle.float32 else value.astype("float32")


_INT_DTYPES = (paddle.int64, paddle.int32, paddle.int16, paddle.int8, paddle.uint8)


def _int_tensor(value, name: str) -> paddle.Tensor:
    """int64 tensor from an integer tensor, numpy array or list; floats are refused, not truncated."""
    if not isinstance(value, paddle.Tensor):
        array = np.asarray(value)
        if array.dtype.kind not in "iu":
            raise GLMError(f"{name}: expected integer ids, got {array.dtype} values")
        return paddle.to_tensor(array.astype("int64"))
    if value.dtype not in _INT_DTYPES:
        raise GLMError(f"{name}: expected integer ids, got {dtype_str(value.dtype)} values")
    return value if value.dtype == paddle.int64 else value.astype("int64")


def _check_range(ids: paddle.Tensor, name: str, limit: int, table: str) -> None:
    """A one-line error for an id outside ``[0, limit)``, which an embedding lookup would read out of bounds."""
    if ids.size == 0:
        return
    low, high = (int(x) for x in paddle.stack([ids.min(), ids.max()]).numpy())  # one host synchronisation
    if low < 0 or high >= limit:
        raise GLMError(f"{name}: value {low if low < 0 else high} is outside [0, {limit}), {table}")
