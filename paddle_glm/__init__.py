"""paddle_glm: GLM (General Language Model) for PaddlePaddle, loading PaddleNLP's glm-10b-chinese checkpoints."""
from .config import GLMConfig
from .errors import CheckpointError, GLMError
from .model import GLMForConditionalGeneration, GLMModel, GLMOutput

__all__ = [
    "GLMConfig",
    "GLMModel",
    "GLMForConditionalGeneration",
    "GLMOutput",
    "GLMError",
    "CheckpointError",
]
__version__ = "0.1.0"
