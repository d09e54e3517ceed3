"""One incremental detokenizer (prefix/read offsets) behind TextStreamer, TextIteratorStreamer and the
server's rows: the same text as decoding the whole row, a few ids decoded per new token."""
import io

import pytest

from tokenizer_helpers import TOKENIZER_DIR

from paddle_glm import GLMChineseTokenizer
from paddle_glm.generation import TextIteratorStreamer, TextStreamer
from paddle_glm.generation.detokenizer import IncrementalDetokenizer

# Chinese, ASCII words with spaces and characters outside the corpus (byte pieces: 🌍, ∑, 龘)
TEXT = ("春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。The quick brown fox jumps over the lazy dog. "
        "🌍 ∑ 龘 床前明月光，疑是地上霜。举头望明月，低头思故乡。") * 3
MAX_IDS_PER_TOKEN = 8


class CountingTokenizer:
    """The real tokenizer, counting the ids each ``decode`` call is given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.decoded = tokenizer, 0
        self.eop_token_id = tokenizer.eop_token_id

    def decode(self, ids, skip_special_tokens=False):
        self.decoded += len(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


@pytest.fixture(scope="module")
def tokenizer():
    return GLMChineseTokenizer.from_pretrained(str(TOKENIZER_DIR))


@pytest.fixture(scope="module")
def token_ids(tokenizer):
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    assert len(ids) >= 180 and any(tokenizer.decode([t]).endswith("\ufffd") for t in ids)  # byte pieces
    return ids


def test_deltas_add_up_to_the_whole_decode_with_a_few_ids_per_token(tokenizer, token_ids):
    counting = CountingTokenizer(tokenizer)
    detokenizer = IncrementalDetokenizer(counting)
    pieces = [detokenizer.add(t) for t in token_ids] + [detokenizer.flush()]
    assert "".join(pieces) == tokenizer.decode(token_ids)
    assert not any(p.endswith("\ufffd") for p in pieces[:-1])  # a character is sent whole
    assert counting.decoded <= MAX_IDS_PER_TOKEN * len(token_ids), counting.decoded / len(token_ids)


def test_text_streamer_counts_and_leaves_out_endofpiece(tokenizer, token_ids):
    counting, out = CountingTokenizer(tokenizer), io.StringIO()
    streamer = TextStreamer(counting, file=out)
    for token in token_ids + [tokenizer.eop_token_id]:  # a fill ends with <|endofpiece|>
        streamer.put([token])
    streamer.end()
    assert out.getvalue() == tokenizer.decode(token_ids) + "\n"
    assert "<|endofpiece|>" not in out.getvalue()
    assert counting.decoded <= MAX_IDS_PER_TOKEN * len(token_ids)
    iterator = TextIteratorStreamer(tokenizer, timeout=5)
    for token in token_ids:
        iterator.put([token])
    iterator.end()
    assert "".join(iterator) == tokenizer.decode(token_ids)


def test_server_rows_count(tokenizer, token_ids):
    from paddle_glm.serving.rows import RowText

    counting = CountingTokenizer(tokenizer)
    whole = tokenizer.decode(token_ids, skip_special_tokens=True)
    stop = "故乡。春眠"  # the second repetition's start
    text = RowText(counting, max_tokens=len(token_ids), stop=[stop])
    sent = "".join(text.add(t) for t in token_ids if text.finish_reason is None)
    assert sent == whole[:whole.index(stop)] and text.finish_reason == "stop"
    assert counting.decoded <= MAX_IDS_PER_TOKEN * len(text.tokens)
