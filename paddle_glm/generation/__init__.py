"""Text generation for GLM: KV-cache decoding, sampling, beam search and streaming."""
from .api import GenerateOutput, generate
from .streamers import BaseStreamer, TextIteratorStreamer, TextStreamer, TokenCollector

__all__ = ["generate", "GenerateOutput", "BaseStreamer", "TextStreamer", "TextIteratorStreamer", "TokenCollector"]
