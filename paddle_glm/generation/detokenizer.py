"""Incremental detokenization with prefix and read offsets, as vLLM and TGI do it.

Decoding a token alone loses its context: SentencePiece drops a piece's leading space at
the start of a text, and a character split over byte pieces decodes to ``\\ufffd`` until
its last byte arrives. So each step decodes a short window twice, the tokens already
shown (from ``prefix_offset`` to ``read_offset``) with and without the new ones, and emits
the difference once it no longer ends in a partial character. The window is the last
emitted tokens plus the new ones (3 ids per token in the usual case), whatever the length.
"""
from __future__ import annotations

from typing import List

PARTIAL = "\ufffd"  # what a byte sequence cut short decodes to


class IncrementalDetokenizer:
    """Text deltas of one row's tokens as they arrive: ``add(token)`` returns the new text, ``flush()``
    whatever is held back at the end. Shared by the streamers and the server's rows.

    The tokenizer's ``eop_token_id`` (``<|endofpiece|>``, the stop token) is not text: it is ignored.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.stop_token = getattr(tokenizer, "eop_token_id", None)
        self.tokens: List[int] = []
        self.prefix_offset = 0  # the window's start: context for the tokens not yet shown
        self.read_offset = 0  # the tokens before this are shown

    def _decode(self, tokens: List[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=self.skip_special_tokens) if tokens else ""

    def add(self, token: int) -> str:
        """The text ``token`` completes (empty while a character is incomplete)."""
        if token == self.stop_token:
            return ""
        self.tokens.append(int(token))
        shown = self._decode(self.tokens[self.prefix_offset:self.read_offset])
        text = self._decode(self.tokens[self.prefix_offset:])
        if len(text) <= len(shown) or text.endswith(PARTIAL):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
        return text[len(shown):]

    def flush(self) -> str:
        """The text of the tokens not shown yet (an incomplete character as ``\\ufffd``)."""
        shown = self._decode(self.tokens[self.prefix_offset:self.read_offset])
        text = self._decode(self.tokens[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.tokens)
        return text[len(shown):]
