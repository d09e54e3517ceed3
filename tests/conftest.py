"""Shared test fixtures: tiny configs and PaddleNLP reference models on identical weights."""
from __future__ import annotations

import warnings

import numpy as np
import paddle
import pytest

warnings.filterwarnings("ignore", message=".*ccache.*")
paddle.set_device("cpu")

# Two deliberately different tiny shapes (head_dim 16 and 8; the second with attention_scale > 1).
TINY_A = dict(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=1010, max_sequence_length=128)
TINY_B = dict(num_layers=3, hidden_size=48, num_attention_heads=6, vocab_size=300, max_sequence_length=64,
              attention_scale=2.0, layernorm_epsilon=1e-6)
NO_DROPOUT = dict(embedding_dropout_prob=0.0, attention_dropout_prob=0.0, output_dropout_prob=0.0)


@pytest.fixture(autouse=True)
def openmp_threads_spin_after_each_test():
    """A test that ends after a BLAS product (openmp_wait) leaves the next one Paddle's usual OpenMP waits."""
    yield
    from paddle_glm.openmp_wait import spin_when_idle

    spin_when_idle()


def paddlenlp_model(config_kwargs: dict, seed: int = 0, cls_name: str = "GLMForConditionalGeneration",
                    spread: bool = False):
    """PaddleNLP 2.8.1's GLM with random weights, dropout off, in eval mode.

    ``spread`` draws larger matrices, so that greedy generation does not collapse into
    repeating one token and decoding tests see varied tokens.
    """
    transformers = pytest.importorskip("paddlenlp.transformers", reason="PaddleNLP (the reference) is not installed")
    paddle.seed(seed)
    config = transformers.GLMConfig(output_predict=True, **NO_DROPOUT, **config_kwargs)
    return randomized(getattr(transformers, cls_name)(config), seed, spread)


def random_model(config_kwargs: dict, seed: int = 0, spread: bool = False, cls=None):
    """Our model (default GLMForConditionalGeneration) with the random weights of :func:`paddlenlp_model`,
    for tests whose reference is not PaddleNLP (cache vs recompute, hand-built inputs, files)."""
    import paddle_glm

    cls = cls or paddle_glm.GLMForConditionalGeneration
    paddle.seed(seed)
    return randomized(cls(paddle_glm.GLMConfig(**NO_DROPOUT, **config_kwargs)), seed, spread)


def randomized(model, seed: int, spread: bool):
    """``model`` with random-but-not-trivial LayerNorms and biases (so a swapped tensor cannot go
    unnoticed), larger matrices when ``spread``, in eval mode."""
    rng = np.random.default_rng(seed)
    for name, p in model.state_dict().items():
        if len(p.shape) == 1:
            p.set_value(rng.normal(1.0 if name.endswith("layernorm.weight") else 0.0, 0.1, p.shape).astype("float32"))
        elif spread:
            p.set_value(rng.normal(0.0, 0.5 if "embeddings" in name else 0.2, p.shape).astype("float32"))
    model.eval()
    return model


def ours_from(reference, config_kwargs: dict, cls=None):
    """Our model with the reference's weights, copied tensor by tensor by name."""
    import paddle_glm

    cls = cls or paddle_glm.GLMForConditionalGeneration
    model = cls(paddle_glm.GLMConfig(**NO_DROPOUT, **config_kwargs))
    theirs = reference.state_dict()
    ours = model.state_dict()
    assert set(theirs) == set(ours), set(theirs) ^ set(ours)
    for name, p in ours.items():
        p.set_value(theirs[name].numpy())
    model.eval()
    return model


def generation_batch(config_kwargs: dict, lengths=(9, 6), gen=5, seed=1, mask_at=(3, 2)):
    """A right-padded batch in GLM's generation form, built independently of the tokenizer.

    Returns numpy ``input_ids [b, L+gen]``, ``position_ids [b, 2, L+gen]`` and the 0/1
    ``attention_mask [b, 1, L+gen, L+gen]`` of GLM's generation layout (the README's model card flow).
    """
    rng = np.random.default_rng(seed)
    vocab = config_kwargs["vocab_size"]
    b, L = len(lengths), max(lengths)
    total = L + gen
    ids = rng.integers(0, vocab, size=(b, total)).astype("int64")
    pos = np.zeros((b, 2, total), dtype="int64")
    mask = np.zeros((b, 1, total, total), dtype="int64")
    for r, (n, m) in enumerate(zip(lengths, mask_at)):
        ids[r, n:L] = 0  # padding
        pos[r, 0, :L] = np.arange(L)
        pos[r, 0, L:] = m
        pos[r, 1, L:] = np.arange(1, gen + 1)
        mask[r, 0, :, :n] = 1  # the real context is visible to every row
        for i in range(gen):
            mask[r, 0, L + i, L:L + i + 1] = 1  # causal within the generated block
    return ids, pos, mask


def logits_of(model, *args, **kwargs) -> np.ndarray:
    """Logits from either implementation (PaddleNLP returns them in an output object)."""
    if type(model).__module__.startswith("paddlenlp"):
        kwargs["return_dict"] = True
    out = model(*[paddle.to_tensor(a) if isinstance(a, np.ndarray) else a for a in args], **kwargs)
    return out.logits.numpy()


def integer_route() -> bool:
    """Whether the loaded C++ operators have int4's integer route (an AVX2 and FMA build)."""
    from paddle_glm import cpu_operators

    return cpu_operators.int4_integer_route()[0]


def activation_rounding_bound(x, d, group_size, bits=16):
    """How far csrc/int4_integer_product.cc's rounding of ``x`` ``[n, in]`` to int16 (``bits`` 16) or int8 (8) may
    move each output of an int4 product (``d``: the dequantized weight ``[out, in]``): each input by at most its
    group's largest |x| / 65534 (int8: / 254), times the |weights| it meets: ``[n, out]``."""
    n, width = x.shape
    levels = 2 * (2 ** (bits - 1) - 1)  # 65534 or 254
    step = np.abs(x.astype(np.float64)).reshape(n, -1, group_size).max(axis=2, keepdims=True) / levels  # [n, groups, 1]
    step = np.broadcast_to(step, (n, width // group_size, group_size)).reshape(n, width)  # [n, in]
    return step @ np.abs(d).T
