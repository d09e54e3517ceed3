"""Multi-blank infilling (fill_blanks) and cloze scoring (GLMForMultipleChoice) on tiny random models."""
import numpy as np
import paddle
import pytest

from conftest import ours_from, paddlenlp_model, random_model
from tokenizer_helpers import TOKENIZER_DIR

from paddle_glm import GLMError
from paddle_glm.infilling import fill_blanks
from paddle_glm.multiple_choice import GLMForMultipleChoice
from paddle_glm.tokenizer import GLMChineseTokenizer

CFG = dict(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=1210, max_sequence_length=128)


@pytest.fixture(scope="module")
def tokenizer():
    return GLMChineseTokenizer.from_pretrained(str(TOKENIZER_DIR))


@pytest.fixture(scope="module")
def model():
    return random_model(CFG, seed=21, spread=True)


def _greedy_span(model, ids, positions, blocks, part_a, eop, room):
    """One blank's span from hand-built GLM Part A / Part B inputs (independent of infilling.py)."""
    n0 = len(ids)
    total = n0 + room - 1
    pos = positions + [positions[-1]] * (total - n0)
    blk = blocks + [blocks[-1] + k for k in range(1, total - n0 + 1)]
    mask = np.zeros((total, total), dtype="int64")
    for i in range(total):
        mask[i, :part_a] = 1
        mask[i, part_a:i + 1] = 1
    out = model.generate(np.array([ids]), np.array([[pos, blk]]), mask[None, None], max_new_tokens=room,
                         eos_token_id=eop, bad_words_ids=[]).numpy()[0, n0:].tolist()
    return out[:out.index(eop)] if eop in out else out


def test_fill_blanks_fills_every_mask_in_order_feeding_spans_back(model, tokenizer):
    ours = model
    text = "春眠不觉晓，[MASK]闻啼鸟。夜来[MASK]雨声，花落知多少[sMASK]"
    room = 6
    completed, spans = fill_blanks(ours, tokenizer, text, max_new_tokens=room, bad_words_ids=[])
    assert len(spans) == 3
    context = tokenizer(text)["input_ids"]
    blanks = [i for i, t in enumerate(context) if t in tokenizer.mask_token_ids]
    ids, positions, blocks = list(context), list(range(len(context))), [0] * len(context)
    expected_spans = []
    for blank in blanks:
        span = _greedy_span(ours, ids + [tokenizer.sop_token_id], positions + [blank], blocks + [1], len(context),
                            tokenizer.eop_token_id, room)
        expected_spans.append(tokenizer.decode(span, skip_special_tokens=True))
        piece = [tokenizer.sop_token_id] + span
        ids += piece
        positions += [blank] * len(piece)
        blocks += list(range(1, len(piece) + 1))
    assert spans == expected_spans
    pieces = text.replace("[sMASK]", "[MASK]").split("[MASK]")
    assert completed == "".join(p + s for p, s in zip(pieces, spans + [""]))


def test_fill_blanks_needs_a_blank(model, tokenizer):
    with pytest.raises(GLMError, match="no \\[MASK\\]"):
        fill_blanks(model, tokenizer, "没有空白的句子。")


def test_multiple_choice_matches_paddlenlp(tokenizer):
    ref = paddlenlp_model(CFG, seed=22, cls_name="GLMForConditionalGeneration", spread=True)
    from paddlenlp.transformers import GLMForMultipleChoice as PaddleNLPChoice

    theirs = PaddleNLPChoice(ref.config)
    theirs.set_state_dict(ref.state_dict())
    theirs.eval()
    ours = ours_from(ref, CFG, cls=GLMForMultipleChoice)
    batch = tokenizer(["中国的首都是[MASK]。", "一年有[MASK]个月，春天很美。"], return_tensors="np", padding=True)
    choices = [["北京", "上海", "广州"], ["十二", "三", "七十"]]
    inputs = tokenizer.build_inputs_for_multiple_choice(batch, choices)
    got = ours(inputs["input_ids"], inputs["position_ids"], inputs["attention_mask"], inputs["choice_ids"],
               inputs["choice_indices"]).logits.numpy()
    to_pd = lambda rows: [[paddle.to_tensor(x) for x in row] for row in rows]  # noqa: E731
    expected = theirs(paddle.to_tensor(inputs["input_ids"]), paddle.to_tensor(inputs["position_ids"]),
                      paddle.to_tensor(inputs["attention_mask"]), to_pd(inputs["choice_ids"]),
                      to_pd(inputs["choice_indices"]), return_dict=True).logits.numpy()
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.isfinite(got).all() and (got < 0).all()


def test_multiple_choice_loads_a_checkpoint(tmp_path, model):
    ours = model
    ours.save_pretrained(str(tmp_path), max_shard_size="100KB")
    scorer = GLMForMultipleChoice.from_pretrained(str(tmp_path))
    for name, p in scorer.state_dict().items():
        np.testing.assert_array_equal(p.numpy(), ours.state_dict()[name].numpy())
