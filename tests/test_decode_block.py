"""A quantized block's one-call CPU decode step (``glm_decode_block``, ``quantization/decode_block.py``) against the
block's own ops (its LayerNorms, the weight-only products, the ``cpu_decode`` attention, Paddle's GELU and adds),
which the other tests hold to float64 references; when it is taken and when it is not."""
import numpy as np
import paddle
import pytest

from conftest import TINY_A, random_model

from paddle_glm import cpu_operators
from paddle_glm.attention import CPU_DECODE, PreparedMask
from paddle_glm.devices import chosen_cpu_threads, set_cpu_threads
from paddle_glm.lora import LoRAConfig, apply_lora
from paddle_glm.model import GLMBlock
from paddle_glm.quantization.decode_block import QuantizedDecodeBlock
from paddle_glm.quantization.decode_stack import QuantizedDecodeStack
from paddle_glm.quantization.rewrite import quantize_model
from paddle_glm.quantization.settings import INT4, INT8, QuantSettings

pytestmark = pytest.mark.skipif(not cpu_operators.status()[0], reason="the C++ CPU operators could not be built")
MIN = float(np.finfo("float32").min)
SETTINGS = {INT8: QuantSettings(INT8), INT4: QuantSettings(INT4, 16)}
# The keys and values both paths write: int4's products round their inputs to int16 per group (one step: the
# group's largest |x| / 32767, ~1e-4 after a LayerNorm), so the ~1e-7 by which the fused and Paddle's LayerNorms
# differ can move an input by one step, a key or value by ~step x |weight|.
KV_TOLERANCE = {INT8: 1e-6, INT4: 1e-4}


def quantized_model(quant_type, **config):
    model = random_model(dict(TINY_A, **config), seed=3)
    model.eval()
    quantize_model(model, SETTINGS[quant_type])
    return model


def filled_cache(model, batch, slots, seed):
    """A cache of random keys and values, ~30% of its slots hidden (the written ones shown, as a step's reveal)."""
    rng = np.random.default_rng(seed)
    cache = model.new_cache(batch, slots)
    for buffer in cache.keys + cache.values:
        buffer.set_value(rng.standard_normal(buffer.shape).astype("float32"))
    cache.key_bias = paddle.to_tensor(np.where(rng.random(cache.key_bias.shape) < 0.3, MIN, 0).astype("float32"))
    return cache


def copy_of(cache, model, batch, slots):
    twin = model.new_cache(batch, slots)
    for source, target in zip(cache.keys + cache.values, twin.keys + twin.values):
        target.set_value(source.clone())
    twin.key_bias = cache.key_bias.clone()
    return twin


@pytest.fixture
def threads():
    """Run a test at a chosen operator thread count, then restore this process's."""
    before = chosen_cpu_threads()
    yield set_cpu_threads
    set_cpu_threads(before)


def set_gelu_inputs(block, spread):
    """Put the GELU's inputs far into tanh's flat ends (``spread`` 40: the h->4h bias from -40 to 40) or all near 0
    (``spread`` 1e-4: the h->4h weights scaled by it, no bias, and the 4h->h weights by its inverse, so that the
    MLP's share of the output stays as large as the attention's)."""
    inner, outer = block.mlp.dense_h_to_4h, block.mlp.dense_4h_to_h
    if spread < 1:
        inner.weight_scale.set_value(inner.weight_scale * spread)
        inner.bias.set_value(paddle.zeros_like(inner.bias))
        outer.weight_scale.set_value(outer.weight_scale / spread)
    else:
        inner.bias.set_value(paddle.to_tensor(np.linspace(-spread, spread, inner.bias.shape[0]), dtype="float32"))


@pytest.mark.parametrize("quant_type", [INT8, INT4])
@pytest.mark.parametrize("rows,index,window,spread,thread_count", [
    (1, [5], None, None, 2), (3, [2, 7, 0], None, None, 2), (2, [4], (2, 9), None, 2), (3, [1, 3, 6], None, 40.0, 2),
    (1, [6], None, 1e-4, 2), (3, [0, 1, 2], None, None, 3), (1, [3], None, 40.0, 5)])
def test_the_fused_step_equals_the_blocks_own_ops(quant_type, rows, index, window, spread, thread_count, threads,
                                                  monkeypatch):
    """Thread counts 3 and 5 split the GELU's b x 4h values into spans that are not multiples of a vector."""
    threads(thread_count)
    calls = count_fused_calls(monkeypatch)
    model = quantized_model(quant_type)
    block = model.glm.transformer.layers[1]
    assert isinstance(block, QuantizedDecodeBlock)
    if spread:
        set_gelu_inputs(block, spread)
    cache = filled_cache(model, 3, 16, seed=rows)
    twin = copy_of(cache, model, 3, 16)
    if window:
        cache, twin = cache.window(*window), twin.window(*window)
    x = paddle.to_tensor(np.random.default_rng(7).standard_normal((rows, 1, 64)).astype("float32"))
    write = paddle.to_tensor(index, dtype="int64")
    with paddle.no_grad():
        want = GLMBlock.forward(block, x, PreparedMask(CPU_DECODE, bias=cache.key_bias), cache, 1, write)
        got = block(x, PreparedMask(CPU_DECODE, bias=twin.key_bias), twin, 1, write)
    assert len(calls) == 1  # the operator ran (the reference is the block's own ops)
    scale = float(np.abs(want.numpy()).max())  # float32 sums of large terms (GELU's inputs at 40) round coarser
    assert spread != 1e-4 or scale < 10  # the bound test_gelu_near_zero_moves_the_output_beyond_the_tolerance takes
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5 * scale)
    for a, b in zip(cache._writes.keys + cache._writes.values, twin._writes.keys + twin._writes.values):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=KV_TOLERANCE[quant_type])


def test_gelu_near_zero_moves_the_output_beyond_the_tolerance():
    """With GELU's inputs near 0 (:func:`set_gelu_inputs`) the MLP's share of a block's output (GELU's output is about
    half its input there) is far above the fused test's tolerance, and so is the change if GELU were the identity
    or 0: that case could not pass with either."""
    model = quantized_model(INT8)
    block = model.glm.transformer.layers[1]
    set_gelu_inputs(block, 1e-4)
    x = paddle.to_tensor(np.random.default_rng(7).standard_normal((1, 1, 64)).astype("float32"))
    with paddle.no_grad():
        inner = block.mlp.dense_h_to_4h(block.post_attention_layernorm(x))  # x standing in for the step's x1
        share = {name: block.mlp.dense_4h_to_h(value).numpy() - block.mlp.dense_4h_to_h.bias.numpy()
                 for name, value in (("gelu", paddle.nn.functional.gelu(inner, approximate=True)), ("identity", inner))}
    tolerance = 1e-5 * 10  # the fused test's, for outputs up to 10
    assert np.abs(share["gelu"]).max() > 100 * tolerance
    assert np.abs(share["identity"] - share["gelu"]).max() > 100 * tolerance


def count_fused_calls(monkeypatch):
    calls = []
    real = cpu_operators.decode_block
    monkeypatch.setattr(cpu_operators, "decode_block", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def greedy(model, prompt_length=7, new=6):
    ids = paddle.to_tensor(np.arange(20, 20 + prompt_length)[None].repeat(2, axis=0))
    out = model.generate(ids, max_new_tokens=new, eos_token_id=None, bad_words_ids=[])
    return out.numpy() if isinstance(out, paddle.Tensor) else out[0].numpy()


@pytest.mark.parametrize("quant_type", [INT8, INT4])
def test_generation_takes_the_fused_step_with_the_same_tokens(quant_type, monkeypatch):
    monkeypatch.setattr(QuantizedDecodeStack, "_stack_inputs", lambda self: None)  # each block's own call
    model = quantized_model(quant_type)
    calls = count_fused_calls(monkeypatch)
    fused = greedy(model)
    assert len(calls) == 5 * 2  # 5 decode steps after the prefill, 2 blocks each
    monkeypatch.setattr(QuantizedDecodeBlock, "_operator_inputs", lambda self: None)  # the block's own ops
    separate = greedy(model)
    assert len(calls) == 10
    np.testing.assert_array_equal(fused, separate)


def test_a_lora_adapter_keeps_the_blocks_own_ops(monkeypatch):
    model = apply_lora(quantized_model(INT8), LoRAConfig(r=2))
    calls = count_fused_calls(monkeypatch)
    greedy(model)
    assert calls == []


def test_a_forward_hook_on_a_blocks_layer_keeps_the_blocks_own_ops(monkeypatch):
    """The operator would skip the hook: a block with one on any of its layers runs them one by one."""
    model = quantized_model(INT8)
    seen = []
    model.glm.transformer.layers[0].mlp.register_forward_post_hook(lambda layer, inputs, output: seen.append(1))
    calls = count_fused_calls(monkeypatch)
    greedy(model)
    assert len(calls) == 5 and len(seen) == 6  # block 1 fused at each of the 5 steps; block 0's hook every pass


def test_layernorms_not_in_float32_keep_the_blocks_own_ops():
    block = quantized_model(INT8).glm.transformer.layers[0]
    assert block._operator_inputs() is not None
    norm = block.post_attention_layernorm
    norm.weight = norm.create_parameter(norm.weight.shape, dtype="float64")
    assert block._operator_inputs() is None


def test_parameter_names_do_not_change():
    float_names = set(random_model(TINY_A, seed=3).state_dict())
    quantized = set(quantized_model(INT8).state_dict())
    scales = {name for name in quantized if name.endswith(".weight_scale")}
    assert quantized - scales == float_names
    assert len(scales) == 2 * 4 + 1  # every projection and the word embeddings


def test_the_operator_refuses_params_that_do_not_fit():
    model = quantized_model(INT8)
    block = model.glm.transformer.layers[0]
    cache = model.new_cache(1, 8)
    params = block._operator_inputs()[0]
    keys, values, bias, length = cache.step_buffers(0)
    index = paddle.to_tensor([0], dtype="int64")
    with pytest.raises(Exception, match="glm_decode_block: expected 16 params"):
        cpu_operators.decode_block(paddle.ones([1, 1, 64]), params[:-1], keys, values, bias, index, length, INT8, 64,
                                   (1e-5, 1e-5))
    params[2], params[8] = params[8], params[2]  # query_key_value's weight where dense_h_to_4h's goes
    with pytest.raises(Exception, match="glm_decode_block query_key_value"):
        cpu_operators.decode_block(paddle.ones([1, 1, 64]), params, keys, values, bias, index, length, INT8, 64,
                                   (1e-5, 1e-5))
