"""The float projection's routes (paddle_glm/linear.py): the C++ small-batch operator against float64
numpy on odd shapes, and the dispatch that keeps training, large batches and other dtypes on Paddle's kernel."""
import numpy as np
import paddle
import pytest

import paddle_glm.linear as linear_module
from paddle_glm import cpu_operators
from paddle_glm.linear import (
    BLAS,
    BLAS_ROWS,
    SMALL_BATCH,
    blas_linear,
    inference_route,
    linear,
    linear_transposed,
)

pytestmark = pytest.mark.skipif(not cpu_operators.status()[0], reason="the C++ CPU operators could not be built")


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("in_features,out_features", [(1, 1), (7, 3), (64, 513), (130, 1030), (1024, 3072)])
@pytest.mark.parametrize("rows", [1, 2, 5, 8, 16, 37, 128])
def test_operator_equals_float64(in_features, out_features, rows, transposed):
    rng = np.random.default_rng(in_features * 31 + rows)
    x = rng.standard_normal((rows, in_features)).astype(np.float32)
    x[rows // 2] = 0  # a row of zeros
    w = rng.standard_normal((in_features, out_features)).astype(np.float32)
    stored = np.ascontiguousarray(w.T) if transposed else w  # [out, in] (the tied output projection) or [in, out]
    got = cpu_operators.small_batch_linear(paddle.to_tensor(x), paddle.to_tensor(stored), transposed=transposed).numpy()
    ref = x.astype(np.float64) @ w.astype(np.float64)
    scale = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64) + 1e-30  # the sum's magnitude
    assert got.shape == (rows, out_features)
    assert np.max(np.abs(got - ref) / scale) < 1e-5


@pytest.mark.parametrize("threads", [1, 3, 5])
def test_transposed_operator_at_every_thread_count(monkeypatch, threads):
    """The [out, in] kernel's channel streams (csrc/row_streams.h) with other thread counts than the
    machine's: leftover channels of every size."""
    monkeypatch.setattr(cpu_operators, "chosen_cpu_threads", lambda: threads)
    rng = np.random.default_rng(threads)
    for out_features in (1, 6, 13, 29, 97):
        for rows in (1, 2, 3):
            x = rng.standard_normal((rows, 40)).astype(np.float32)
            w = rng.standard_normal((out_features, 40)).astype(np.float32)
            got = cpu_operators.small_batch_linear(paddle.to_tensor(x), paddle.to_tensor(w), transposed=True).numpy()
            np.testing.assert_allclose(got, x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 3, 128])
def test_operator_adds_the_bias(rows):
    rng = np.random.default_rng(rows)
    x, w = rng.standard_normal((rows, 130)).astype(np.float32), rng.standard_normal((130, 1030)).astype(np.float32)
    bias = rng.standard_normal(1030).astype(np.float32) * 100  # large: a missing or doubled bias shows
    got = cpu_operators.small_batch_linear(paddle.to_tensor(x), paddle.to_tensor(w), paddle.to_tensor(bias)).numpy()
    ref = x.astype(np.float64) @ w.astype(np.float64) + bias
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-3)
    with paddle.no_grad():  # and through linear(), the model's route
        np.testing.assert_allclose(linear(paddle.to_tensor(x), paddle.to_tensor(w), paddle.to_tensor(bias)).numpy(),
                                   ref, rtol=1e-5, atol=1e-3)
    with pytest.raises(Exception, match="bias must be a float32 CPU tensor of w's outputs"):
        cpu_operators.small_batch_linear(paddle.to_tensor(x), paddle.to_tensor(w.T.copy()), paddle.to_tensor(bias),
                                         transposed=True)


def test_operator_takes_leading_dims_zero_rows_and_strided_x():
    rng = np.random.default_rng(0)
    w = paddle.to_tensor(rng.standard_normal((12, 20)).astype(np.float32))
    x = paddle.to_tensor(rng.standard_normal((2, 3, 12)).astype(np.float32))
    np.testing.assert_allclose(cpu_operators.small_batch_linear(x, w).numpy(), (x @ w).numpy(), rtol=1e-5, atol=1e-5)
    assert list(cpu_operators.small_batch_linear(paddle.zeros([2, 0, 12]), w).shape) == [2, 0, 20]
    wide = paddle.to_tensor(rng.standard_normal((4, 24)).astype(np.float32))
    strided = wide[:, ::2]  # [4, 12], not contiguous
    np.testing.assert_allclose(cpu_operators.small_batch_linear(strided, w).numpy(), (strided @ w).numpy(),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="at most 128 rows"):
        cpu_operators.small_batch_linear(paddle.ones([129, 12]), w)
    with pytest.raises(Exception, match="x has no inputs"):
        cpu_operators.small_batch_linear(paddle.ones([2, 0]), paddle.ones([0, 20]))
    one = paddle.to_tensor(rng.standard_normal(12).astype(np.float32))  # 1-D: one row
    np.testing.assert_allclose(cpu_operators.small_batch_linear(one, w).numpy(), (one @ w).numpy(), rtol=1e-5,
                               atol=1e-5)


def test_route_only_without_gradients_small_float32_batches():
    w = paddle.randn([8, 4])
    x = paddle.randn([2, 1, 8])
    with paddle.no_grad():
        assert inference_route(x, w) == SMALL_BATCH
        assert inference_route(paddle.randn([1, BLAS_ROWS - 1, 8]), w) == SMALL_BATCH  # a short prompt's prefill
        assert inference_route(paddle.randn([1, BLAS_ROWS, 8]), w) == BLAS  # a longer one
        assert inference_route(x.astype("float64"), w.astype("float64")) is None
    w.stop_gradient = False
    assert inference_route(x, w) is None  # training: Paddle's kernel records the gradient
    w.stop_gradient = True
    assert inference_route(x, w) == SMALL_BATCH


def test_longer_prefills_take_blas_when_this_process_may_use_every_core(monkeypatch):
    w = paddle.randn([8, 4])
    with paddle.no_grad():
        assert inference_route(paddle.randn([1, BLAS_ROWS - 1, 8]), w) == SMALL_BATCH
        assert inference_route(paddle.randn([2, BLAS_ROWS // 2, 8]), w) == BLAS
        assert inference_route(paddle.randn([2, 65, 8]), w) == BLAS  # 130 rows
        assert inference_route(paddle.randn([BLAS_ROWS, 1, 8]), w) == SMALL_BATCH  # a decode step: one position a row
        assert inference_route(paddle.randn([129, 1, 8]), w) == BLAS  # more rows than the operator takes
        monkeypatch.setenv("PADDLE_LOCAL_SIZE", "2")  # two ranks on this machine: BLAS's own threads would crowd them
        monkeypatch.setattr(linear_module, "chosen_cpu_threads", linear_module.usable_cores)  # even with every core
        assert inference_route(paddle.randn([2, 65, 8]), w) is None  # more rows than the operator takes
        assert inference_route(paddle.randn([1, 128, 8]), w) == SMALL_BATCH
        monkeypatch.delenv("PADDLE_LOCAL_SIZE")
        monkeypatch.setattr(linear_module, "chosen_cpu_threads", lambda: linear_module.usable_cores() - 1)
        assert inference_route(paddle.randn([2, 65, 8]), w) is None  # fewer threads chosen than BLAS would run
        assert inference_route(paddle.randn([1, BLAS_ROWS, 8]), w) == SMALL_BATCH
    w.stop_gradient = False
    assert inference_route(paddle.randn([2, 65, 8]), w) is None  # training: Paddle's kernel records the gradient


@pytest.mark.parametrize("transposed", [False, True])
def test_blas_product_equals_float64(monkeypatch, transposed):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 50, 40)).astype(np.float32)
    w = rng.standard_normal((40, 30)).astype(np.float32)
    b = rng.standard_normal(30).astype(np.float32)
    stored = np.ascontiguousarray(w.T) if transposed else w
    got = blas_linear(paddle.to_tensor(x), paddle.to_tensor(stored), None if transposed else paddle.to_tensor(b),
                      transposed=transposed)
    ref = x.astype(np.float64) @ w + (0 if transposed else b)
    assert list(got.shape) == [3, 50, 30] and got.stop_gradient and got.place.is_cpu_place()
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-5)
    strided = paddle.to_tensor(rng.standard_normal((150, 80)).astype(np.float32))[:, ::2]  # [150, 40], not contiguous
    assert not strided.is_contiguous()
    np.testing.assert_allclose(blas_linear(strided, paddle.to_tensor(w)).numpy(),
                               strided.numpy().astype(np.float64) @ w, rtol=1e-5, atol=1e-5)
    assert list(blas_linear(paddle.zeros([200, 0]), paddle.zeros([0, 30])).shape) == [200, 30]  # no inputs
    calls = []
    monkeypatch.setattr(linear_module, "blas_linear", lambda *a, **k: calls.append(1) or blas_linear(*a, **k))
    with paddle.no_grad():  # linear and linear_transposed take this route from BLAS_ROWS rows on
        np.testing.assert_allclose(linear(paddle.to_tensor(x), paddle.to_tensor(w), paddle.to_tensor(b)).numpy(),
                                   x.astype(np.float64) @ w + b, rtol=1e-5, atol=1e-5)
        embeddings = paddle.to_tensor(np.ascontiguousarray(w.T))  # [out, in], as a tied output projection
        np.testing.assert_allclose(linear_transposed(paddle.to_tensor(x), embeddings).numpy(),
                                   x.astype(np.float64) @ w, rtol=1e-5, atol=1e-5)
    assert len(calls) == 2


def test_linear_keeps_the_gradient_and_the_bias():
    rng = np.random.default_rng(1)
    x = paddle.to_tensor(rng.standard_normal((3, 8)).astype(np.float32))
    w = paddle.to_tensor(rng.standard_normal((8, 5)).astype(np.float32))
    b = paddle.to_tensor(rng.standard_normal(5).astype(np.float32))
    ref = x.numpy().astype(np.float64) @ w.numpy() + b.numpy()
    with paddle.no_grad():
        np.testing.assert_allclose(linear(x, w, b).numpy(), ref, rtol=1e-5, atol=1e-5)
    w.stop_gradient = False
    out = linear(x, w, b)
    (grad,) = paddle.grad(out.sum(), [w])
    np.testing.assert_allclose(grad.numpy(), np.repeat(x.numpy().sum(0)[:, None], 5, axis=1), rtol=1e-5)


def test_transposed_route_is_the_tied_output_projection():
    rng = np.random.default_rng(2)
    x = paddle.to_tensor(rng.standard_normal((2, 1, 8)).astype(np.float32))
    embeddings = paddle.to_tensor(rng.standard_normal((11, 8)).astype(np.float32))  # [vocab, hidden]
    ref = paddle.matmul(x, embeddings, transpose_y=True).numpy()
    with paddle.no_grad():
        np.testing.assert_allclose(linear_transposed(x, embeddings).numpy(), ref, rtol=1e-5, atol=1e-5)
    embeddings.stop_gradient = False  # training: Paddle's matmul, with the gradient
    (grad,) = paddle.grad(linear_transposed(x, embeddings).sum(), [embeddings])
    np.testing.assert_allclose(grad.numpy(), np.repeat(x.numpy().sum((0, 1))[None], 11, axis=0), rtol=1e-5)


def test_a_decode_step_of_many_rows_keeps_the_operator(monkeypatch):
    """A model's decode step of BLAS_ROWS rows (its projections and its tied output projection) never takes
    BLAS, though BLAS may run: one position a row."""
    from conftest import TINY_A, random_model

    monkeypatch.setattr(linear_module, "chosen_cpu_threads", linear_module.usable_cores)
    monkeypatch.setattr(linear_module, "local_ranks", lambda: 1)
    model = random_model(TINY_A, seed=0)
    rows, context = BLAS_ROWS, 3
    cache = model.new_cache(rows, context + 2)
    with paddle.no_grad():
        logits = model(paddle.randint(100, 900, [rows, context]), cache=cache, last_token_only=True).logits[:, -1]
        cache.show(paddle.ones([rows, context], dtype="bool"))
        calls = []
        monkeypatch.setattr(linear_module, "blas_linear", lambda *a, **k: calls.append(1) or blas_linear(*a, **k))
        position = paddle.to_tensor([[[context], [0]]] * rows, dtype="int64")  # [rows, 2, 1]
        step = model.decode_step(logits.argmax(-1, keepdim=True), position, paddle.full([rows], context, "int64"),
                                 cache)
    assert list(step.shape) == [rows, model.config.vocab_size] and not calls

