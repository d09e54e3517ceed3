"""The tiny sentencepiece model of the tests, and training more like it.

``tests/data/tokenizer`` is a tokenizer directory (``cog-pretrain.model``, N = 1200)
made by ``tools/make_test_spm.py`` from ``corpus.txt`` in the same directory.
"""
from __future__ import annotations

import io
from pathlib import Path

import sentencepiece as spm

TOKENIZER_DIR = Path(__file__).parent / "data" / "tokenizer"
CORPUS_FILE = TOKENIZER_DIR / "corpus.txt"
MODEL_FILE = TOKENIZER_DIR / "cog-pretrain.model"
MODEL_VOCAB_SIZE = 1200
# Exact round trips: no normalisation (full-width punctuation stays), whitespace kept as
# is, characters outside the corpus as UTF-8 byte pieces. One thread: deterministic.
TRAIN_OPTIONS = dict(
    model_type="unigram",
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    byte_fallback=True,
    character_coverage=1.0,
    num_threads=1,
    minloglevel=2,
)


def train_sentencepiece(vocab_size: int, corpus: Path = CORPUS_FILE) -> bytes:
    """A serialized sentencepiece model of ``vocab_size`` pieces trained on ``corpus`` (one sentence a line)."""
    lines = corpus.read_text(encoding="utf-8").splitlines()
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
                                   **TRAIN_OPTIONS)
    return model.getvalue()
