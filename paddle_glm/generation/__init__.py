"""Text generation for GLM: KV-cache decoding, sampling, beam search and streaming.

Exports load on first use (PEP 562), so the command line can read ``GenerationConfig``'s
fields for its flags without importing Paddle.
"""
from importlib import import_module

# public name -> module that defines it
_EXPORTS = {
    "generate": ".api",
    "GenerateOutput": ".api",
    "GenerationConfig": ".config",
    "BaseStreamer": ".streamers",
    "TextStreamer": ".streamers",
    "TextIteratorStreamer": ".streamers",
    "TokenCollector": ".streamers",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'paddle_glm.generation' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
