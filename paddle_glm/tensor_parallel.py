"""A tensor-parallel GLM: loading it (each rank reads only its slices), generating (one seed on every
rank) and saving (gathered tensor by tensor; rank 0 writes and tells every rank how it went).

In each rank of a job started by ``python -m paddle.distributed.launch --nproc_per_node N``::

    model = tensor_parallel.from_pretrained(GLMForConditionalGeneration, MODEL_DIR)

The model is built without memory, rewritten by :func:`paddle_glm.parallel.parallelize` and loaded
through its ``select`` hook; its classes then get the mixins below in front, so the logits are
gathered to the whole vocabulary, the KV cache holds the rank's heads, and ``generate`` and
``save_pretrained`` work across the ranks.
"""
from __future__ import annotations

from typing import Dict, Tuple, Union

import numpy as np
import paddle

from .distributed import describe_failure, hear_rank_zero, init_job, shared_seed, tell_ranks
from .errors import GLMError
from .parallel import TensorParallel, all_gather_last_axis, parallelize, parameters_per_rank, split_kind


def from_pretrained(cls, path: str, **kwargs):
    """``cls.from_pretrained(path, **kwargs)`` split over the ranks of the launched job this process is in."""
    rank, world = init_job()
    return cls.from_pretrained(path, rewrite=lambda model: make_tensor_parallel(model, rank, world).select, **kwargs)


def make_tensor_parallel(model: paddle.nn.Layer, rank: int, world: int) -> TensorParallel:
    """Rewrite a built GLM in place as rank ``rank`` of ``world``; returns its :class:`TensorParallel`,
    also kept as ``model.tensor_parallel``."""
    tp = parallelize(model, rank, world)
    base = getattr(model, "glm", model)
    base.__class__ = _with_mixin(TensorParallelBase, type(base))
    base.local_heads = base.config.num_attention_heads // world
    model.__class__ = _with_mixin(TensorParallelModel, type(model))
    model.tensor_parallel = tp
    return tp


def rank_parameters(model_class, config, world: int) -> int:
    """Parameters one of ``world`` ranks holds of ``model_class(config)`` (built without memory)."""
    with paddle.LazyGuard():
        model = model_class(config)
    return parameters_per_rank({name: p.shape for name, p in model.state_dict().items()}, world)


class TensorParallelBase:
    """Mixed into the base model's class: the tied LM head's ``[..., vocab/N]`` logits of this rank,
    gathered to ``[..., vocab]`` on every rank, and KV caches of the rank's ``local_heads``."""

    local_heads: int

    def lm_logits(self, hidden: paddle.Tensor) -> paddle.Tensor:
        return all_gather_last_axis(super().lm_logits(hidden))

    def new_cache(self, batch: int, max_length: int, attention_backend=None, num_heads=None):
        return super().new_cache(batch, max_length, attention_backend, num_heads or self.local_heads)


class TensorParallelModel:
    """Mixed into a rewritten model's class: generation and saving that work across the ranks."""

    tensor_parallel: TensorParallel

    def generate(self, input_ids, *args, generation_config=None, **kwargs):
        """As the model's ``generate``; without a seed, every rank samples with rank 0's fresh seed."""
        if kwargs.get("seed") is None and getattr(generation_config or self.generation_config, "seed", None) is None:
            kwargs["seed"] = shared_seed()
        return super().generate(input_ids, *args, generation_config=generation_config, **kwargs)

    def save_pretrained(self, path: str, safe_serialization: bool = True,
                        max_shard_size: Union[int, str] = "2GB") -> None:
        """Write the ordinary single-model checkpoint: each tensor is gathered in turn and rank 0 writes.

        Every rank must call it (the gathers are collectives). Before each gather and at the end, rank 0
        tells the others whether it is still writing: if it fails, every rank raises the same GLMError.
        """
        tp = self.tensor_parallel
        state = list(self.state_dict().items())
        if tp.rank != 0:
            for name, local in state:
                hear_rank_zero()
                tp.gather(name, local)
            hear_rank_zero()
            return
        sizes = [(name, int(np.prod(p.shape)) * p.element_size() * (tp.world if split_kind(name) else 1))
                 for name, p in state]

        def gathered():
            for name, local in state:
                tell_ranks(None)
                yield name, tp.gather(name, local)

        try:
            self._write_checkpoint(path, sizes, gathered(), safe_serialization, max_shard_size)
        except Exception as e:  # told to the other ranks, then raised here as theirs is
            raise GLMError(tell_ranks(describe_failure(e))) from None
        tell_ranks(None)


_CLASSES: Dict[Tuple[type, type], type] = {}


def _with_mixin(mixin: type, cls: type) -> type:
    """``cls`` with ``mixin``'s methods in front (one class per pair, so isinstance checks hold)."""
    if (mixin, cls) not in _CLASSES:
        _CLASSES[mixin, cls] = type(f"{mixin.__name__}{cls.__name__}", (mixin, cls), {})
    return _CLASSES[mixin, cls]
