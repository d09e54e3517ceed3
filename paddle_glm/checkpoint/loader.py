"""Loading a checkpoint into a model, one shard at a time, straight into its parameters."""
from __future__ import annotations

import warnings
from typing import Callable, Dict, List, Optional

import paddle
from tqdm.auto import tqdm

from ..errors import CheckpointError, MissingFileError
from .dtypes import STORAGE, cast_array
from .layout import PADDLE, convert_layout, strip_prefix
from .source import find_checkpoint


def load_checkpoint(model: paddle.nn.Layer, directory: str, dtype: str, strict: bool = True,
                    show_progress: bool = True, select: Optional[Callable] = None,
                    assign: Optional[Callable] = None, layout: Optional[str] = None) -> Dict[str, List[str]]:
    """Assign every tensor of the checkpoint in ``directory`` to ``model``'s parameters.

    Names may carry the ``glm.`` prefix or not; torch-layout files are transposed
    on the fly; each tensor is cast to ``dtype`` as it is read. Only one shard is
    in memory at a time, beside the model.

    Returns ``{"missing": [...], "unexpected": [...]}``. Missing parameters raise
    (``strict``) or are initialised randomly with a warning; unexpected tensors
    give a warning listing them. A tensor in two shards is an error naming both.

    Every shard is found through one read of the index. If a file vanishes while
    loading (a ``save_pretrained`` replaced the checkpoint), the index is read again
    and everything is loaded once more from the new checkpoint; if that fails the same
    way, a ``MissingFileError`` says to load again.

    ``select(name, array)``, when given, returns the part of each tensor (in the Paddle
    layout) the model holds, before the shape check and the cast (tensor parallelism: a
    rank's slice).

    ``assign(name, array, path)``, when given, may take a tensor (in the Paddle layout) over
    instead of the shape check, cast and copy, and returns the model keys it filled, or None
    to leave it to the loader (quantization: a float weight becomes an integer weight and its
    scale). ``layout`` ("paddle" or "torch") skips detecting the files' layout.
    """
    args = (model, directory, dtype, strict, show_progress, select, assign, layout)
    try:
        return _load_once(*args)
    except MissingFileError:
        try:
            return _load_once(*args)
        except MissingFileError as e:
            raise MissingFileError(f"{e} (if a save is replacing the checkpoint in {directory}, load again)") from None


def _load_once(model: paddle.nn.Layer, directory: str, dtype: str, strict: bool, show_progress: bool,
               select: Optional[Callable], assign: Optional[Callable], layout: Optional[str]) -> Dict[str, List[str]]:
    source = find_checkpoint(directory)
    source_layout = layout or (PADDLE if source.format == "pdparams" else source.detect_layout())
    params = {strip_prefix(name): p for name, p in model.state_dict().items()}
    loaded, unexpected = set(), []
    found_in: Dict[str, str] = {}  # key -> the file it came from
    bar = tqdm(source.shards, desc="Loading checkpoint", unit="shard", disable=not show_progress or None)
    for shard in bar:
        path = source.path(shard)
        names = []
        for name, array in source.read_shard(shard):
            names.append(name)
            key = strip_prefix(name)
            if key in found_in:
                raise CheckpointError(f"tensor {name!r} is in two checkpoint files, {found_in[key]} and {path}; "
                                      "keep one copy (the index says which shard holds it)")
            found_in[key] = path
            param = params.get(key)
            if param is None:
                unexpected.append(name)
                continue
            array = convert_layout(name, array, source_layout, PADDLE)
            filled = assign(name, array, path) if assign else None
            if filled:
                loaded.update(filled)
                continue
            if array.dtype not in STORAGE.values():
                raise CheckpointError(f"{path}: tensor {name!r} has dtype {array.dtype}; expected a float tensor")
            if select is not None:
                array = select(name, array)
            if tuple(array.shape) != tuple(param.shape):
                raise CheckpointError(f"{path}: tensor {name!r} has shape {list(array.shape)} but the model expects "
                                      f"{list(param.shape)} (does config.json match the checkpoint?)")
            param.set_value(cast_array(array, dtype))
            loaded.add(key)
            del array
        source.check_shard_names(shard, names)
    missing = sorted(set(params) - loaded)
    if missing and strict:
        raise CheckpointError(f"{directory}: the checkpoint lacks {len(missing)} model tensor(s): "
                              f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
    for key in missing:
        params[key].initialize()
    if missing:
        warnings.warn(f"{directory}: {len(missing)} tensor(s) missing from the checkpoint were randomly "
                      f"initialised: {', '.join(missing[:10])}", stacklevel=2)
    if unexpected:
        warnings.warn(f"{directory}: ignored {len(unexpected)} tensor(s) the model does not have: "
                      f"{', '.join(unexpected[:10])}{' ...' if len(unexpected) > 10 else ''}", stacklevel=2)
    return {"missing": missing, "unexpected": unexpected}
