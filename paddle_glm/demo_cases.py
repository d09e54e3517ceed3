"""The embedded demo model (``paddle_glm/demo_model``) and the blanks ``paddle-glm demo`` fills with it.

The model is a small GLM trained by ``tools/train_tiny.py`` on ``tools/corpus/zh_corpus.txt``;
every sentence below is a line of that corpus with some characters replaced by a mask token,
and ``expected`` is the original text of each blank. The cases were written before the model
was trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

DEMO_MODEL_DIR = Path(__file__).parent / "demo_model"


@dataclass(frozen=True)
class DemoCase:
    """A text with blanks and the corpus text of each blank, in order."""

    text: str
    expected: Tuple[str, ...]


# Single blanks, one sentence with two blanks, then a [gMASK] left-to-right continuation.
DEMO_CASES = (
    DemoCase("长江全长约[MASK]千米，是中国最长的河流。", ("6300",)),
    DemoCase("《静夜思》李白：床前明月光，疑是地上霜。举头望[MASK]，低头思故乡。", ("明月",)),
    DemoCase("子曰：学而不思则罔，[MASK]则殆。", ("思而不学",)),
    DemoCase("光在真空中的传播速度约为每秒[MASK]千米。", ("30万",)),
    DemoCase("《登鹳雀楼》王之涣：白日依山尽，[MASK]入海流。欲穷千里目，更上一层[MASK]。", ("黄河", "楼")),
    DemoCase("《春晓》孟浩然：春眠不觉晓，[gMASK]", ("处处闻啼鸟。夜来风雨声，花落知多少。",)),
)
