"""Make tests/data/tokenizer/cog-pretrain.model, the tests' tiny sentencepiece model.

It is trained on tests/data/tokenizer/corpus.txt (hand-written Chinese sentences with
digits and punctuation) with the options in tests/tokenizer_helpers.py; the output is
the same bytes on every run. Usage: python tools/make_test_spm.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tokenizer_helpers import MODEL_FILE, MODEL_VOCAB_SIZE, train_sentencepiece  # noqa: E402


def main() -> None:
    MODEL_FILE.write_bytes(train_sentencepiece(MODEL_VOCAB_SIZE))
    print(f"wrote {MODEL_FILE} ({MODEL_FILE.stat().st_size} bytes, {MODEL_VOCAB_SIZE} pieces)")


if __name__ == "__main__":
    main()
