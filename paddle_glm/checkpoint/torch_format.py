"""Reading PyTorch ``pytorch_model.bin`` files (needs the optional ``torch`` extra)."""
from __future__ import annotations

from typing import Iterator, Tuple

import numpy as np

from ..errors import CheckpointError, GLMError, MissingFileError


def _torch():
    try:
        import torch
    except ImportError:
        raise GLMError(
            "reading pytorch_model.bin needs PyTorch: pip install 'paddle-glm[torch]' (or convert the "
            "checkpoint to safetensors first)"
        ) from None
    return torch


def iter_torch_bin(path: str) -> Iterator[Tuple[str, np.ndarray]]:
    """Yield ``(name, array)`` from a torch.save'd state dict; bfloat16 comes out as uint16 bits.

    Uses ``torch.load(..., weights_only=True, mmap=True)``, so nothing in the file
    runs and tensors are paged in from disk as they are used: the arrays are views of
    the file's memory map (contiguous tensors are not copied).
    """
    torch = _torch()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise MissingFileError(f"{path}: file not found") from None
    except Exception as e:  # torch raises RuntimeError/UnpicklingError/... for bad files
        raise CheckpointError(f"{path}: cannot read PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    for name in list(state):
        tensor = state.pop(name)
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().contiguous()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: its bit patterns as uint16
            yield name, tensor.view(torch.int16).numpy().view(np.uint16)
        else:
            yield name, tensor.numpy()
