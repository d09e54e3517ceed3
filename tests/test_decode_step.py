"""The decode step: a function of tensors only, equal under paddle.jit.to_static, in both cache layouts."""
import numpy as np
import paddle
import pytest

from conftest import TINY_A, generation_batch, random_model

from paddle_glm import GLMError
from paddle_glm.attention import MATH, SDPA
from paddle_glm.generation.beam import beam_search
from paddle_glm.generation.decode import TokenChooser, context_visibility, decode, static_decode_step
from paddle_glm.generation.inputs import prepare_inputs
from paddle_glm.generation.logits_process import LogitsSettings

GEN = 8


@pytest.fixture(scope="module")
def model():
    return random_model(TINY_A, seed=13, spread=True)


def glm_inputs(model, lengths=(9, 6), gen=GEN):
    ids, pos, mask = generation_batch(TINY_A, lengths=lengths, gen=gen, mask_at=(3, 5))
    prompt = ids[:, :max(lengths) + 1]
    return prepare_inputs(prompt, pos, mask, gen, model.config.num_position_embeddings)


def greedy(model, inputs, decode_step=None, use_cache=True):
    with paddle.no_grad():
        return decode(model, inputs, GEN, TokenChooser(LogitsSettings(), sampling=False), eos_token_id=None,
                      pad_token_id=0, use_cache=use_cache, decode_step=decode_step).numpy()


def test_static_step_gives_the_eager_tokens(model):
    inputs = glm_inputs(model)
    static = static_decode_step(model)
    eager_tokens = greedy(model, inputs)
    np.testing.assert_array_equal(greedy(model, inputs, decode_step=static), eager_tokens)
    np.testing.assert_array_equal(greedy(model, inputs, use_cache=False), eager_tokens)  # and both are right
    assert len(set(eager_tokens[:, inputs.prompt_length:].ravel().tolist())) > 2  # not degenerate
    # traced once, run again on a new cache (a new generation) and on reordered rows (beam search)
    np.testing.assert_array_equal(greedy(model, inputs, decode_step=static), eager_tokens)
    with paddle.no_grad():
        beams = [beam_search(model, inputs, 5, 3, LogitsSettings(), length_penalty=1.0, eos_token_id=None,
                             pad_token_id=0, use_cache=True, decode_step=step)[0].numpy() for step in (None, static)]
    np.testing.assert_array_equal(beams[1], beams[0])


def test_step_logits_equal_a_full_forward(model):
    """Each step's logits equal the full sequence's forward at that row, in both cache layouts."""
    inputs = glm_inputs(model)
    tokens = paddle.to_tensor(greedy(model, inputs))
    n0, total = inputs.prompt_length, inputs.total
    pos, mask = inputs.position_ids, inputs.mask
    with paddle.no_grad():
        full = model(tokens[:, :total], pos, mask).logits.numpy()
        for backend in (MATH, SDPA):
            cache = model.new_cache(2, total, attention_backend=backend)
            model(tokens[:, :n0], pos[:, :, :n0], mask[:, :, :n0, :n0], cache=cache, attention_backend=backend)
            cache.show(context_visibility(mask, n0))
            for i in range(n0, total):
                logits = model.decode_step(tokens[:, i:i + 1], pos[:, :, i:i + 1], paddle.full([1], i, "int64"), cache)
                np.testing.assert_allclose(logits.numpy(), full[:, i], atol=1e-4, rtol=0)


def test_generated_rows_must_agree_on_the_context(model):
    ids, pos, mask = generation_batch(TINY_A, lengths=(9, 6), gen=GEN, mask_at=(3, 5))
    mask[0, 0, 12, 2] = 0  # one generated row hides a context column the others see
    inputs = prepare_inputs(ids[:, :10], pos, mask, GEN, model.config.num_position_embeddings)
    with pytest.raises(GLMError, match="attention_mask: the generated tokens' rows see different prompt columns"):
        greedy(model, inputs)
    greedy(model, inputs, use_cache=False)  # the recompute path takes it


def test_a_decode_step_reads_no_paddle_flag(model, monkeypatch):
    """F.linear looks up FLAGS_use_legacy_linear through paddle.get_flags on every call (~40 us each, ~4% of a
    glm-large step); the model's projections call the same kernel directly, with the same result and gradient."""
    from paddle_glm.linear import linear

    x, w, b = paddle.randn([2, 3, 8]), paddle.randn([8, 5]), paddle.randn([5])
    for tensor in (x, w, b):
        tensor.stop_gradient = False
    ours, theirs = linear(x, w, b), paddle.nn.functional.linear(x, w, b)
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    grads = [paddle.grad(out.sum(), [x, w, b]) for out in (ours, theirs)]
    for mine, reference in zip(*grads):
        np.testing.assert_array_equal(mine.numpy(), reference.numpy())
    calls = []
    real = paddle.get_flags
    monkeypatch.setattr(paddle, "get_flags", lambda *a, **k: calls.append(a) or real(*a, **k))
    inputs = glm_inputs(model)
    greedy(model, inputs)
    assert calls == []
