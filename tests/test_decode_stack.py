"""A quantized stack's one-call CPU decode step (paddle_glm/quantization/decode_stack.py, csrc/decode_stack.cc)
against each block's own one-call step, when it is taken, its fallbacks and its errors."""
import numpy as np
import paddle
import pytest
from test_decode_block import copy_of, count_fused_calls, filled_cache, greedy, quantized_model

from conftest import TINY_A, integer_route, random_model

from paddle_glm import GLMError, cpu_operators
from paddle_glm.lora import LoRAConfig, apply_lora
from paddle_glm.quantization import decode_stack as stack_module
from paddle_glm.quantization.decode_stack import QuantizedDecodeStack
from paddle_glm.quantization.rewrite import quantize_model, use_int8_activations
from paddle_glm.quantization.settings import INT4, INT8, QuantSettings


def count_stack_calls(monkeypatch):
    calls = []
    real = stack_module.decode_stack
    monkeypatch.setattr(stack_module, "decode_stack", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def per_block(monkeypatch):
    """Each block's own one-call step instead of the stack's."""
    monkeypatch.setattr(QuantizedDecodeStack, "_stack_inputs", lambda self: None)


@pytest.mark.parametrize("quant_type,int8_activations", [(INT8, False), (INT4, False), (INT4, True)])
@pytest.mark.parametrize("rows,index,window", [(1, [5], None), (3, [2, 7, 0], None), (2, [4], (2, 9))])
def test_the_stack_step_equals_each_blocks_own_step(quant_type, int8_activations, rows, index, window, monkeypatch):
    """The same C++ step per block either way: the logits and every layer's keys and values are equal bit for bit
    (3 rows with per-row slots; a window of a bigger cache, whose rows and slots are the first ones; int4 with its
    activations rounded to int8 too)."""
    assert cpu_operators.status()[0]
    calls = count_stack_calls(monkeypatch)
    model = quantized_model(quant_type, num_layers=3)
    if int8_activations:
        use_int8_activations(model)
    cache = filled_cache(model, 3, 16, seed=rows)
    twin = copy_of(cache, model, 3, 16)
    if window:
        cache, twin = cache.window(*window), twin.window(*window)
    rng = np.random.default_rng(rows)
    ids = paddle.to_tensor(rng.integers(0, 100, (rows, 1)))
    positions = paddle.to_tensor(rng.integers(0, 8, (rows, 2, 1)))
    write = paddle.to_tensor(index, dtype="int64")
    with paddle.no_grad():
        got = model.decode_step(ids, positions, write, cache).numpy()
        assert len(calls) == 1
        per_block(monkeypatch)
        want = model.decode_step(ids, positions, write, twin).numpy()
    assert len(calls) == 1
    np.testing.assert_array_equal(got, want)
    for a, b in zip(cache._writes.keys + cache._writes.values, twin._writes.keys + twin._writes.values):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_int8_activations_reach_the_stacks_step(monkeypatch):
    """The stack's step with int8 activations differs from its step with int16 ones (the setting reaches the C++
    call), and each block's own step with int8 activations equals the stack's (test above)."""
    assert cpu_operators.status()[0]
    calls = count_stack_calls(monkeypatch)
    model = quantized_model(INT4, num_layers=3)
    steps = []
    for enabled in (False, True):
        use_int8_activations(model, enabled)
        cache = filled_cache(model, 1, 16, seed=1)
        with paddle.no_grad():
            steps.append(model.decode_step(paddle.to_tensor([[7]]), paddle.to_tensor([[[3], [1]]]),
                                           paddle.to_tensor([5], dtype="int64"), cache).numpy())
    difference = np.abs(steps[0] - steps[1]).max() / np.abs(steps[0]).max()
    assert len(calls) == 2 and difference < 0.05, (calls, difference)
    assert difference > 1e-6 or not integer_route()


@pytest.mark.parametrize("quant_type", [INT8, INT4])
def test_generation_takes_the_stack_step_with_the_same_tokens(quant_type, monkeypatch):
    model = quantized_model(quant_type)
    calls = count_stack_calls(monkeypatch)
    fused = greedy(model)
    assert len(calls) == 5  # one call per decode step after the prefill
    per_block(monkeypatch)
    np.testing.assert_array_equal(fused, greedy(model))


def test_beam_search_takes_the_stack_step_with_the_same_beams(monkeypatch):
    """Beam search reorders the cache's buffers between steps (new tensors): the stack follows them."""
    model = quantized_model(INT4)
    ids = paddle.to_tensor(np.arange(20, 27)[None])
    calls = count_stack_calls(monkeypatch)
    fused = model.generate(ids, max_new_tokens=5, num_beams=3, eos_token_id=None, bad_words_ids=[])
    assert len(calls) == 4
    per_block(monkeypatch)
    separate = model.generate(ids, max_new_tokens=5, num_beams=3, eos_token_id=None, bad_words_ids=[])
    tokens = [(out if isinstance(out, paddle.Tensor) else out[0]).numpy() for out in (fused, separate)]
    np.testing.assert_array_equal(*tokens)


def test_a_lora_adapter_keeps_each_blocks_own_ops(monkeypatch):
    """Neither the stack's call nor a block's own one-call step runs over an adapter (the operator would skip it)."""
    model = apply_lora(quantized_model(INT8), LoRAConfig(r=2))
    stack_calls, block_calls = count_stack_calls(monkeypatch), count_fused_calls(monkeypatch)
    greedy(model)
    assert stack_calls == [] and block_calls == []


def test_a_hook_on_a_block_keeps_each_blocks_own_call(monkeypatch):
    """The stack's call would skip a block's own hooks: with one, every block is called (and the others still take
    their one-call step)."""
    model = quantized_model(INT8)
    seen = []
    model.glm.transformer.layers[1].register_forward_post_hook(lambda layer, inputs, output: seen.append(1))
    calls = count_stack_calls(monkeypatch)
    greedy(model)
    assert calls == [] and len(seen) == 6  # the prefill and 5 steps


def test_a_block_without_its_one_call_step_keeps_the_stacks_own_forward(monkeypatch):
    model = quantized_model(INT8)
    stack = model.glm.transformer
    assert isinstance(stack, QuantizedDecodeStack) and stack._stack_inputs() is not None
    norm = stack.layers[0].post_attention_layernorm
    norm.weight = norm.create_parameter(norm.weight.shape, dtype="float64")
    assert stack._stack_inputs() is None


def test_parameter_names_and_order_do_not_change():
    float_names = list(random_model(TINY_A, seed=3).state_dict())
    quantized = [name for name in quantized_model(INT8).state_dict() if not name.endswith(".weight_scale")]
    assert quantized == float_names


def test_a_failed_check_in_the_stack_is_a_glm_error():
    """The C++ checks' failure comes back as a GLMError naming it (the exception does not cross into Python
    through ctypes), and the process goes on."""
    model = quantized_model(INT8)
    cache = model.new_cache(1, 8)
    layers, first = model.glm.transformer._stack_inputs()
    with pytest.raises(GLMError, match="glm_decode_block: a write index is outside"):
        stack_module.decode_stack(paddle.ones([1, 1, 64]), layers, cache, paddle.to_tensor([8], dtype="int64"),
                                  first)
    layers[1][0][2], layers[1][0][8] = layers[1][0][8], layers[1][0][2]  # qkv's weight where h->4h's goes
    with pytest.raises(GLMError, match="glm_decode_block query_key_value"):
        stack_module.decode_stack(paddle.ones([1, 1, 64]), layers, cache, paddle.to_tensor([0], dtype="int64"),
                                  first)
    with pytest.raises(GLMError, match="is not a contiguous CPU input it takes"):
        stack_module.decode_stack(paddle.ones([1, 1, 64], dtype="float64"), layers, cache,
                                  paddle.to_tensor([0], dtype="int64"), first)


def test_new_values_and_new_parameters_reach_the_stack(monkeypatch):
    """The table's rows are kept between calls with their addresses re-read: values set into a parameter, and a
    parameter object put in another's place, are what the next step uses (against each block's own step)."""
    model = quantized_model(INT8)
    ids, positions = paddle.to_tensor([[5]]), paddle.to_tensor([[[3], [1]]])
    write = paddle.to_tensor([3], dtype="int64")
    norm = model.glm.transformer.layers[1].input_layernorm
    results = []
    with paddle.no_grad():
        for stack in (True, False):
            if not stack:
                per_block(monkeypatch)
            cache = filled_cache(model, 1, 8, seed=4)
            model.decode_step(ids, positions, write, cache)
            norm.weight.set_value(np.full([64], 0.5, np.float32))
            first = model.decode_step(ids, positions, write, cache).numpy()
            norm.weight = norm.create_parameter([64], dtype="float32",
                                                default_initializer=paddle.nn.initializer.Constant(2.0))
            results.append((first, model.decode_step(ids, positions, write, cache).numpy()))
            norm.weight = norm.create_parameter([64], dtype="float32",
                                                default_initializer=paddle.nn.initializer.Constant(1.0))
    (a, b), (c, d) = results
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(b, d)
    assert np.abs(a - b).max() > 1e-3  # the new parameter changed the logits


def test_a_parameter_of_another_shape_is_refused_not_read_past():
    """A parameter put in another's place gets its own row: one of the wrong shape fails the C++ check (a row kept
    from the old parameter would make the step read past the new one's memory)."""
    model = quantized_model(INT8)
    ids, positions = paddle.to_tensor([[5]]), paddle.to_tensor([[[3], [1]]])
    write = paddle.to_tensor([3], dtype="int64")
    cache = filled_cache(model, 1, 8, seed=4)
    qkv = model.glm.transformer.layers[1].attention.query_key_value
    with paddle.no_grad():
        model.decode_step(ids, positions, write, cache)
        qkv.bias = qkv.create_parameter([10], dtype="float32", is_bias=True)
        with pytest.raises(GLMError, match="glm_decode_block query_key_value: bias must be"):
            model.decode_step(ids, positions, write, cache)


def test_hooks_set_before_quantizing_keep_running():
    """The rewrite's stack and blocks take over the hooks of the layers they replace (and their remove handles)."""
    model = random_model(TINY_A, seed=3)
    seen = []
    model.glm.transformer.register_forward_post_hook(lambda *args: seen.append("stack"))
    handle = model.glm.transformer.layers[0].register_forward_post_hook(lambda *args: seen.append("block"))
    quantize_model(model, QuantSettings(INT8))
    ids = paddle.to_tensor([[5, 6, 7]])
    with paddle.no_grad():
        model(ids)
        assert seen == ["block", "stack"]
        handle.remove()
        model(ids)
    assert seen == ["block", "stack", "stack"]


def test_row_cache_rereads_the_rows_whose_address_moved():
    """A kept row whose tensor's memory moved (a cast in place reallocates) is read again: address, dtype, shape."""

    class Place:
        def is_cpu_place(self):
            return True

    class Fake:
        def __init__(self, address, dtype, shape):
            self.address, self.dtype, self.shape, self.place = address, dtype, shape, Place()

        def data_ptr(self):
            return self.address

        def is_contiguous(self):
            return True

    a, b = Fake(1000, paddle.float32, [4, 8]), Fake(2000, paddle.int8, [8])
    rows = stack_module.RowCache()
    np.testing.assert_array_equal(rows.rows([a, b]), [[1000, 0, 2, 4, 8, 1, 1], [2000, 1, 1, 8, 1, 1, 1]])
    b.address, b.dtype, b.shape = 3000, paddle.uint8, [2, 4]
    np.testing.assert_array_equal(rows.rows([a, b]), [[1000, 0, 2, 4, 8, 1, 1], [3000, 2, 2, 2, 4, 1, 1]])
    a.shape = [32]  # the same memory: the row is kept (a reshape in place keeps the element count)
    np.testing.assert_array_equal(rows.rows([a, b])[0], [1000, 0, 2, 4, 8, 1, 1])
