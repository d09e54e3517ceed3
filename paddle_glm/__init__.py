"""paddle_glm: GLM (General Language Model) for PaddlePaddle, loading PaddleNLP's glm-10b-chinese checkpoints.

Exports load on first use (PEP 562), so ``import paddle_glm`` and the converter's
command line start without importing Paddle.
"""
from importlib import import_module

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "GLMConfig": ".config",
    "GLMModel": ".model",
    "GLMForConditionalGeneration": ".model",
    "GLMOutput": ".model",
    "GLMForMultipleChoice": ".multiple_choice",
    "GLMChineseTokenizer": ".tokenizer",
    "BatchEncoding": ".tokenizer",
    "GenerateOutput": ".generation",
    "GenerationConfig": ".generation",
    "TextStreamer": ".generation",
    "TextIteratorStreamer": ".generation",
    "fill_blanks": ".infilling",
    "convert": ".conversion",
    "verify": ".conversion",
    "GLMError": ".errors",
    "CheckpointError": ".errors",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'paddle_glm' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
