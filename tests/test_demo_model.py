"""The embedded demo model is real: it fills blanks in sentences of the corpus it was trained on.

These sentences come FROM THE TRAINING CORPUS: the model memorizes its corpus and these tests
show that it learned it (recall), not that it generalizes. Only the choice of blanks was made
apart from training: drawn once, before the shipped model was trained, with ``random.Random(6)``
over the lines of ``tools/corpus/zh_corpus.txt``: the lines in a shuffled order; in each of the
first five, one span of 2-4 characters (Chinese characters, digits, '.' or '%'), uniformly among
all such spans, replaced by ``[MASK]``; in the sixth, two such spans with a character between
them; for ``[gMASK]``, the first later line holding a '，', cut after it. Training corrupts random
spans of every line, so it may well have seen these exact blanks; nothing special-cases them.
Generalization to unseen text is out of reach for a 672k-parameter model of a 278-line corpus;
the finetuning tests check that a LoRA adapter teaches it facts it did not know.

Which artifact: these tests pin the checkpoint shipped in commit bd822a3, written by that commit's
``tools/train_tiny.py`` (``python tools/train_tiny.py --out paddle_glm/demo_model``: seed 0, 6000 steps,
2 workers, its own LM head and hand-made gradient all-reduce). The script now trains with the
library's pieces (GLM initialisation, the model's loss, ``paddle.DataParallel``) and draws other
initial weights, so a rerun gives other bytes, and it has not been rerun: a run takes about 10
minutes of both cores, and on a loaded machine its ``--minutes`` budget cuts it short, so the result
would depend on the load. The fills asserted below are these bytes' (``test_pinned_artifact``), not
the current script's; retraining must re-measure them.
"""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from paddle_glm import GLMForConditionalGeneration
from paddle_glm.demo_cases import DEMO_CASES, DEMO_MODEL_DIR
from paddle_glm.infilling import fill_blanks
from paddle_glm.tokenizer import GLMChineseTokenizer

CORPUS_SINGLE = [
    ("剑号[MASK]，珠称夜光。果珍李柰，菜重芥姜。", "巨阙"),
    ("周末我和爸爸去爬山，山顶[MASK]看到整个城市。", "上能"),
    ("《池上》白居易：小娃撑小艇，[MASK]白莲回。不解藏踪迹，浮萍一道开。", "偷采"),
    ("稻粱菽，麦黍稷。此六谷，[MASK]食。", "人所"),
    ("[MASK]，性本善。性相近，习相远。", "人之初"),
]
REQUIRED_SINGLE = 4  # of the 5 (the acceptance point 3)
CORPUS_TWO = ("名与身孰亲？身与货孰多？得[MASK]？是故甚爱必[MASK]，多藏必厚亡。知足不辱，知止不殆，可以长久。",
                ["与亡孰病", "大费"])
CORPUS_GMASK = ("秋天到了，[gMASK]", "树叶变黄了，一片一片从树上落下来。")
GMASK_CHECKED_CHARS = 8  # the continuation must start with this much of the corpus text
SIZE_LIMIT_BYTES = 5 * 1024 * 1024
# The files that decide the fills (weights and sentencepiece model) of the pinned artifact (bd822a3).
PINNED_SHA256 = {
    "model_state-00001-of-00002.pdparams": "bcd40e3489cefa5564a82be78127b4a1d228ad7d7a1c06a0973b5d51339e141e",
    "model_state-00002-of-00002.pdparams": "0d8218269aafa5dc7260501fc65dd1c8e78063df59339f7c3c09af6c340ca00c",
    "cog-pretrain.model": "0b5fcf843b153c9131a745995f52f28352473f60124c9c25c148847d844470b0",
}


@pytest.fixture(scope="module")
def demo():
    model = GLMForConditionalGeneration.from_pretrained(str(DEMO_MODEL_DIR), show_progress=False)
    return model, GLMChineseTokenizer.from_pretrained(DEMO_MODEL_DIR)


def test_checkpoint_is_sharded_pdparams_under_5mb():
    files = os.listdir(DEMO_MODEL_DIR)
    with open(DEMO_MODEL_DIR / "model_state.pdparams.index.json", encoding="utf-8") as f:
        shards = set(json.load(f)["weight_map"].values())
    assert len(shards) >= 2 and shards <= set(files)
    assert {"config.json", "cog-pretrain.model", "tokenizer_config.json"} <= set(files)
    assert sum(os.path.getsize(DEMO_MODEL_DIR / name) for name in files) <= SIZE_LIMIT_BYTES


def test_pinned_artifact():
    """The fills below were measured on these bytes; a retrained model must come with new measurements."""
    for name, expected in PINNED_SHA256.items():
        assert hashlib.sha256((DEMO_MODEL_DIR / name).read_bytes()).hexdigest() == expected, name


def test_fills_single_blanks_of_corpus_sentences(demo):
    results = [(fill_blanks(*demo, text)[1], [expected]) for text, expected in CORPUS_SINGLE]
    correct = sum(spans == expected for spans, expected in results)
    assert correct >= REQUIRED_SINGLE, results


def test_fills_two_blanks_in_one_sentence(demo):
    text, expected = CORPUS_TWO
    assert fill_blanks(*demo, text)[1] == expected


def test_gmask_continues_the_corpus_text(demo):
    text, expected = CORPUS_GMASK
    continuation = fill_blanks(*demo, text)[1][0]
    assert continuation[:GMASK_CHECKED_CHARS] == expected[:GMASK_CHECKED_CHARS], continuation


@pytest.mark.parametrize("case", DEMO_CASES, ids=lambda case: case.text[:12])
def test_demo_cases_fill_as_expected(demo, case):
    completed, spans = fill_blanks(*demo, case.text)
    assert tuple(spans) == case.expected
    assert "[MASK]" not in completed and "[gMASK]" not in completed
