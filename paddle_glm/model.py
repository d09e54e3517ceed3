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
from paddle import _C_ops
from paddle.distributed.fleet.utils import recompute as fleet_recompute

from .attention import (
    BHSD,
    CPU_DECODE,
    PreparedMask,
    aligned_cache_length,
    attend,
    cache_backend,
    cache_layout,
    check_cache_layout,
    decode_backend,
    prepare_mask,
)
from .config import GLMConfig
from .errors import GLMError
from .generation.mixin import GenerationMixin
from .glm_layout import check_position_table, check_positions, default_positions, with_block_row
from .ids import check_id_range, to_int64
from .kv_cache import KVCache
from .linear import Linear, linear_transposed
from .loss import lm_loss
from .masks import MaskLike, build_attention_mask
from .pretrained import PretrainedMixin


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


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dimension (same parameters, names and initialisation) calling Paddle's
    kernel directly in eager mode: ``F.layer_norm`` checks the input's shape in Python on every call
    (~9 us of ~16 us for a decode step's ``[b, 1, hidden]``; 49 calls a step). The model's shapes are
    fixed by its config, so a wrong hidden size fails in the projections before."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if not paddle.in_dynamic_mode():
            return super().forward(x)
        return _C_ops.layer_norm(x, self.weight, self.bias, self._epsilon, x.ndim - 1)


class WordEmbeddings(nn.Embedding):
    """The word embeddings ``[vocab, hidden]``, which are also the tied output projection."""

    def project(self, hidden: paddle.Tensor) -> paddle.Tensor:
        """The tied LM head: ``[..., hidden]`` -> ``[..., vocab]`` (``hidden @ Eᵀ``)."""
        return linear_transposed(hidden, self.weight)


class GLMAttention(nn.Layer):
    """Multi-head self-attention with a packed q|k|v projection."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.query_key_value = Linear(config.hidden_size, 3 * config.hidden_size, weight_attr=_init(config))
        self.dense = Linear(config.hidden_size, config.hidden_size, weight_attr=_init(config))
        self.attention_dropout_prob = config.attention_dropout_prob
        self.output_dropout = nn.Dropout(config.output_dropout_prob)

    def forward(self, x: paddle.Tensor, mask: PreparedMask, cache: Optional[KVCache] = None,
                layer: int = 0, write_index: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        qkv = self.query_key_value(x)  # [b, s, 3 * heads * d]
        if mask.backend == CPU_DECODE:  # one C++ call writes the cache and attends
            context = cache.attend_step(layer, qkv, write_index)  # [b, 1, heads * d]
        else:
            context = self._context(qkv, mask, cache, layer, write_index)
        return _dropout(self.output_dropout, self.dense(context))

    def _context(self, qkv: paddle.Tensor, mask: PreparedMask, cache: Optional[KVCache], layer: int,
                 write_index: Optional[paddle.Tensor]) -> paddle.Tensor:
        """Attention through Paddle's ops: ``qkv`` ``[b, s, 3 * heads * d]`` -> the context ``[b, s, heads * d]``."""
        b, s, _ = qkv.shape
        # [b, s, 3h] -> [b, s, 3, heads, d]: q | k | v, heads one after another within each (the heads this
        # layer holds: all of them, or a tensor-parallel rank's share)
        qkv = qkv.reshape([b, s, 3, -1, self.head_dim])
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
        return context.reshape([b, s, -1])  # [b, s, heads * d]


class GLMMLP(nn.Layer):
    """h -> 4h -> h with tanh-approximate GELU, as the original GLM."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.dense_h_to_4h = Linear(config.hidden_size, 4 * config.hidden_size, weight_attr=_init(config))
        self.dense_4h_to_h = Linear(4 * config.hidden_size, config.hidden_size, weight_attr=_init(config))
        self.dropout = nn.Dropout(config.output_dropout_prob)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return _dropout(self.dropout, self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate=True)))


class GLMBlock(nn.Layer):
    """Pre-LN transformer block: x + attn(LN(x)), then + mlp(LN(.))."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.input_layernorm = LayerNorm(config.hidden_size, epsilon=config.layernorm_epsilon)
        self.attention = GLMAttention(config)
        self.post_attention_layernorm = LayerNorm(config.hidden_size, epsilon=config.layernorm_epsilon)
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
        self.final_layernorm = LayerNorm(config.hidden_size, epsilon=config.layernorm_epsilon)

    def embed(self, hidden: paddle.Tensor, position_ids: paddle.Tensor) -> paddle.Tensor:
        """The word embeddings ``hidden`` ``[b, s, hidden]`` plus the position (and block position) embeddings of
        ``position_ids`` ``[b, 2, s]``, through the embedding dropout."""
        hidden = hidden + self.position_embeddings(position_ids[:, 0])
        if self.block_position_encoding:
            hidden = hidden + self.block_position_embeddings(position_ids[:, 1])
        return _dropout(self.embedding_dropout, hidden)

    def forward(self, hidden: paddle.Tensor, position_ids: paddle.Tensor, mask: PreparedMask,
                cache: Optional[KVCache] = None, write_index: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        hidden = self.embed(hidden, position_ids)
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
        input_ids = to_int64(input_ids, "input_ids")
        if input_ids.ndim != 2:
            raise GLMError(f"input_ids: expected shape [batch, length], got {list(input_ids.shape)}")
        check_id_range(input_ids, "input_ids", self.config.vocab_size, "the vocabulary (vocab_size): ids come from "
                       "the model's own tokenizer")
        b, s = input_ids.shape
        position_ids = self._positions(position_ids, b, s)
        mask = build_attention_mask(attention_mask, b, s, s)
        prepared = prepare_mask(mask, self.compute_dtype, self.config.head_dim, attention_backend)
        if cache is not None:
            check_cache_layout(prepared.backend, cache.layout)
        hidden = self.transformer(self.word_embeddings(input_ids), position_ids, prepared, cache)
        return self._output(hidden[:, -1:] if last_token_only else hidden)

    def decode_step(self, input_ids: paddle.Tensor, position_ids: paddle.Tensor, write_index: paddle.Tensor,
                    cache: KVCache) -> paddle.Tensor:
        """One token per row through a prefilled cache: a function of tensors only.

        Shapes are static and nothing synchronises with the host (no checks here: see
        ``forward`` for validated input), so the step can be wrapped by ``paddle.jit.to_static``
        or captured as a CUDA graph. On CPU in eager mode the attention is the ``cpu_decode``
        operator (``attention.decode_backend``), which refuses a ``write_index`` outside the cache
        (a one-line error; the caller keeps it in range).

        Args:
            input_ids: int64 ``[b, 1]``, the tokens to feed.
            position_ids: int64 ``[b, 2, 1]``, their positions and block positions.
            write_index: int64 ``[1]``, the cache slot of these tokens (their sequence index), or
                ``[b]``, each row's own (continuous batching: rows of different lengths).
            cache: after a prefill, with ``key_bias`` set to what the rows' queries see (per row: a
                tensor, so rows may come and go between steps). The step writes slot
                ``write_index`` of every layer and reveals it in ``key_bias``.

        Returns:
            The next-token logits ``[b, vocab]`` (the LM head tied to the word embeddings).
        """
        cache.reveal(write_index)  # a token sees its own key
        backend = decode_backend(cache.layout, cache.keys[0], self.training)
        mask = PreparedMask(backend, bias=cache.key_bias)  # [b, heads, 1, max_length]
        hidden = self.transformer(self.word_embeddings(input_ids), position_ids, mask, cache, write_index)
        return self.lm_logits(hidden)[:, 0]  # [b, 1, vocab] -> [b, vocab]: one position a row, as routes see it

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
        """``[b, s]``'s positions, checked: ``[b, 2, s]`` int64 (row 1 is ignored without block positions)."""
        rows = self.config.num_position_embeddings
        if position_ids is None:
            check_position_table(s - 1, rows, f"a {s}-token input", "shorten the input")
            return default_positions(b, s)
        position_ids = with_block_row(to_int64(position_ids, "position_ids"), self.config.block_position_encoding)
        if list(position_ids.shape) != [b, 2, s]:
            raise GLMError(f"position_ids: expected shape [{b}, 2, {s}] (positions, block positions), "
                           f"got {list(position_ids.shape)}")
        check_positions(position_ids, rows)
        return position_ids

    def new_cache(self, batch: int, max_length: int, attention_backend: Optional[str] = None,
                  num_heads: Optional[int] = None) -> KVCache:
        """A KV cache for ``batch`` rows and ``max_length`` tokens, in the layout this device's backend reads.

        ``num_heads``: the heads each layer holds (default all; a tensor-parallel rank passes its share).
        """
        return KVCache.allocate(self.config.num_layers, batch, aligned_cache_length(max_length),
                                num_heads or self.config.num_attention_heads, self.config.head_dim,
                                self.compute_dtype, cache_layout(cache_backend(attention_backend)))


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
        carries ``loss``: see :func:`paddle_glm.loss.lm_loss`. ``labels`` and ``loss_mask`` are what
        ``tokenizer.build_inputs_for_generation(..., targets=...)`` returns.
        """
        if labels is not None and label_ids is not None:
            raise GLMError("give labels or label_ids (the same thing under PaddleNLP's name), not both")
        labels = labels if labels is not None else label_ids
        if labels is not None and last_token_only:
            raise GLMError("labels: a loss needs the logits of every position, not last_token_only")
        output = self.glm(input_ids, position_ids, attention_mask, cache, attention_backend, last_token_only)
        if labels is not None:
            output.loss = lm_loss(output.last_hidden_state, self.glm.lm_logits, to_int64(labels, "labels"),
                                  loss_mask, self.config.label_smoothing, logits=output.logits)
        return output

    def decode_step(self, input_ids: paddle.Tensor, position_ids: paddle.Tensor, write_index: paddle.Tensor,
                    cache: KVCache) -> paddle.Tensor:
        """See :meth:`GLMModel.decode_step`."""
        return self.glm.decode_step(input_ids, position_ids, write_index, cache)

    def new_cache(self, batch: int, max_length: int, attention_backend: Optional[str] = None) -> KVCache:
        return self.glm.new_cache(batch, max_length, attention_backend)


