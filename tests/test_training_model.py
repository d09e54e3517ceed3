"""Training parts of the model: loss and gradients vs PaddleNLP 2.8.1, dropout, recompute, fresh init."""
import numpy as np
import paddle
import pytest

from conftest import NO_DROPOUT, ours_from, paddlenlp_model
from tokenizer_helpers import TOKENIZER_DIR

from paddle_glm import GLMChineseTokenizer, GLMConfig, GLMForConditionalGeneration

# vocabulary of the tests' tokenizer (1200 pieces + 10 special tokens)
CFG = dict(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=1210, max_sequence_length=128)
DROPOUT = dict(embedding_dropout_prob=0.2, attention_dropout_prob=0.2, output_dropout_prob=0.2)


@pytest.fixture(scope="module")
def batch():
    """A right-padded batch of 2 with targets, built by the tokenizer (numpy arrays)."""
    tokenizer = GLMChineseTokenizer.from_pretrained(str(TOKENIZER_DIR))
    inputs = tokenizer(["北京是中华人民共和国的[MASK]。", "上海位于长江入海口，是中国最大的[MASK]城市之一"],
                       return_tensors="np", padding=True)
    return dict(tokenizer.build_inputs_for_generation(inputs, max_gen_length=12, targets=["首都", "经济中心"]))


@pytest.fixture(scope="module")
def pair():
    ref = paddlenlp_model(CFG, seed=5)
    return ref, ours_from(ref, CFG)


def _inputs(batch, rows=slice(None), loss_mask_dtype="float32"):
    return dict(input_ids=paddle.to_tensor(batch["input_ids"][rows]),
                position_ids=paddle.to_tensor(batch["position_ids"][rows]),
                attention_mask=paddle.to_tensor(batch["attention_mask"][rows]),
                labels=paddle.to_tensor(batch["labels"][rows]),
                loss_mask=paddle.to_tensor(batch["loss_mask"][rows].astype(loss_mask_dtype)))


def _their_loss(ref, inputs):
    return float(ref(**inputs, return_dict=True).loss)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_equals_paddlenlp(pair, batch, smoothing):
    ref, ours = pair
    ref.config.label_smoothing = smoothing
    ours.config.label_smoothing = smoothing
    try:
        got = float(ours(**_inputs(batch, loss_mask_dtype="int64")).loss)
        if smoothing == 0:
            expected = _their_loss(ref, _inputs(batch))
        else:
            # PaddleNLP's smoothed loss crashes for batch > 1: the masked mean over the batch,
            # from its per-row losses weighted by each row's target count.
            counts = batch["loss_mask"].sum(axis=1)
            per_row = [_their_loss(ref, _inputs(batch, slice(r, r + 1))) for r in range(2)]
            expected = float(np.dot(per_row, counts) / counts.sum())
            assert abs(got - float(ours(**_inputs(batch, slice(0, 1))).loss)) > 1e-3  # rows differ
    finally:
        ref.config.label_smoothing = ours.config.label_smoothing = 0.0
    assert abs(got - expected) <= 1e-5 * abs(expected)
    assert expected > 1.0


def test_label_ids_alias_and_unmasked_mean(pair, batch):
    _, ours = pair
    inputs = _inputs(batch)
    loss = float(ours(**inputs).loss)
    inputs["label_ids"] = inputs.pop("labels")
    assert float(ours(**inputs).loss) == loss
    logits = ours(inputs["input_ids"], inputs["position_ids"], inputs["attention_mask"]).logits
    expected = paddle.nn.functional.cross_entropy(logits.reshape([-1, CFG["vocab_size"]]),
                                                  inputs["label_ids"].reshape([-1])).item()
    got = float(ours(inputs["input_ids"], inputs["position_ids"], inputs["attention_mask"],
                     labels=inputs["label_ids"]).loss)
    assert abs(got - expected) <= 1e-6 * expected


def test_lm_head_runs_on_counted_positions_only(pair, batch, monkeypatch):
    """The loss projects only the positions loss_mask counts; the output's logits still cover every position."""
    _, ours = pair
    head, rows = ours.glm.lm_logits, []
    monkeypatch.setattr(ours.glm, "lm_logits", lambda hidden: rows.append(list(hidden.shape)) or head(hidden))
    inputs = _inputs(batch)
    output = ours(**inputs)
    b, s = batch["input_ids"].shape
    counted = int((batch["loss_mask"] != 0).sum())
    assert 0 < counted < b * s
    assert rows == [[b, s, CFG["hidden_size"]], [counted, CFG["hidden_size"]]]
    assert list(output.logits.shape) == [b, s, CFG["vocab_size"]]


def _grads(model, inputs):
    model.train()
    model.clear_gradients()
    out = model(**inputs)
    loss = out[0] if isinstance(out, tuple) else out.loss
    loss.backward()
    grads = {name: p.grad.numpy().copy() for name, p in model.named_parameters() if p.grad is not None}
    model.clear_gradients()
    model.eval()
    return grads


def test_gradients_equal_paddlenlp(pair, batch):
    ref, ours = pair
    theirs = _grads(ref, _inputs(batch))
    got = _grads(ours, _inputs(batch))
    assert set(got) == set(theirs) and len(got) == len(ours.parameters())
    for name, expected in theirs.items():
        scale = np.abs(expected).max()
        assert scale > 0, name
        assert np.abs(got[name] - expected).max() <= 1e-4 * scale, name


def test_dropout_train_mode_only(batch):
    paddle.seed(0)
    model = GLMForConditionalGeneration(GLMConfig(**CFG, **DROPOUT))
    plain = GLMForConditionalGeneration(GLMConfig(**CFG, **NO_DROPOUT))
    plain.set_state_dict(model.state_dict())
    inputs = {k: v for k, v in _inputs(batch).items() if k not in ("labels", "loss_mask")}
    model.train()
    paddle.seed(7)
    first = model(**inputs).logits.numpy()
    second = model(**inputs).logits.numpy()
    paddle.seed(7)
    again = model(**inputs).logits.numpy()
    assert np.abs(first - second).max() > 1e-3
    np.testing.assert_array_equal(first, again)
    model.eval()
    plain.eval()
    np.testing.assert_array_equal(model(**inputs).logits.numpy(), plain(**inputs).logits.numpy())


def test_recompute_gradients_equal_plain(batch):
    paddle.seed(1)
    model = GLMForConditionalGeneration(GLMConfig(**CFG, **DROPOUT))
    inputs = _inputs(batch)
    paddle.seed(3)
    plain = _grads(model, inputs)
    model.config.recompute = True
    paddle.seed(3)
    recomputed = _grads(model, inputs)  # the same dropout masks: recompute replays the RNG state
    assert set(plain) == set(recomputed)
    for name, expected in plain.items():
        assert np.abs(recomputed[name] - expected).max() <= 1e-6 * max(np.abs(expected).max(), 1e-12), name


def test_from_pretrained_recompute_flag(tmp_path):
    paddle.seed(0)
    GLMForConditionalGeneration(GLMConfig(**CFG)).save_pretrained(str(tmp_path))
    assert GLMForConditionalGeneration.from_pretrained(str(tmp_path), recompute=True).config.recompute
    assert not GLMForConditionalGeneration.from_pretrained(str(tmp_path)).config.recompute


def test_fresh_model_has_glm_initialisation():
    paddle.seed(0)
    model = GLMForConditionalGeneration(GLMConfig(**CFG, initializer_range=0.05))
    for name, p in model.named_parameters():
        value = p.numpy()
        if "layernorm" in name:
            assert np.all(value == (1.0 if name.endswith("weight") else 0.0)), name
        elif name.endswith("bias"):
            assert np.all(value == 0), name
        else:
            assert abs(value.mean()) < 0.01 and abs(value.std() - 0.05) < 0.005, name
