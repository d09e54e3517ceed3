"""GLMChineseTokenizer: special ids, encoding, GLM model inputs, decoding and files.

Expected values are built independently: ids from the raw sentencepiece processor and
the GLM table written out here, generation arrays by loops, and PaddleNLP 2.8.1 (when
installed) as an oracle on the same arrays.
"""
import json
import os
import re

import numpy as np
import paddle
import pytest
import sentencepiece as spm

from tokenizer_helpers import MODEL_FILE, MODEL_VOCAB_SIZE, TOKENIZER_DIR, train_sentencepiece

from paddle_glm.errors import GLMError
from paddle_glm.tokenizer import GLMChineseTokenizer

SECOND_VOCAB_SIZE = 1100
# The original GLM table: token -> id - N, N = the sentencepiece size.
GLM_TABLE = {
    "<|endoftext|>": 0, "[SEP]": 1, "[CLS]": 2, "[MASK]": 3, "[UNUSED1]": 4, "[UNUSED2]": 5,
    "<|startofpiece|>": 6, "<|endofpiece|>": 7, "[sMASK]": 8, "[gMASK]": 9,
}
CARD_TEXT = "凯旋门位于意大利米兰市古城堡旁。1807年为纪念[MASK]而建，门高25米，顶上矗立两武士青铜古兵车铸像。"
MASK_TEXT = "北京是[MASK]的首都，[sMASK]"
GMASK_TEXT = "长城东起山海关，西至嘉峪关，全长约21196千米。[gMASK]"
GEN_LENGTH = 5


@pytest.fixture(scope="module")
def tok():
    return GLMChineseTokenizer.from_pretrained(str(TOKENIZER_DIR))


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=str(MODEL_FILE))


@pytest.fixture(scope="module")
def paddlenlp_tok(tok, tmp_path_factory):
    """PaddleNLP's GLMChineseTokenizer on the same sentencepiece model, with the GLM ids.

    On a bare model file PaddleNLP maps every special token to id 0, so it loads our
    saved directory, whose added_tokens.json gives it the ids (checked here against ours,
    which test_special_ids_follow_glm_table checks against the table).
    """
    pytest.importorskip("paddlenlp")
    from paddlenlp.transformers import GLMChineseTokenizer as PaddleNLPTokenizer

    path = tmp_path_factory.mktemp("paddlenlp_tokenizer")
    tok.save_pretrained(str(path))
    oracle = PaddleNLPTokenizer.from_pretrained(str(path))
    for token, token_id in tok.special_tokens.items():
        assert oracle.convert_tokens_to_ids(token) == token_id
    assert oracle.mask_token_ids == tok.mask_token_ids and oracle.sop_token_id == tok.sop_token_id
    return oracle


def _tokenizer_with_vocab(vocab_size, tmp_path):
    if vocab_size == MODEL_VOCAB_SIZE:
        return GLMChineseTokenizer(str(MODEL_FILE))
    model_file = tmp_path / "cog-pretrain.model"
    model_file.write_bytes(train_sentencepiece(vocab_size))
    return GLMChineseTokenizer(str(model_file))


def _by_construction(sp, segments):
    """``[CLS]`` + the ids of text segments (sentencepiece-encoded one by one) and special tokens
    (ids from the GLM table) + ``<|endoftext|>``."""
    n = sp.get_piece_size()
    ids = [n + GLM_TABLE["[CLS]"]]
    for segment in segments:
        ids += [n + GLM_TABLE[segment]] if segment in GLM_TABLE else sp.encode(segment)
    return ids + [n + GLM_TABLE["<|endoftext|>"]]


# ----- 1. ids


@pytest.mark.parametrize("vocab_size", [MODEL_VOCAB_SIZE, SECOND_VOCAB_SIZE])
def test_special_ids_follow_glm_table(vocab_size, tmp_path):
    tok = _tokenizer_with_vocab(vocab_size, tmp_path)
    n = vocab_size
    assert tok.num_pieces == n
    assert tok.vocab_size == len(tok) == n + 10
    assert tok.eos_token_id == tok.pad_token_id == n
    assert (tok.sep_token_id, tok.cls_token_id, tok.mask_token_id) == (n + 1, n + 2, n + 3)
    assert (tok.sop_token_id, tok.eop_token_id, tok.smask_token_id, tok.gmask_token_id) == (n + 6, n + 7, n + 8, n + 9)
    assert tok.mask_token_ids == [n + 3, n + 8, n + 9]
    for token, offset in GLM_TABLE.items():
        assert tok.convert_tokens_to_ids(token) == n + offset
        assert tok.convert_ids_to_tokens(n + offset) == token
        assert tok.encode(token, add_special_tokens=False) == [n + offset]
    assert tok.convert_tokens_to_ids(list(GLM_TABLE)) == [n + offset for offset in GLM_TABLE.values()]
    assert tok.convert_ids_to_tokens(np.arange(n, n + 10)) == list(GLM_TABLE)


def test_added_tokens_json_overrides_table(tmp_path, sp):
    (tmp_path / "cog-pretrain.model").write_bytes(MODEL_FILE.read_bytes())
    added = {"[MASK]": 1500, "[gMASK]": 2000, "<|startofpiece|>": 1777, "[NEW]": 1800}
    (tmp_path / "added_tokens.json").write_text(json.dumps(added))
    tok = GLMChineseTokenizer.from_pretrained(str(tmp_path))
    n = MODEL_VOCAB_SIZE
    assert (tok.mask_token_id, tok.gmask_token_id, tok.sop_token_id) == (1500, 2000, 1777)
    assert (tok.eos_token_id, tok.cls_token_id, tok.smask_token_id, tok.eop_token_id) == (n, n + 2, n + 8, n + 7)
    assert tok.mask_token_ids == [1500, n + 8, 2000]
    assert tok.vocab_size == 2001
    assert tok.encode("北京[NEW]上海[gMASK]") == [n + 2] + sp.encode("北京") + [1800] + sp.encode("上海") + [2000, n]
    assert tok.decode([1800, 1500]) == "[NEW][MASK]"
    with pytest.raises(GLMError, match=str(n + 3)):
        tok.decode([n + 3])  # no longer a token


def test_added_tokens_errors_name_the_file(tmp_path):
    (tmp_path / "cog-pretrain.model").write_bytes(MODEL_FILE.read_bytes())
    added_file = tmp_path / "added_tokens.json"
    added_file.write_text(json.dumps({"[MASK]": MODEL_VOCAB_SIZE + 4}))  # the id of [UNUSED1]
    with pytest.raises(GLMError, match=r"added_tokens\.json.*both have id"):
        GLMChineseTokenizer.from_pretrained(str(tmp_path))
    added_file.write_text(json.dumps({"[MASK]": "7"}))
    with pytest.raises(GLMError, match=re.escape(str(added_file))):
        GLMChineseTokenizer.from_pretrained(str(tmp_path))
    added_file.write_text("{not json")
    with pytest.raises(GLMError, match=re.escape(str(added_file))):
        GLMChineseTokenizer.from_pretrained(str(tmp_path))


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(GLMError, match="download"):
        GLMChineseTokenizer.from_pretrained("THUDM/glm-10b-chinese")
    with pytest.raises(GLMError, match="cog-pretrain.model"):
        GLMChineseTokenizer.from_pretrained(str(tmp_path))
    (tmp_path / "cog-pretrain.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(GLMError, match="sentencepiece"):
        GLMChineseTokenizer.from_pretrained(str(tmp_path))


# ----- 2. encoding

# (text, its segments after whitespace left of a mask token is dropped)
MASK_CASES = [
    (CARD_TEXT, ["凯旋门位于意大利米兰市古城堡旁。1807年为纪念", "[MASK]",
                 "而建，门高25米，顶上矗立两武士青铜古兵车铸像。"]),
    ("北京是 [MASK] 的首都。", ["北京是", "[MASK]", " 的首都。"]),
    ("[MASK] 北京 [sMASK]", ["[MASK]", " 北京", "[sMASK]"]),  # only the left of a mask is stripped
    ("[sMASK]春天来了，花开了。  [sMASK]", ["[sMASK]", "春天来了，花开了。", "[sMASK]"]),
    ("读书破万卷，\n下笔如有神。\t[gMASK]", ["读书破万卷，\n下笔如有神。", "[gMASK]"]),
    ("第1章[MASK]第2章 [sMASK]第3章 <|endoftext|> [gMASK]",
     ["第1章", "[MASK]", "第2章", "[sMASK]", "第3章 ", "<|endoftext|>", "[gMASK]"]),
]


@pytest.mark.parametrize("text,segments", MASK_CASES)
def test_encode_around_masks_by_construction(tok, sp, text, segments):
    expected = _by_construction(sp, segments)
    assert tok.encode(text) == expected
    assert tok(text) == {"input_ids": expected, "attention_mask": [1] * len(expected)}
    assert tok(text, add_special_tokens=False)["input_ids"] == expected[1:-1]
    for return_tensors, kind in (("np", np.ndarray), ("pd", paddle.Tensor)):
        batch = tok(text, return_tensors=return_tensors)
        assert isinstance(batch.input_ids, kind) and isinstance(batch.attention_mask, kind)
        assert list(batch.input_ids.shape) == [1, len(expected)] and str(batch.input_ids.dtype).endswith("int64")
        assert np.array(batch.input_ids).tolist() == [expected]
        assert np.array(batch.attention_mask).tolist() == [[1] * len(expected)]


@pytest.mark.parametrize("return_tensors", [None, "np", "pd"])
def test_batch_is_right_padded(tok, sp, return_tensors):
    texts = [text for text, _ in MASK_CASES[:3]]
    rows = [_by_construction(sp, segments) for _, segments in MASK_CASES[:3]]
    length = max(map(len, rows))
    batch = tok(texts, return_tensors=return_tensors, padding=True)
    assert np.array(batch.input_ids).tolist() == [row + [tok.eos_token_id] * (length - len(row)) for row in rows]
    assert np.array(batch.attention_mask).tolist() == [[1] * len(row) + [0] * (length - len(row)) for row in rows]
    padded = tok(texts, return_tensors=return_tensors, padding="max_length", max_length=length + 3)
    assert np.array(padded.input_ids).tolist() == [row + [tok.eos_token_id] * (length + 3 - len(row)) for row in rows]
    assert np.array(padded.attention_mask).sum(axis=1).tolist() == list(map(len, rows))


def test_unpadded_batch(tok, sp):
    texts = ["北京[MASK]", "上海是一座城市[gMASK]"]
    batch = tok(texts)
    assert batch.input_ids == [tok.encode(text) for text in texts]
    assert batch.attention_mask == [[1] * len(tok.encode(text)) for text in texts]
    with pytest.raises(GLMError, match="padding=True"):
        tok(texts, return_tensors="np")


def test_truncation_from_the_left(tok, sp):
    body = sp.encode("长城东起山海关，西至嘉峪关") + [tok.mask_token_id] + sp.encode("全长约21196千米")
    text = "长城东起山海关，西至嘉峪关[MASK]全长约21196千米"
    assert tok.encode(text) == [tok.cls_token_id] + body + [tok.eos_token_id]
    kept = len(body) - 3
    batch = tok([text, "北京"], max_length=kept + 2, truncation=True, padding=True, return_tensors="np")
    assert batch.input_ids[0].tolist() == [tok.cls_token_id] + body[3:] + [tok.eos_token_id]
    assert batch.input_ids[1].tolist() == tok.encode("北京") + [tok.eos_token_id] * (kept + 2 - len(tok.encode("北京")))
    without_special = tok(text, max_length=kept, truncation=True, add_special_tokens=False)
    assert without_special.input_ids == body[3:]
    assert tok(text, max_length=100, truncation=True).input_ids == tok.encode(text)  # short texts are kept


def test_truncation_refuses_to_cut_every_mask(tok, sp):
    text = "北京[MASK]是中华人民共和国的首都，也是全国的政治、文化中心。"
    with pytest.raises(GLMError, match="mask token"):
        tok(text, max_length=8, truncation=True)
    text_without_mask = "北京是中华人民共和国的首都，也是全国的政治、文化中心。"
    assert len(tok(text_without_mask, max_length=8, truncation=True).input_ids) == 8
    with pytest.raises(GLMError, match="max_length"):
        tok(text, truncation=True)


def test_encoding_argument_errors(tok):
    for kwargs in ({"return_tensors": "pt"}, {"padding": "longest_first"}, {"padding": "max_length"},
                   {"max_length": 0}, {"truncation": "yes"}, {"padding": "max_length", "max_length": 2}):
        with pytest.raises(GLMError):
            tok(["北京", "上海市"], **kwargs)
    for text in ([], [1, 2], None):
        with pytest.raises(GLMError, match="text"):
            tok(text)


def test_encoding_matches_paddlenlp(tok, paddlenlp_tok):
    # PaddleNLP strips whitespace on both sides of every special token (we strip it only left
    # of a mask token, as issue 3 specifies), so these texts have none next to one.
    texts = [CARD_TEXT, MASK_TEXT, GMASK_TEXT, "[sMASK]春天来了。[MASK]夏天的傍晚<|endoftext|>秋天",
             "价格：￥2,999.00（含税）"]
    for text in texts:
        assert tok.encode(text) == paddlenlp_tok(text)["input_ids"]
        assert tok.encode(text, add_special_tokens=False) == paddlenlp_tok(text, add_special_tokens=False)["input_ids"]


# ----- 3. GLM model inputs


def _expected_generation(input_ids, attention_mask, mask_positions, sop_token_id, gen_length):
    """Generation inputs written out element by element."""
    batch, length = len(input_ids), len(input_ids[0])
    total = length + gen_length
    ids = [list(row) + [sop_token_id] for row in input_ids]
    positions = np.zeros([batch, 2, total], dtype="int64")
    mask = np.zeros([batch, 1, total, total], dtype="int64")
    for b in range(batch):
        for i in range(total):
            positions[b, 0, i] = i if i < length else mask_positions[b]
            positions[b, 1, i] = 0 if i < length else i - length + 1
            for j in range(total):
                if j < length:
                    mask[b, 0, i, j] = attention_mask[b][j]
                else:
                    mask[b, 0, i, j] = 1 if length <= j <= i else 0
    return ids, positions, mask


def test_generation_inputs_by_hand(tok):
    batch = tok([MASK_TEXT, GMASK_TEXT], return_tensors="np", padding=True)
    ids = batch.input_ids.tolist()
    assert batch.attention_mask[0].sum() < batch.attention_mask.shape[1]  # the first row is padded
    mask_positions = [ids[0].index(tok.mask_token_id), ids[1].index(tok.gmask_token_id)]
    assert tok.smask_token_id in ids[0]  # a later [sMASK] does not count
    expected_ids, expected_positions, expected_mask = _expected_generation(
        ids, batch.attention_mask.tolist(), mask_positions, tok.sop_token_id, GEN_LENGTH)
    inputs = tok.build_inputs_for_generation(batch, max_gen_length=GEN_LENGTH)
    assert sorted(inputs) == ["attention_mask", "input_ids", "position_ids"]
    assert all(isinstance(value, np.ndarray) and value.dtype == np.int64 for value in inputs.values())
    assert inputs.input_ids.tolist() == expected_ids
    np.testing.assert_array_equal(inputs.position_ids, expected_positions)
    np.testing.assert_array_equal(inputs.attention_mask, expected_mask)


def test_generation_inputs_follow_input_type(tok):
    texts = [MASK_TEXT, GMASK_TEXT]
    numpy_inputs = tok.build_inputs_for_generation(tok(texts, return_tensors="np", padding=True), GEN_LENGTH)
    paddle_inputs = tok.build_inputs_for_generation(tok(texts, return_tensors="pd", padding=True), GEN_LENGTH)
    list_inputs = tok.build_inputs_for_generation(tok(texts, padding=True), GEN_LENGTH)
    for key, value in numpy_inputs.items():
        assert isinstance(value, np.ndarray)
        assert isinstance(paddle_inputs[key], paddle.Tensor) and paddle_inputs[key].dtype == paddle.int64
        np.testing.assert_array_equal(paddle_inputs[key].numpy(), value)
        np.testing.assert_array_equal(list_inputs[key], value)
    single = tok.build_inputs_for_generation(tok(CARD_TEXT), GEN_LENGTH)  # flat lists: a batch of one
    assert single.input_ids.shape == (1, len(tok.encode(CARD_TEXT)) + 1)


def test_model_card_flow(tok):
    inputs = tok(CARD_TEXT, return_tensors="pd")
    inputs = tok.build_inputs_for_generation(inputs, max_gen_length=512)
    length = len(tok.encode(CARD_TEXT))
    assert list(inputs.input_ids.shape) == [1, length + 1]
    assert list(inputs.position_ids.shape) == [1, 2, length + 512]
    assert list(inputs.attention_mask.shape) == [1, 1, length + 512, length + 512]
    assert int(inputs.position_ids[0, 0, -1]) == tok.encode(CARD_TEXT).index(tok.mask_token_id)
    generated = inputs.input_ids[0].tolist() + tok.encode("拿破仑", add_special_tokens=False) + [tok.eop_token_id]
    assert tok.decode(generated) == "[CLS]" + CARD_TEXT + "<|endoftext|><|startofpiece|>拿破仑<|endofpiece|>"


def test_generation_without_mask_raises(tok):
    batch = tok([MASK_TEXT, "北京是中国的首都。"], return_tensors="pd", padding=True)
    with pytest.raises(ValueError, match=r"sample 1 .*\[gMASK\]"):
        tok.build_inputs_for_generation(batch, max_gen_length=GEN_LENGTH)


def test_target_inputs_by_hand(tok, sp):
    batch = tok(MASK_TEXT, return_tensors="np")
    length = batch.input_ids.shape[1]
    target = sp.encode("中国")
    inputs = tok.build_inputs_for_generation(batch, max_gen_length=GEN_LENGTH, targets="中国")
    span = len(target) + 1  # the target + <|endofpiece|>
    assert inputs.input_ids.tolist() == [batch.input_ids[0].tolist() + [tok.sop_token_id] + target]
    assert inputs.labels.tolist() == [[0] * length + target + [tok.eop_token_id]]
    assert inputs.label_ids is inputs.labels
    assert inputs.loss_mask.tolist() == [[0] * length + [1] * span]
    assert inputs.position_ids.shape == (1, 2, length + span)
    padded = tok.build_inputs_for_generation(batch, max_gen_length=GEN_LENGTH, targets=["中国"], padding=True)
    pad = GEN_LENGTH - span
    expected_ids = inputs.input_ids[0].tolist() + [tok.eop_token_id] + [tok.pad_token_id] * (pad - 1)
    assert padded.input_ids.tolist() == [expected_ids]
    assert padded.labels.tolist() == [inputs.labels[0].tolist() + [tok.pad_token_id] * pad]
    assert padded.loss_mask.tolist() == [inputs.loss_mask[0].tolist() + [0] * pad]
    long_target = sp.encode("是世界上最伟大的建筑工程之一，也是")
    cut = tok.build_inputs_for_generation(batch, max_gen_length=GEN_LENGTH,
                                          targets="是世界上最伟大的建筑工程之一，也是")
    kept = long_target[:GEN_LENGTH - 2]  # cut on the right; room for <|startofpiece|> and <|endofpiece|>
    assert cut.input_ids.tolist() == [batch.input_ids[0].tolist() + [tok.sop_token_id] + kept]
    assert cut.labels[0, length:].tolist() == kept + [tok.eop_token_id]


@pytest.mark.parametrize("max_gen_length", [1, GEN_LENGTH, 64])
def test_generation_inputs_match_paddlenlp(tok, paddlenlp_tok, max_gen_length):
    batch = tok([MASK_TEXT, GMASK_TEXT, CARD_TEXT], return_tensors="np", padding=True)
    ours = tok.build_inputs_for_generation(batch, max_gen_length=max_gen_length)
    theirs = paddlenlp_tok.build_inputs_for_generation(batch, max_gen_length=max_gen_length)
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


@pytest.mark.parametrize("padding", [False, True])
def test_target_inputs_match_paddlenlp(tok, paddlenlp_tok, padding, monkeypatch):
    # PaddleNLP means to cut targets on the right (it passes truncation_side="right"), but its
    # __call__ ignores that argument and cuts on the tokenizer's side, "left": set it as meant.
    monkeypatch.setattr(paddlenlp_tok, "truncation_side", "right")
    batch = tok([MASK_TEXT, GMASK_TEXT], return_tensors="np", padding=True)
    targets = ["中国", "是世界上最伟大的建筑工程之一，也是"]  # the second is cut to max_gen_length - 2
    ours = tok.build_inputs_for_generation(batch, max_gen_length=8, targets=targets, padding=padding)
    theirs = paddlenlp_tok.build_inputs_for_generation(batch, max_gen_length=8, targets=targets, padding=padding)
    assert sorted(ours) == sorted([*theirs, "labels"])
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


CHOICE_CONTEXTS = ["北京是[MASK]的首都。", "《红楼梦》是中国古典四大名著之一，作者是[MASK]。"]
CHOICES = [["中国", "日本", "中华人民共和国"], ["曹雪芹", "施耐庵"]]


def test_multiple_choice_matches_paddlenlp(tok, paddlenlp_tok):
    batch = tok(CHOICE_CONTEXTS, return_tensors="np", padding=True)
    ours = tok.build_inputs_for_multiple_choice(batch, CHOICES)
    size = ours.input_ids.shape[1]
    for row, choices in enumerate(CHOICES):
        # PaddleNLP wants the ids as a list and the mask as [1, L] (HF expands a [L] mask)
        context = {"input_ids": batch.input_ids[row].tolist(), "attention_mask": batch.attention_mask[row][None, :]}
        theirs = paddlenlp_tok._build_input_for_multiple_choice(context, choices)
        length = len(theirs["input_ids"])
        np.testing.assert_array_equal(ours.input_ids[row, :length], theirs["input_ids"])
        np.testing.assert_array_equal(ours.position_ids[row, :, :length], theirs["position_ids"])
        np.testing.assert_array_equal(ours.attention_mask[row, 0, :length, :length], theirs["attention_mask"])
        for key in ("choice_ids", "choice_indices"):
            assert [ids.tolist() for ids in ours[key][row]] == [ids.tolist() for ids in theirs[key]], key
        # padding: pad ids, the last positions repeated, nothing attended
        assert (ours.input_ids[row, length:] == tok.pad_token_id).all()
        np.testing.assert_array_equal(ours.position_ids[row, :, length:],
                                      np.repeat(theirs["position_ids"][:, -1:], size - length, axis=1))
        assert not ours.attention_mask[row, 0, length:].any() and not ours.attention_mask[row, 0, :, length:].any()


def test_multiple_choice_by_hand(tok, sp):
    batch = tok("北京是[MASK]", return_tensors="pd")
    context = tok.encode("北京是[MASK]")
    length, mask_position = len(context), context.index(tok.mask_token_id)
    first, second = sp.encode("中国"), sp.encode("中华人民共和国")
    inputs = tok.build_inputs_for_multiple_choice(batch, [["中国", "中华人民共和国"]])
    assert isinstance(inputs.input_ids, paddle.Tensor) and isinstance(inputs.choice_ids[0][0], paddle.Tensor)
    assert inputs.input_ids.tolist() == [context + [tok.sop_token_id] + first[:-1] + [tok.sop_token_id] + second[:-1]]
    spans = [(length, length + len(first)), (length + len(first), length + len(first) + len(second))]
    assert [ids.tolist() for ids in inputs.choice_ids[0]] == [first, second]
    assert [ids.tolist() for ids in inputs.choice_indices[0]] == [list(range(*span)) for span in spans]
    total = spans[-1][1]
    expected_mask = np.zeros([total, total], dtype="int64")
    expected_mask[:, :length] = 1
    for start, end in spans:
        for i in range(start, end):
            expected_mask[i, start:i + 1] = 1
    np.testing.assert_array_equal(inputs.attention_mask.numpy()[0, 0], expected_mask)
    positions = inputs.position_ids.numpy()[0]
    assert positions[0].tolist() == list(range(length)) + [mask_position] * (total - length)
    assert positions[1].tolist() == [0] * length + [i + 1 for start, end in spans for i in range(end - start)]
    with pytest.raises(GLMError, match="choices"):
        tok.build_inputs_for_multiple_choice(batch, ["中国", "日本"])


# ----- 4. decoding and files

ROUND_TRIP_TEXTS = [
    CARD_TEXT.replace("[MASK]", "拿破仑"),
    "2008年8月8日晚上8点，第29届夏季奥林匹克运动会在北京开幕！",
    "价格：￥2,999.00（含税），数量：3件；温度从-5℃升高到12℃……“你好！”她说。",
    "這是繁體字與罕見字：龘𠀋，还有表情😀和English words 123。",  # outside the corpus: byte pieces
    "  前后有空格\t和换行\n第二行  ",
]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_decode_encode_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(ids) == "[CLS]" + text + "<|endoftext|>"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_decode_special_tokens_and_input_types(tok):
    text = "北京是[MASK]的首都，[sMASK]<|endofpiece|>"
    ids = tok.encode(text)
    assert tok.decode(ids) == "[CLS]" + text + "<|endoftext|>"
    assert tok.decode(ids, skip_special_tokens=True) == "北京是的首都，"
    assert tok.decode(np.array(ids)) == tok.decode(tuple(ids)) == tok.decode(paddle.to_tensor(ids)) == tok.decode(ids)
    batch = tok([text, "上海"], padding=True, return_tensors="pd")
    expected = ["[CLS]" + text + "<|endoftext|>", "[CLS]上海<|endoftext|>" + "<|endoftext|>" * (len(ids) - 4)]
    assert tok.batch_decode(batch.input_ids) == tok.batch_decode(batch.input_ids.numpy().tolist()) == expected
    assert tok.batch_decode(batch.input_ids.numpy(), skip_special_tokens=True) == ["北京是的首都，", "上海"]
    with pytest.raises(GLMError, match="batch_decode"):
        tok.decode(batch.input_ids)
    with pytest.raises(GLMError, match=str(tok.vocab_size)):
        tok.decode([tok.vocab_size])
    with pytest.raises(GLMError):
        tok.convert_ids_to_tokens(-1)


def test_save_and_load_keep_every_id(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "cog-pretrain.model").write_bytes(MODEL_FILE.read_bytes())
    (source / "added_tokens.json").write_text(json.dumps({"[gMASK]": 1300, "[NEW]": 1301}))
    config = {"do_lower_case": True, "model_max_length": 1024, "tokenizer_class": "GLMChineseTokenizer"}
    (source / "tokenizer_config.json").write_text(json.dumps(config))
    tok = GLMChineseTokenizer.from_pretrained(str(source))
    target = tmp_path / "saved"
    tok.save_pretrained(str(target))
    tok.save_pretrained(str(target))  # overwriting is fine
    assert sorted(os.listdir(target)) == ["added_tokens.json", "cog-pretrain.model", "tokenizer_config.json"]
    assert (target / "cog-pretrain.model").read_bytes() == MODEL_FILE.read_bytes()
    assert json.loads((target / "tokenizer_config.json").read_text()) == config
    loaded = GLMChineseTokenizer.from_pretrained(str(target))
    assert loaded.special_tokens == tok.special_tokens
    assert loaded.special_tokens["[gMASK]"] == 1300 and loaded.special_tokens["[NEW]"] == 1301
    assert loaded.special_tokens["[MASK]"] == MODEL_VOCAB_SIZE + 3
    assert loaded.vocab_size == tok.vocab_size == 1302
    for text in ROUND_TRIP_TEXTS + [MASK_TEXT, GMASK_TEXT + "[NEW]"]:
        assert loaded.encode(text) == tok.encode(text)
    every_id = list(range(MODEL_VOCAB_SIZE)) + sorted(tok.special_tokens.values())
    assert loaded.convert_ids_to_tokens(every_id) == tok.convert_ids_to_tokens(every_id)
    with pytest.raises(GLMError, match="not a directory"):
        tok.save_pretrained(str(target / "cog-pretrain.model"))
