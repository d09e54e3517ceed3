"""paddle_glm: GLM (General Language Model) for PaddlePaddle, loading PaddleNLP's glm-10b-chinese checkpoints."""
from .config import GLMConfig
from .errors import CheckpointError, GLMError
from .generation import GenerateOutput, TextIteratorStreamer, TextStreamer
from .infilling import fill_blanks
from .model import GLMForConditionalGeneration, GLMModel, GLMOutput
from .multiple_choice import GLMForMultipleChoice
from .tokenizer import BatchEncoding, GLMChineseTokenizer

__all__ = [
    "GLMConfig",
    "GLMModel",
    "GLMForConditionalGeneration",
    "GLMForMultipleChoice",
    "GLMOutput",
    "GLMChineseTokenizer",
    "BatchEncoding",
    "GenerateOutput",
    "TextStreamer",
    "TextIteratorStreamer",
    "fill_blanks",
    "GLMError",
    "CheckpointError",
]
__version__ = "0.1.0"
