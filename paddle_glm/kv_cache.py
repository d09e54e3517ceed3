"""A preallocated key/value cache: static shapes, written by index."""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import numpy as np
import paddle

from . import cpu_operators
from .attention import BHSD, BSHD, additive_bias
from .devices import dtype_str
from .errors import GLMError


class KVCache:
    """Keys and values of every layer for ``batch`` rows and up to ``max_length`` tokens, and
    which of those slots a decode step may attend to.

    Buffers are allocated once, in the model's dtype and in the layout the
    attention backend reads without copying (``bhsd`` = ``[b, heads, t, d]`` for the
    CPU math path, ``bshd`` = ``[b, t, heads, d]`` for the fused CUDA kernels).
    In one ``generate`` call every row writes at the same slot (GLM inputs are right-padded,
    and padding columns are masked by ``key_bias``, not skipped); the server's continuous
    batching gives each row its own write index and loads a joining row into a free slot
    (:meth:`load_row`), reusing the buffers.

    ``key_bias`` ``[b, heads, 1, max_length]`` is the additive mask of a decode step's query
    (0 = visible, the dtype's minimum = hidden): set once after the prefill (:meth:`show`),
    then each decode step reveals the slot it writes. It is stored per head because Paddle's
    CPU add is ~9x slower when it broadcasts over the heads (measured at 16 heads). Nothing
    here tracks a length in Python, so a decode step is a function of tensors only: it writes
    with ``index_put_``, which reads its index on the device (slicing with a tensor bound
    would copy the bound to the host in eager mode), or, on CPU, through :meth:`attend_step`'s
    operator, which writes and attends in one call.
    """

    def __init__(self, keys: List[paddle.Tensor], values: List[paddle.Tensor], key_bias: paddle.Tensor,
                 layout: str, base: Optional[KVCache] = None):
        if layout not in (BHSD, BSHD):
            raise ValueError(f"unknown cache layout {layout!r}")
        self.keys, self.values, self.key_bias, self.layout = keys, values, key_bias, layout
        # a window's writes go to its base's whole buffers: Paddle's index_put_ on a strided view
        # copies the whole buffer (17 ms a layer for 4 rows of glm-large), on the buffer it does not
        self._writes = base or self
        self.seq_axis = 2 if layout == BHSD else 1
        self.max_length = keys[0].shape[self.seq_axis]
        self._index_rows()
        self._visible = paddle.zeros([1], dtype=key_bias.dtype)
        self._index_source, self._index = None, None

    def _index_rows(self) -> None:
        """The ``index_put_`` indices of every row and head, for the current batch size."""
        # broadcast against a slot index [1], they select [b, heads, 1] (bhsd: + d gives k's [b, heads, 1, d])
        # or [b, 1] (bshd: + heads, d gives k's shape)
        batch, heads = self.key_bias.shape[0], self.key_bias.shape[1]
        rows, head_ids = paddle.arange(batch, dtype="int64"), paddle.arange(heads, dtype="int64")
        self._token_index = ((rows.reshape([batch, 1, 1]), head_ids.reshape([1, heads, 1])) if self.layout == BHSD
                             else (rows.reshape([batch, 1]),))
        # key_bias [b, heads, 1, t] at (row, head, 0, slot) -> [b, heads]
        self._bias_index = (rows.reshape([batch, 1]), head_ids.reshape([1, heads]), paddle.zeros([1], dtype="int64"))

    def _slot_index(self, start: paddle.Tensor) -> tuple:
        """The ``index_put_`` index of a decode step's slot ``start`` (``[1]`` or ``[b]``), built once per
        step: every layer writes with the same ``start`` tensor."""
        if start is not self._index_source:
            self._index_source = start
            self._index = self._token_index + (start.reshape([-1, 1, 1] if self.layout == BHSD else [-1, 1]),)
        return self._index

    @classmethod
    def allocate(cls, num_layers: int, batch: int, max_length: int, num_heads: int, head_dim: int, dtype,
                 layout: str) -> KVCache:
        """Zeroed buffers and every slot hidden."""
        if layout not in (BHSD, BSHD):
            raise ValueError(f"unknown cache layout {layout!r}")
        shape = [batch, num_heads, max_length, head_dim] if layout == BHSD else [batch, max_length, num_heads, head_dim]
        return cls([paddle.zeros(shape, dtype=dtype) for _ in range(num_layers)],
                   [paddle.zeros(shape, dtype=dtype) for _ in range(num_layers)],
                   paddle.full([batch, num_heads, 1, max_length], paddle.finfo(dtype).min, dtype=dtype), layout)

    def show(self, visible: paddle.Tensor) -> None:
        """Set ``key_bias`` from a boolean ``[b, k]``: slot ``j < k`` visible where True; later slots
        hidden until a decode step reveals them."""
        b, k = visible.shape
        heads = self.key_bias.shape[1]
        visible = paddle.concat([visible, paddle.zeros([b, self.max_length - k], dtype="bool")], axis=1)
        bias = additive_bias(visible, dtype_str(self.key_bias.dtype))  # [b, max_length]
        self.key_bias = bias.reshape([b, 1, 1, self.max_length]).tile([1, heads, 1, 1])  # [b, heads, 1, max_length]

    def write(self, layer: int, k: paddle.Tensor, v: paddle.Tensor,
              start: Union[int, paddle.Tensor]) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """Write ``k``/``v`` (the cache layout, ``s`` new tokens) at slot ``start``; return the full buffers.

        ``start`` is an int (a prefill; checked against ``max_length``) or an int64 tensor ``[1]``
        or ``[b]`` (a decode step, one token per row, at one slot or at each row's own: not
        checked, which would cost a host synchronisation; the caller keeps it in range).
        """
        if not isinstance(start, int):
            index = self._slot_index(start)
            self._writes.keys[layer].index_put_(index, k)
            self._writes.values[layer].index_put_(index, v)
            return self.keys[layer], self.values[layer]  # a window's views see the write
        count = k.shape[self.seq_axis]
        if start + count > self.max_length:
            raise GLMError(f"KV cache overflow: writing {count} tokens at slot {start} of a cache of "
                           f"max_length {self.max_length}")
        if self.seq_axis == 2:
            self.keys[layer][:, :, start:start + count] = k
            self.values[layer][:, :, start:start + count] = v
        else:
            self.keys[layer][:, start:start + count] = k
            self.values[layer][:, start:start + count] = v
        return self.keys[layer], self.values[layer]

    def attend_step(self, layer: int, qkv: paddle.Tensor, index: paddle.Tensor) -> paddle.Tensor:
        """The ``cpu_decode`` backend (``attention.decode_backend``): write the keys and values of ``qkv``
        ``[b, 1, 3 * heads * d]`` at slot ``index`` (int64 ``[1]`` or ``[b]``, already revealed) and attend
        over this cache's slots with ``key_bias``, in one C++ call: the context ``[b, 1, heads * d]``."""
        return cpu_operators.decode_attention(qkv, *self.step_buffers(layer)[:3], index, self.max_length)

    def step_buffers(self, layer: int) -> Tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor, int]:
        """What a C++ decode step of ``layer`` reads and writes: the whole key and value buffers and ``key_bias``
        (a window's rows and slots are the first ones of its base's) and the slots it attends (this cache's)."""
        base = self._writes
        return base.keys[layer], base.values[layer], base.key_bias, self.max_length

    def reveal(self, index: paddle.Tensor) -> None:
        """Make slot ``index`` (int64 ``[1]``, or ``[b]``: one per row) visible to the rows' decode
        queries (every head)."""
        self._writes.key_bias.index_put_(self._bias_index + (index.reshape([-1, 1]),), self._visible)

    @property
    def nbytes(self) -> int:
        """Bytes of the key and value buffers and of ``key_bias``."""
        per = lambda t: int(np.prod(t.shape)) * t.element_size()  # noqa: E731
        return sum(per(t) for t in self.keys + self.values) + per(self.key_bias)

    def window(self, rows: int, length: int) -> KVCache:
        """The first ``length`` slots of the first ``rows`` rows, as views: writes go to these buffers
        (continuous batching runs its running rows, kept in the lowest rows, over the slots its
        longest row uses, not the whole table)."""
        if self.seq_axis == 2:
            keys, values = [k[:rows, :, :length] for k in self.keys], [v[:rows, :, :length] for v in self.values]
        else:
            keys, values = [k[:rows, :length] for k in self.keys], [v[:rows, :length] for v in self.values]
        return KVCache(keys, values, self.key_bias[:rows, :, :, :length], self.layout, base=self._writes)

    def move_row(self, source: int, target: int, length: int) -> None:
        """Copy row ``source``'s first ``length`` slots and its whole key visibility into row ``target``."""
        for buffer in self.keys + self.values:
            if self.seq_axis == 2:
                buffer[target, :, :length] = buffer[source, :, :length]
            else:
                buffer[target, :length] = buffer[source, :length]
        self.key_bias[target] = self.key_bias[source]

    def load_row(self, row: int, source: KVCache, visible: paddle.Tensor) -> None:
        """Put row 0 of ``source`` (a prefill of ``n`` tokens, same layout) into row ``row``: its keys and
        values at slots ``0..n-1``, and ``visible`` (bool ``[n]``) as the row's key visibility (later
        slots hidden until decode steps reveal them)."""
        n = visible.shape[0]
        for mine, theirs in zip(self.keys + self.values, source.keys + source.values):
            if self.seq_axis == 2:
                mine[row, :, :n] = theirs[0, :, :n]
            else:
                mine[row, :n] = theirs[0, :n]
        shown = paddle.concat([visible, paddle.zeros([self.max_length - n], dtype="bool")])
        bias = additive_bias(shown, dtype_str(self.key_bias.dtype))  # [max_length]
        self.key_bias[row] = bias.reshape([1, 1, self.max_length]).tile([self.key_bias.shape[1], 1, 1])

    def reorder(self, index: paddle.Tensor) -> None:
        """Keep rows ``index``: row i becomes old row ``index[i]`` (beam search), and rows not in
        ``index`` are dropped (a decode loop dropping finished rows: the batch shrinks)."""
        batch = self.key_bias.shape[0]
        self.keys = [paddle.index_select(k, index, axis=0) for k in self.keys]
        self.values = [paddle.index_select(v, index, axis=0) for v in self.values]
        self.key_bias = paddle.index_select(self.key_bias, index, axis=0)
        if self.key_bias.shape[0] != batch:
            self._index_rows()
            self._index_source = None


def sequence_bytes(num_layers: int, hidden_size: int, length: int, itemsize: int) -> int:
    """Bytes a :class:`KVCache` holds per sequence of ``length`` tokens: keys and values of every layer
    and head (under tensor parallelism each rank holds its share of the heads)."""
    return 2 * num_layers * length * hidden_size * itemsize
