"""Weight-only quantization applied to a model (paddle_glm/quantization): quality, loading, refusals.

The references are the float model itself (the demo's fills, logits on the same weights) and
``kernels.dequantize_weight`` (the stored layout's meaning, tested in test_quant_kernels.py).
"""
from __future__ import annotations

import numpy as np
import paddle
import pytest

from conftest import TINY_A, activation_rounding_bound, integer_route, random_model

from paddle_glm import GLMForConditionalGeneration, cpu_operators
from paddle_glm.demo_cases import DEMO_CASES, DEMO_MODEL_DIR
from paddle_glm.errors import GLMError
from paddle_glm.infilling import fill_blanks
from paddle_glm.lora import LoRAConfig, apply_lora
from paddle_glm.quantization import kernels
from paddle_glm.quantization.layers import QuantizedEmbedding, QuantizedLinear, dequantize_rows
from paddle_glm.quantization.rewrite import quantize_model, use_int8_activations
from paddle_glm.quantization.settings import INT4, INT8, QuantSettings
from paddle_glm.tokenizer import GLMChineseTokenizer

# glm-large-chinese's shape with 2 of its 24 layers (the error grows little with depth on random weights)
GLM_LARGE_2 = dict(num_layers=2, hidden_size=1024, num_attention_heads=16, vocab_size=50048, max_sequence_length=1024)
INT8_MAX_ERROR = 0.03  # the bound; exact per-channel rounding gives ~0.02
INT4_MAX_ERROR = 0.30  # measured 0.24 (groups of 64; random weights are a harsh case)


@pytest.fixture(scope="module")
def tokenizer():
    return GLMChineseTokenizer.from_pretrained(DEMO_MODEL_DIR)


def demo_fills(model, tokenizer):
    return [fill_blanks(model, tokenizer, case.text)[1] for case in DEMO_CASES]


@pytest.mark.parametrize("quant_type,int8_activations", [(INT8, False), (INT4, False), (INT4, True)])
def test_demo_model_quantized_on_load_fills_every_demo_blank(quant_type, int8_activations, tokenizer):
    model = GLMForConditionalGeneration.from_pretrained(str(DEMO_MODEL_DIR), show_progress=False,
                                                        quant_type=quant_type)
    assert isinstance(model.glm.word_embeddings, QuantizedEmbedding)
    if int8_activations:
        use_int8_activations(model)
        assert {layer.activation_bits for layer in model.sublayers() if hasattr(layer, "activation_bits")} == {8}
    assert demo_fills(model, tokenizer) == [list(case.expected) for case in DEMO_CASES]


def test_every_transformer_linear_is_quantized_and_nothing_float_is_left_of_them():
    model = GLMForConditionalGeneration.from_pretrained(str(DEMO_MODEL_DIR), show_progress=False, quant_type=INT8)
    state = model.state_dict()
    linears = [name for name, layer in model.named_sublayers() if isinstance(layer, paddle.nn.Linear)]
    assert linears == []
    quantized = [name for name, layer in model.named_sublayers() if isinstance(layer, QuantizedLinear)]
    assert len(quantized) == 4 * model.config.num_layers
    for name in quantized + ["glm.word_embeddings"]:
        assert state[f"{name}.weight"].dtype == paddle.int8
        assert state[f"{name}.weight_scale"].dtype == paddle.float32
    floats = {name for name, p in state.items() if p.dtype == paddle.float32}
    assert all(name.endswith(("bias", "weight_scale", "position_embeddings.weight", "layernorm.weight"))
               for name in floats), floats
    assert all(p._is_initialized() for p in model.parameters())


@pytest.mark.parametrize("quant_type", [INT8, INT4])
def test_quantize_on_load_equals_quantizing_the_loaded_float_model(quant_type):
    ids = paddle.to_tensor([[5, 17, 200, 33, 900, 4]])
    on_load = GLMForConditionalGeneration.from_pretrained(str(DEMO_MODEL_DIR), show_progress=False,
                                                          quant_type=quant_type)
    after = GLMForConditionalGeneration.from_pretrained(str(DEMO_MODEL_DIR), show_progress=False)
    quantize_model(after, QuantSettings(quant_type))
    np.testing.assert_array_equal(on_load(ids).logits.numpy(), after(ids).logits.numpy())


@pytest.mark.parametrize("quant_type,group_size", [(INT8, 64), (INT4, 16), (INT4, 32)])
def test_layers_compute_with_the_dequantized_weights(quant_type, group_size):
    """QuantizedLinear, the embedding lookup and the tied projection equal float layers holding
    ``kernels.dequantize_weight`` of the stored weights; zero rows quantize without NaN."""
    rng = np.random.default_rng(1)
    settings = QuantSettings(quant_type, group_size)
    weight = rng.normal(0, 0.1, (96, 64)).astype("float32")  # [out, in]
    weight[3] = 0.0
    bias = rng.normal(0, 0.1, 96).astype("float32")
    linear = QuantizedLinear(64, 96, settings, paddle.float32)
    linear.set_float_weight(weight)
    linear.bias.set_value(bias)
    dense = kernels.dequantize_weight(linear.weight.numpy(), linear.weight_scale.numpy(), quant_type,
                                      settings.kernel_group_size)
    x = rng.normal(0, 1, (2, 5, 64)).astype("float32")
    # int4 products round x to int16 per group (csrc/int4_integer_product.cc): within that bound
    slack = (activation_rounding_bound(x.reshape(10, 64), dense, settings.kernel_group_size).reshape(2, 5, 96)
             if quant_type == INT4 else 0)
    close = lambda got, want: np.all(np.abs(got - want) <= 1e-5 + 1e-5 * np.abs(want) + slack)  # noqa: E731
    assert close(linear(paddle.to_tensor(x)).numpy(), x @ dense.T + bias)

    embedding = QuantizedEmbedding(96, 64, settings, paddle.float32)
    embedding.set_float_weight(weight)
    ids = np.array([[3, 0, 95], [7, 7, 50]])
    looked_up = embedding(paddle.to_tensor(ids)).numpy()
    assert not np.isnan(looked_up).any()
    np.testing.assert_array_equal(looked_up, dense[ids])
    assert close(embedding.project(paddle.to_tensor(x)).numpy(), x @ dense.T)
    rows = dequantize_rows(embedding.weight, embedding.weight_scale, quant_type, settings.kernel_group_size)
    np.testing.assert_array_equal(rows.numpy(), dense)


def _relative_error(quant_type: str, int8_activations: bool = False) -> float:
    ids = paddle.to_tensor(np.random.default_rng(0).integers(0, GLM_LARGE_2["vocab_size"], (1, 64)))
    model = random_model(GLM_LARGE_2)
    reference = model(ids).logits.numpy()
    quantize_model(model, QuantSettings(quant_type))
    if int8_activations:
        use_int8_activations(model)
    got = model(ids).logits.numpy()
    return float(np.linalg.norm(got - reference) / np.linalg.norm(reference))


def test_glm_large_shape_logits_error_int8_within_3_percent():
    error = _relative_error(INT8)
    print(f"glm-large shape (2 layers), random weights: int8 logits relative L2 error {error:.4f}")
    assert 0.005 < error <= INT8_MAX_ERROR


def test_glm_large_shape_logits_error_int4_reported():
    error = _relative_error(INT4)
    print(f"glm-large shape (2 layers), random weights: int4 (groups of 64) logits relative L2 error {error:.4f}")
    assert 0.05 < error <= INT4_MAX_ERROR
    with_int8 = _relative_error(INT4, int8_activations=True)
    print(f"... with int8 activations {with_int8:.4f}")
    assert abs(with_int8 - error) <= 0.01  # int8 activations add little to int4's error
    assert with_int8 != error or not integer_route()  # where the integer route runs, they change the logits


def test_int8_activations_are_for_int4_models_and_reach_lora_adapters():
    """use_int8_activations refuses a float or int8 model in one line; on int4 it sets every quantized layer,
    a LoRA adapter's base included (set before or after the adapter), and ``enabled=False`` sets them back."""
    float_model = random_model(TINY_A)
    with pytest.raises(GLMError, match=r"^int8 activations \(--int8-activations\) need a weight_only_int4 model; "
                                       "this one is not quantized$"):
        use_int8_activations(float_model)
    quantize_model(float_model, QuantSettings(INT8))
    with pytest.raises(GLMError, match="this one is quantized to weight_only_int8"):
        use_int8_activations(float_model)
    for before_lora in (True, False):
        model = random_model(TINY_A)
        quantize_model(model, QuantSettings(INT4))
        if before_lora:
            use_int8_activations(model)
        apply_lora(model, LoRAConfig(r=2, target_modules=[".*query_key_value"]))
        if not before_lora:
            use_int8_activations(model)
        bits = [layer.activation_bits for layer in model.sublayers() if hasattr(layer, "activation_bits")]
        assert set(bits) == {8} and len(bits) == 2 * 4 + 1  # 8 projections (2 of them adapters now), the embeddings
    use_int8_activations(model, enabled=False)
    assert {layer.activation_bits for layer in model.sublayers() if hasattr(layer, "activation_bits")} == {16}


def test_int8_activations_say_so_when_they_cannot_take_effect(monkeypatch, capsys):
    """Without the integer route (no AVX2 build, no operators) the setting is kept but one line on stderr says it
    changes nothing; with it, nothing is printed."""
    model = random_model(TINY_A)
    quantize_model(model, QuantSettings(INT4))
    use_int8_activations(model)
    assert capsys.readouterr().err == "" or not integer_route()
    without = (False, "the operators were built without AVX2")
    monkeypatch.setattr(cpu_operators, "int4_integer_route", lambda *sizes: without)
    use_int8_activations(model)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--int8-activations changes nothing here: the operators were built" in err


@pytest.mark.parametrize("kwargs,message", [
    (dict(quant_type="int3"), "quant type 'int3' (--quant-type) is unknown"),
    (dict(quant_type=INT4, group_size=48), "group size 48 (--group-size) does not divide the input dimension 128"),
    (dict(quant_type=INT4, group_size=7), "group size 7 (--group-size) must be an even integer"),
    (dict(group_size=64), "group size (--group-size) is given without a quant type"),
    (dict(quant_type=INT8, dtype="float16"), "dtype float16 (--dtype) with quantization (--quant-type) on cpu"),
    (dict(quant_type=INT8, rewrite=lambda model: None), "tensor parallelism (--tensor-parallel) is not supported"),
])
def test_bad_quantization_requests_are_refused_before_loading(kwargs, message):
    with pytest.raises(GLMError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        GLMForConditionalGeneration.from_pretrained(str(DEMO_MODEL_DIR), show_progress=False, **kwargs)
    assert "\n" not in str(error.value)


def test_a_quantized_model_cannot_be_quantized_twice():
    model = random_model(TINY_A)
    quantize_model(model, QuantSettings(INT8))
    with pytest.raises(GLMError, match="already quantized"):
        quantize_model(model, QuantSettings(INT4))


def test_streaming_and_multiple_choice_on_a_quantized_model(tokenizer):
    """Streaming gives the tokens of a plain generate; cloze scoring picks the fp32 model's choice."""
    from paddle_glm import GLMForMultipleChoice
    from paddle_glm.generation import TokenCollector

    model = GLMForConditionalGeneration.from_pretrained(str(DEMO_MODEL_DIR), show_progress=False, quant_type=INT4)
    inputs = tokenizer.build_inputs_for_generation(tokenizer(DEMO_CASES[0].text, return_tensors="pd"),
                                                   max_gen_length=8)
    plain = model.generate(**inputs, max_new_tokens=6)
    collector = TokenCollector()
    streamed = model.generate(**inputs, max_new_tokens=6, streamer=collector)
    np.testing.assert_array_equal(plain.numpy(), streamed.numpy())
    assert [int(t) for t in np.concatenate(collector.steps, axis=-1).reshape(-1)] == \
        plain[0, inputs["input_ids"].shape[1]:].tolist()

    batch = tokenizer(["长江全长约[MASK]千米，是中国最长的河流。"], return_tensors="np")
    choices = tokenizer.build_inputs_for_multiple_choice(batch, [["6300", "30万", "明月"]])
    scores = {}
    for quant_type in (None, INT8):
        scorer = GLMForMultipleChoice.from_pretrained(str(DEMO_MODEL_DIR), show_progress=False, quant_type=quant_type)
        scores[quant_type] = scorer(**choices).logits.numpy()
    assert scores[INT8].argmax() == scores[None].argmax() == 0
    np.testing.assert_allclose(scores[INT8], scores[None], rtol=0.1)


@pytest.mark.parametrize("quant_type", [INT8, INT4])
def test_conversion_for_cuda_reorders_the_linears_and_dequantizes_the_embeddings(quant_type):
    """What from_pretrained does on a GPU (only the CUDA kernel itself cannot run here): each Linear holds
    ``to_cuda_layout`` of its stored weights, the embeddings hold their dequantized rows."""
    from paddle_glm.model import WordEmbeddings
    from paddle_glm.quantization.rewrite import convert_for_cuda

    model = GLMForConditionalGeneration.from_pretrained(str(DEMO_MODEL_DIR), show_progress=False,
                                                        quant_type=quant_type)
    dense = model.glm.transformer.layers[1].mlp.dense_4h_to_h
    embeddings = model.glm.word_embeddings
    stored = dense.weight.numpy(), dense.weight_scale.numpy()
    table = kernels.dequantize_weight(embeddings.weight.numpy(), embeddings.weight_scale.numpy(), quant_type,
                                      embeddings.group_size)
    convert_for_cuda(model, 80)
    weight, scale = kernels.to_cuda_layout(*stored, quant_type, dense.group_size, 80)
    np.testing.assert_array_equal(dense.weight.numpy(), weight)
    np.testing.assert_array_equal(dense.weight_scale.numpy(), scale)
    assert isinstance(model.glm.word_embeddings, WordEmbeddings)
    np.testing.assert_array_equal(model.glm.word_embeddings.weight.numpy(), table)


@pytest.mark.parametrize("quant_type", [INT8, INT4])
def test_gradients_reach_the_input_through_quantized_layers(quant_type):
    """A LoRA adapter below a quantized layer trains: d(sum(y * g))/dx = g @ W with W dequantized."""
    rng = np.random.default_rng(2)
    settings = QuantSettings(quant_type)
    linear = QuantizedLinear(128, 64, settings, paddle.float32)
    linear.set_float_weight(rng.normal(0, 0.1, (64, 128)).astype("float32"))
    linear.bias.set_value(np.zeros(64, "float32"))
    dense = kernels.dequantize_weight(linear.weight.numpy(), linear.weight_scale.numpy(), quant_type,
                                      settings.kernel_group_size)
    x = paddle.to_tensor(rng.normal(0, 1, (2, 3, 128)).astype("float32"), stop_gradient=False)
    g = rng.normal(0, 1, (2, 3, 64)).astype("float32")
    (linear(x) * paddle.to_tensor(g)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), g @ dense, rtol=1e-5, atol=1e-5)
    assert linear.weight.grad is None
