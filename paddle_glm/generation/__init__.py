"""Text generation for GLM: KV-cache decoding, sampling, beam search and streaming."""
from .api import GenerateOutput, generate
from .config import GenerationConfig
from .streamers import BaseStreamer, TextIteratorStreamer, TextStreamer, TokenCollector

__all__ = ["generate", "GenerateOutput", "GenerationConfig", "BaseStreamer", "TextStreamer", "TextIteratorStreamer",
           "TokenCollector"]
