"""KVCache on its own: writes by index in both layouts, overflow, the key bias, beam reordering."""
import numpy as np
import paddle
import pytest

from paddle_glm import GLMError
from paddle_glm.attention import BHSD, BSHD
from paddle_glm.kv_cache import KVCache

LAYERS, BATCH, SLOTS, HEADS, DIM = 2, 3, 8, 2, 4
MIN = float(np.finfo("float32").min)


def new_cache(layout: str) -> KVCache:
    return KVCache.allocate(LAYERS, BATCH, SLOTS, HEADS, DIM, "float32", layout)


def new_tokens(count: int, layout: str, seed: int):
    """Random k, v for ``count`` tokens in ``layout``, and the same as ``[b, heads, count, d]`` numpy."""
    k, v = (np.random.default_rng(seed + i).normal(size=(BATCH, HEADS, count, DIM)).astype("float32") for i in (0, 1))
    to_layout = (lambda a: a) if layout == BHSD else (lambda a: a.transpose(0, 2, 1, 3))
    return paddle.to_tensor(to_layout(k)), paddle.to_tensor(to_layout(v)), k, v


def as_bhsd(buffer: paddle.Tensor, layout: str) -> np.ndarray:
    array = buffer.numpy()
    return array if layout == BHSD else array.transpose(0, 2, 1, 3)


@pytest.mark.parametrize("layout", [BHSD, BSHD])
def test_buffers_have_the_layout_shape(layout):
    cache = new_cache(layout)
    expected = [BATCH, HEADS, SLOTS, DIM] if layout == BHSD else [BATCH, SLOTS, HEADS, DIM]
    assert all(list(t.shape) == expected for t in cache.keys + cache.values)
    assert len(cache.keys) == len(cache.values) == LAYERS
    assert list(cache.key_bias.shape) == [BATCH, HEADS, 1, SLOTS] and bool((cache.key_bias == MIN).all())


@pytest.mark.parametrize("layout", [BHSD, BSHD])
@pytest.mark.parametrize("as_tensor", [False, True], ids=["int_index", "tensor_index"])
def test_writes_land_at_the_index_and_nowhere_else(layout, as_tensor):
    cache = new_cache(layout)
    k0, v0, k0_np, v0_np = new_tokens(3, layout, seed=0)  # a prefill of 3 tokens at slot 0
    cache.write(1, k0, v0, 0)
    k1, v1, k1_np, v1_np = new_tokens(1, layout, seed=5)  # then one token at slot 5
    keys, values = cache.write(1, k1, v1, paddle.full([1], 5, "int64") if as_tensor else 5)
    assert keys is cache.keys[1] and values is cache.values[1]  # the full buffers, written in place
    expected_k, expected_v = (np.zeros((BATCH, HEADS, SLOTS, DIM), "float32") for _ in range(2))
    expected_k[:, :, :3], expected_v[:, :, :3] = k0_np, v0_np
    expected_k[:, :, 5:6], expected_v[:, :, 5:6] = k1_np, v1_np
    np.testing.assert_array_equal(as_bhsd(cache.keys[1], layout), expected_k)
    np.testing.assert_array_equal(as_bhsd(cache.values[1], layout), expected_v)
    assert not cache.keys[0].numpy().any() and not cache.values[0].numpy().any()  # other layers untouched


@pytest.mark.parametrize("layout", [BHSD, BSHD])
def test_overflow_is_an_error(layout):
    cache = new_cache(layout)
    k, v, _, _ = new_tokens(3, layout, seed=0)
    cache.write(0, k, v, SLOTS - 3)  # exactly fits
    expected = f"KV cache overflow: writing 3 tokens at slot {SLOTS - 2} .* max_length {SLOTS}"
    with pytest.raises(GLMError, match=expected):
        cache.write(0, k, v, SLOTS - 2)


def test_show_then_reveal():
    cache = new_cache(BHSD)
    visible = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1]], dtype=bool)  # [b, 3 prompt slots]
    cache.show(paddle.to_tensor(visible))
    expected = np.full((BATCH, HEADS, 1, SLOTS), MIN, "float32")
    expected[:, :, 0, :3] = np.where(visible, 0.0, MIN)[:, None]
    np.testing.assert_array_equal(cache.key_bias.numpy(), expected)
    cache.reveal(paddle.full([1], 6, "int64"))  # slot 6 for every row and head, nothing else
    expected[:, :, :, 6] = 0
    np.testing.assert_array_equal(cache.key_bias.numpy(), expected)


@pytest.mark.parametrize("layout", [BHSD, BSHD])
def test_reorder_moves_whole_rows(layout):
    cache = new_cache(layout)
    for layer in range(LAYERS):
        k, v, _, _ = new_tokens(SLOTS, layout, seed=10 * layer)
        cache.write(layer, k, v, 0)
    bias = np.arange(BATCH * SLOTS, dtype="float32").reshape([BATCH, 1, 1, SLOTS]).repeat(HEADS, 1)
    cache.key_bias = paddle.to_tensor(bias)
    before = ([t.numpy() for t in cache.keys], [t.numpy() for t in cache.values], cache.key_bias.numpy())
    order = [2, 2, 0]
    cache.reorder(paddle.to_tensor(order, dtype="int64"))
    for layer in range(LAYERS):
        np.testing.assert_array_equal(cache.keys[layer].numpy(), before[0][layer][order])
        np.testing.assert_array_equal(cache.values[layer].numpy(), before[1][layer][order])
    np.testing.assert_array_equal(cache.key_bias.numpy(), before[2][order])


@pytest.mark.parametrize("layout", [BHSD, BSHD])
def test_reorder_can_drop_rows_and_later_writes_fit_the_smaller_batch(layout):
    cache = new_cache(layout)
    cache.show(paddle.ones([BATCH, 2], dtype="bool"))
    cache.reorder(paddle.to_tensor([2, 0], dtype="int64"))  # row 1 dropped
    assert cache.keys[0].shape[0] == cache.values[1].shape[0] == cache.key_bias.shape[0] == 2
    k, v, _, _ = new_tokens(1, layout, seed=3)
    keys, _ = cache.write(0, k[:2], v[:2], paddle.full([1], 4, "int64"))  # a decode step's write, by index
    cache.reveal(paddle.full([1], 4, "int64"))
    written = as_bhsd(keys, layout)
    np.testing.assert_array_equal(written[:, :, 4:5], as_bhsd(k[:2], layout))
    assert not np.delete(written, 4, axis=2).any()
    expected = np.full((2, HEADS, 1, SLOTS), MIN, "float32")
    expected[..., [0, 1, 4]] = 0
    np.testing.assert_array_equal(cache.key_bias.numpy(), expected)


def test_unknown_layout():
    with pytest.raises(ValueError, match="layout"):
        KVCache.allocate(1, 1, 8, 1, 4, "float32", "bsdh")
