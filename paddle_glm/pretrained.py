"""``from_pretrained`` / ``save_pretrained`` for the GLM model classes."""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Tuple, Union

import numpy as np
import paddle

from .checkpoint.layout import PADDLE
from .checkpoint.loader import load_checkpoint
from .checkpoint.writer import ShardedWriter, save_checkpoint_dir
from .config import GLMConfig
from .devices import default_dtype, device_type, resolve_dtype, use_cpu_threads
from .io_utils import parse_size, require_local_dir
from .quantization.settings import QUANT_CONFIG_KEY, requested_settings, settings_for_load


class PretrainedMixin:
    """Loading and saving in PaddleNLP's file layout. Mixed into the nn.Layer model classes."""

    config = None

    @classmethod
    def from_pretrained(cls, path: str, dtype: Optional[str] = None, strict: bool = True,
                        show_progress: bool = True, recompute: bool = False,
                        rewrite: Optional[Callable[[object], Callable]] = None, quant_type: Optional[str] = None,
                        group_size: Optional[int] = None, quantize_embeddings: bool = True):
        """Build the model from a local directory holding ``config.json`` and a checkpoint.

        Args:
            path: a directory with ``config.json`` and one of ``model.safetensors.index.json`` +
                shards, ``model.safetensors``, ``model_state.pdparams.index.json`` + shards,
                ``model_state.pdparams`` (or a PyTorch ``pytorch_model.bin``, with torch installed).
            dtype: "float32" (default), "float16" or "bfloat16" (the last two need a CUDA GPU).
                Tensors are cast while loading.
            strict: raise if the checkpoint lacks a model tensor (else initialise it randomly).
            show_progress: a progress bar per shard on stderr (when it is a terminal).
            recompute: set ``config.recompute`` (recompute each block in the backward pass when training).
            rewrite: applied from outside to the built model before any weight is read; it returns
                the loader's ``select(name, array)`` hook, which cuts each checkpoint tensor to what
                the rewritten model holds (``paddle_glm.tensor_parallel.from_pretrained`` passes one).
            quant_type: "weight_only_int8" or "weight_only_int4": quantize the weights as each shard
                streams in (the float model never exists in memory); see ``paddle_glm/quantization``.
                A quantized checkpoint (``paddle-glm quantize``) is recognised from its config.json
                and loaded as it is, without this argument.
            group_size: the int4 group along the input dimension (default 64).
            quantize_embeddings: quantize the word embeddings and tied output projection too
                (False keeps them in full precision).
        """
        require_local_dir(path)
        use_cpu_threads()  # an entry point: the process will compute with this model
        config = GLMConfig.from_pretrained(path)
        config.recompute = config.recompute or recompute
        requested = requested_settings(quant_type, group_size, quantize_embeddings)
        quantization = settings_for_load(config, path, requested, dtype, paddle.get_device(),
                                         tensor_parallel=rewrite is not None)  # the one rewrite passed: TP
        dtype = resolve_dtype(dtype)
        # LazyGuard: parameters get memory only when the checkpoint assigns them (no random init).
        with default_dtype(dtype), paddle.LazyGuard():
            model = cls(config)
        select = rewrite(model) if rewrite else None
        assign = layout = None
        if quantization is not None:
            from .quantization.rewrite import quantize_model  # the kernels only when asked for

            assign = quantize_model(model, quantization).assign
            layout = PADDLE if QUANT_CONFIG_KEY in config.extra else None  # quantized files are written in it
        load_checkpoint(model, path, dtype, strict=strict, show_progress=show_progress, select=select,
                        assign=assign, layout=layout)
        if quantization is not None and device_type() == "gpu":
            from .quantization.cuda_layout import cuda_arch, cuda_capability
            from .quantization.rewrite import convert_for_cuda

            convert_for_cuda(model, cuda_arch(cuda_capability()))
        model.eval()
        return model

    def save_pretrained(self, path: str, safe_serialization: bool = True,
                        max_shard_size: Union[int, str] = "2GB") -> None:
        """Write ``config.json``, the weights in PaddleNLP's file names and index format, and the
        model's ``generation_config`` (as ``generation_config.json``) when it has one.

        ``max_shard_size`` is bytes or a string such as "500MB" or "2GB". Nothing is left
        half-written: see :func:`~paddle_glm.checkpoint.writer.save_checkpoint_dir`. Other
        files already in ``path`` (a tokenizer, say) are kept; an older Paddle-format
        checkpoint there is replaced.
        """
        save_checkpoint_dir(path, lambda directory, tag: self.write_into(directory, safe_serialization,
                                                                         max_shard_size, tag))

    def write_into(self, directory: str, safe_serialization: bool = True, max_shard_size: Union[int, str] = "2GB",
                   tag: Optional[str] = None) -> None:
        """Write ``save_pretrained``'s files straight into ``directory``, a temporary directory the caller
        owns and installs (a training checkpoint's): no temporary directory of its own, no switch.
        ``tag`` is :class:`~paddle_glm.checkpoint.writer.ShardedWriter`'s."""
        state = list(self.state_dict().items())
        sizes = [(name, int(np.prod(p.shape)) * p.element_size()) for name, p in state]
        self._write_files(directory, tag, sizes, ((name, p.numpy()) for name, p in state), safe_serialization,
                          max_shard_size)

    def _write_checkpoint(self, path: str, sizes, arrays: Iterable[Tuple[str, np.ndarray]],
                          safe_serialization: bool, max_shard_size: Union[int, str]) -> None:
        """Write ``arrays`` (``(name, array)`` in the order of ``sizes``, ``(name, bytes)``) and
        ``config.json`` into ``path``, atomically for readers (see ``save_checkpoint_dir``)."""
        save_checkpoint_dir(path, lambda directory, tag: self._write_files(directory, tag, sizes, arrays,
                                                                           safe_serialization, max_shard_size))

    def _write_files(self, directory: str, tag: Optional[str], sizes, arrays: Iterable[Tuple[str, np.ndarray]],
                     safe_serialization: bool, max_shard_size: Union[int, str]) -> None:
        fmt = "safetensors" if safe_serialization else "pdparams"
        writer = ShardedWriter(directory, fmt, sizes, parse_size(max_shard_size), tag=tag)
        for name, array in arrays:
            writer.add(name, array)
        writer.finish()
        self.config.save_pretrained(directory)
        if getattr(self, "generation_config", None) is not None:  # the generation settings travel along
            self.generation_config.save_pretrained(directory)
