"""The ``cpu_decode`` attention backend: the C++ operator ``glm_decode_attention`` against float64 numpy (the
cache write and the attention, over windows of a bigger cache, one or per-row write slots), the choice
made by ``decode_backend``, and a model's decode steps through it against Paddle's ops (``math``)."""
import numpy as np
import paddle
import pytest

from conftest import TINY_A, random_model

import paddle_glm.model as model_module
from paddle_glm import GLMError, cpu_operators
from paddle_glm.attention import BHSD, BSHD, CPU_DECODE, MATH, SDPA, decode_backend

pytestmark = pytest.mark.skipif(not cpu_operators.status()[0], reason="the C++ CPU operators could not be built")
MIN = float(np.finfo("float32").min)


def reference(qkv, keys, values, bias, index, length):
    """float64 numpy: the written buffers and the context of every row and head."""
    b, heads, d = qkv.shape[0], keys.shape[1], keys.shape[3]
    keys, values = keys.copy(), values.copy()
    q = qkv.reshape(b, 3, heads, d).astype(np.float64)  # [b, 1, 3 * heads * d] -> q | k | v
    context = np.zeros((b, 1, heads * d))
    for r in range(b):
        slot = index[0] if len(index) == 1 else index[r]
        keys[r, :, slot], values[r, :, slot] = q[r, 1], q[r, 2]
        for h in range(heads):
            scores = (q[r, 0, h] / np.sqrt(d)) @ keys[r, h, :length].T.astype(np.float64) + bias[r, h, 0, :length]
            p = np.exp(scores - scores.max())
            context[r, 0, h * d:(h + 1) * d] = (p / p.sum()) @ values[r, h, :length]
    return context, keys, values


@pytest.mark.parametrize("rows,batch,heads,slots,length,d,per_row", [
    (1, 1, 1, 8, 8, 4, False), (2, 3, 2, 24, 16, 8, True), (3, 3, 4, 40, 33, 64, True), (4, 6, 3, 16, 9, 7, False),
    (5, 5, 16, 304, 304, 64, True)])
def test_operator_equals_float64(rows, batch, heads, slots, length, d, per_row):
    rng = np.random.default_rng(rows * 100 + slots)
    keys = rng.standard_normal((batch, heads, slots, d)).astype(np.float32)
    values = rng.standard_normal((batch, heads, slots, d)).astype(np.float32)
    bias = np.where(rng.random((batch, heads, 1, slots)) < 0.4, MIN, 0).astype(np.float32)
    index = rng.integers(0, length, rows if per_row else 1)
    for r in range(rows):
        bias[r, :, 0, index[r] if per_row else index[0]] = 0  # revealed before the step, as decode_step does
    qkv = rng.standard_normal((rows, 1, 3 * heads * d)).astype(np.float32)
    k_t, v_t = paddle.to_tensor(keys), paddle.to_tensor(values)
    got = cpu_operators.decode_attention(paddle.to_tensor(qkv), k_t, v_t, paddle.to_tensor(bias),
                                         paddle.to_tensor(index, dtype="int64"), length)
    context, want_k, want_v = reference(qkv, keys, values, bias, index, length)
    assert list(got.shape) == [rows, 1, heads * d]
    np.testing.assert_allclose(got.numpy(), context, rtol=2e-5, atol=2e-5)
    np.testing.assert_array_equal(k_t.numpy(), want_k)  # written in place at the slots, nothing else changed
    np.testing.assert_array_equal(v_t.numpy(), want_v)


@pytest.mark.parametrize("threads", [1, 3, 5, 8])
def test_every_thread_count_attends_every_head_once(threads):
    """Each thread attends its share of the (row, head) pairs four at a time: shares that are not multiples of four,
    and more threads than pairs."""
    rng = np.random.default_rng(threads)
    rows, heads, slots, d = 2, 3, 12, 8
    keys = rng.standard_normal((rows, heads, slots, d)).astype(np.float32)
    values = rng.standard_normal((rows, heads, slots, d)).astype(np.float32)
    bias = np.where(rng.random((rows, heads, 1, slots)) < 0.3, MIN, 0).astype(np.float32)
    bias[:, :, 0, 5] = 0
    qkv = rng.standard_normal((rows, 1, 3 * heads * d)).astype(np.float32)
    k_t, v_t = paddle.to_tensor(keys), paddle.to_tensor(values)
    got = paddle._C_ops._run_custom_op(cpu_operators.DECODE_ATTENTION_OP, paddle.to_tensor(qkv), k_t, v_t,
                                       paddle.to_tensor(bias), paddle.to_tensor([5], dtype="int64"), slots, threads)[0]
    context, want_k, want_v = reference(qkv, keys, values, bias, [5], slots)
    np.testing.assert_allclose(got.numpy(), context, rtol=2e-5, atol=2e-5)
    np.testing.assert_array_equal(k_t.numpy(), want_k)
    np.testing.assert_array_equal(v_t.numpy(), want_v)


def test_operator_refuses_a_slot_outside_the_window_and_bad_shapes():
    keys, bias = paddle.zeros([2, 2, 8, 4]), paddle.zeros([2, 2, 1, 8])
    qkv = paddle.ones([2, 1, 24])
    for index in ([1, 6], [-1, 0]):
        with pytest.raises(Exception, match="write index is outside 0..length-1"):
            cpu_operators.decode_attention(qkv, keys, keys.clone(), bias, paddle.to_tensor(index, dtype="int64"), 6)
    with pytest.raises(Exception, match="length must be in 1..T"):
        cpu_operators.decode_attention(qkv, keys, keys.clone(), bias, paddle.to_tensor([1], dtype="int64"), 9)
    base = paddle.zeros([2, 2, 16, 4])  # a view would be copied by Paddle's custom-op call, losing the write
    with pytest.raises(GLMError, match="must be contiguous .they are written in place"):
        cpu_operators.decode_attention(qkv, base[:, :, :8], keys.clone(), bias, paddle.to_tensor([1], dtype="int64"), 8)
    with pytest.raises(Exception, match="qkv must be"):
        cpu_operators.decode_attention(paddle.ones([3, 1, 24]), keys, keys.clone(), bias,
                                       paddle.to_tensor([1], dtype="int64"), 8)
    with pytest.raises(Exception, match="index must be int64"):
        cpu_operators.decode_attention(qkv, keys, keys.clone(), bias, paddle.to_tensor([1, 2, 3], dtype="int64"), 8)
    assert not keys.numpy().any()  # nothing written by a refused call


def test_backend_choice():
    buffer = paddle.zeros([1, 2, 8, 4])
    with paddle.no_grad():
        assert decode_backend(BHSD, buffer, training=False) == CPU_DECODE
        assert decode_backend(BHSD, buffer, training=True) == MATH  # attention dropout: Paddle's ops
        assert decode_backend(BHSD, buffer.astype("float64"), training=False) == MATH
        assert decode_backend(BSHD, buffer, training=False) == SDPA
    assert decode_backend(BHSD, buffer, training=False) == MATH  # a gradient to record


def decode_steps(model, cache, tokens, rows, positions, nested=False):
    """Four decode steps of ``rows`` rows through a window of ``cache`` (``nested``: a window of a wider
    window), each row at its own slot."""
    logits = []
    with paddle.no_grad():
        for step in range(4):
            index = paddle.to_tensor([p + step for p in positions], dtype="int64")
            position = paddle.stack([index, paddle.zeros_like(index)], axis=1).unsqueeze(-1)  # [rows, 2, 1]
            outer = cache.window(rows + 1, max(positions) + 9) if nested else cache
            window = outer.window(rows, max(positions) + 6)
            logits.append(model.decode_step(tokens[:, step:step + 1], position, index, window).numpy())
    return np.stack(logits)


def test_model_steps_equal_paddles_ops(monkeypatch):
    """Through a window of a bigger cache with per-row slots (the server's continuous batching): logits and
    the cache buffers equal the ``math`` backend's."""
    model = random_model(TINY_A, seed=5, spread=True)
    tokens = paddle.to_tensor(np.random.default_rng(0).integers(10, 400, (2, 4)), dtype="int64")
    runs, chosen = {}, []
    def spy(*args):
        chosen.append(decode_backend(*args))
        return chosen[-1]

    monkeypatch.setattr(model_module, "decode_backend", spy)
    for backend in (CPU_DECODE, MATH):
        if backend == MATH:
            monkeypatch.setattr(model_module, "decode_backend", lambda *args: MATH)
        cache = model.new_cache(3, 24)
        with paddle.no_grad():
            prompt = paddle.to_tensor(np.random.default_rng(1).integers(10, 400, (3, 7)), dtype="int64")
            model(prompt, cache=cache)
        cache.show(paddle.to_tensor(np.array([[1] * 7, [1] * 5 + [0] * 2, [1] * 7], dtype=bool)))
        runs[backend] = decode_steps(model, cache, tokens, 2, [7, 5]), [k.numpy() for k in cache.keys + cache.values]
    assert chosen == [CPU_DECODE] * 4  # the first run's steps went through the operator
    np.testing.assert_allclose(runs[CPU_DECODE][0], runs[MATH][0], rtol=1e-4, atol=1e-5)
    layers = len(runs[MATH][1]) // 2
    for i, (ours, theirs) in enumerate(zip(runs[CPU_DECODE][1], runs[MATH][1])):
        if i % layers == 0:  # the first layer's keys and values: the same projection's, copied into their slots
            np.testing.assert_array_equal(ours, theirs)
        else:  # later layers' follow the attention's rounding, as the logits do
            np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_a_window_of_a_window_writes_the_whole_buffers():
    model = random_model(TINY_A, seed=6, spread=True)
    tokens = paddle.to_tensor(np.random.default_rng(2).integers(10, 400, (2, 4)), dtype="int64")
    runs = []
    for nested in (False, True):
        cache = model.new_cache(3, 24)
        with paddle.no_grad():
            model(paddle.to_tensor(np.random.default_rng(3).integers(10, 400, (3, 7)), dtype="int64"), cache=cache)
        cache.show(paddle.ones([3, 7], dtype="bool"))
        runs.append((decode_steps(model, cache, tokens, 2, [7, 6], nested), [k.numpy() for k in cache.keys]))
    np.testing.assert_array_equal(runs[1][0], runs[0][0])
    for nested_keys, keys in zip(runs[1][1], runs[0][1]):
        np.testing.assert_array_equal(nested_keys, keys)
