"""Mask forms, the attention backend dispatch and the FlashMask encoding (the CUDA path's decisions, on CPU)."""
import numpy as np
import paddle
import pytest

from conftest import generation_batch

from paddle_glm import GLMError
from paddle_glm.attention import (
    BHSD,
    BSHD,
    FLASHMASK,
    MATH,
    SDPA,
    cache_layout,
    flashmask_indices,
    prepare_mask,
    select_backend,
)
from paddle_glm.masks import build_attention_mask


def flashmask_to_dense(startend_row_indices, query_len):
    """Paddle 3.3's documented ``flashmask_to_densemask`` (F.flashmask_attention's docstring), causal=False,
    written with numpy: True where attention is allowed."""
    indices = startend_row_indices.numpy()
    bz, num_head, seq_len, bound_num = indices.shape
    assert seq_len == query_len  # the documented converter is for square masks
    m = np.zeros((bz, num_head, seq_len, seq_len))
    has_end = bound_num == 4
    for bi in range(bz):
        for hi in range(num_head):
            for j in range(seq_len):
                downstart = indices[bi, hi, j, 0]
                if has_end:
                    m[bi, hi, downstart:indices[bi, hi, j, 1], j] = -np.inf
                    m[bi, hi, indices[bi, hi, j, 2]:indices[bi, hi, j, 3], j] = -np.inf
                else:
                    m[bi, hi, downstart:, j] = -np.inf
                    m[bi, hi, :indices[bi, hi, j, 1], j] = -np.inf
    return m == 0


def _np(mask):
    return mask.numpy().astype(int)


def test_none_is_causal():
    got = _np(build_attention_mask(None, 2, 5, 5))
    np.testing.assert_array_equal(got, np.tril(np.ones((2, 1, 5, 5), int)))


def test_sep_is_prefix_lm():
    got = _np(build_attention_mask(paddle.to_tensor([3, 0]), 2, 5, 5))
    expected = np.tril(np.ones((2, 1, 5, 5), int))
    expected[0, 0, :, :3] = 1
    np.testing.assert_array_equal(got, expected)


def test_empty_rows_are_opened():
    mask = np.tril(np.ones((1, 1, 4, 4), int))
    mask[0, 0, 1] = 0
    got = _np(build_attention_mask(mask, 1, 4, 4))
    assert got[0, 0, 1].all() and (got[0, 0, [0, 2, 3]] == mask[0, 0, [0, 2, 3]]).all()


@pytest.mark.parametrize("bad", [np.ones((2, 5)), np.ones((3,)), np.ones((2, 1, 4, 5))])
def test_bad_masks_are_explained(bad):
    with pytest.raises(ValueError, match="attention_mask"):
        build_attention_mask(bad, 2, 5, 5)


@pytest.mark.parametrize("case,expected", [
    (("cpu", "float32", 64, "intervals", 300), MATH),
    (("cpu", "float16", 64, "none", 1), MATH),
    (("gpu", "float16", 64, "intervals", 300), FLASHMASK),
    (("gpu", "bfloat16", 128, "intervals", 300), FLASHMASK),
    (("gpu", "float16", 64, "intervals", 1), SDPA),  # decode step: one query row
    (("gpu", "float16", 64, "none", 1), SDPA),
    (("gpu", "float16", 64, "dense", 300), SDPA),
    (("gpu", "float32", 64, "intervals", 300), SDPA),  # flash kernels need half precision
    (("gpu", "float16", 60, "intervals", 300), SDPA),  # head_dim not a multiple of 8
    (("gpu", "float16", 512, "intervals", 300), SDPA),  # head_dim > 256
])
def test_select_backend(case, expected):
    assert select_backend(*case) == expected


def test_select_backend_old_gpu():
    assert select_backend("gpu", "float16", 64, "intervals", 300, cuda_capability=75) == SDPA


def test_cache_layouts():
    assert cache_layout(MATH) == BHSD and cache_layout(SDPA) == BSHD and cache_layout(FLASHMASK) == BSHD


@pytest.mark.parametrize("lengths,gen", [((9, 6), 5), ((4,), 1), ((7, 7, 3), 8)])
def test_flashmask_encodes_glm_generation_mask(lengths, gen):
    cfg = dict(vocab_size=10)
    _, _, mask = generation_batch(cfg, lengths=lengths, gen=gen, mask_at=[0] * len(lengths))
    dense = build_attention_mask(mask, len(lengths), mask.shape[2], mask.shape[3])
    indices = flashmask_indices(dense)
    assert indices.dtype == paddle.int32 and list(indices.shape) == [len(lengths), 1, mask.shape[3], 2]
    np.testing.assert_array_equal(flashmask_to_dense(indices, mask.shape[2]), dense.numpy())
    S, L = mask.shape[2], max(lengths)
    enc = indices.numpy()[:, 0]
    for r, n in enumerate(lengths):
        # flashmask_indices' documented encoding: context [S, 0], padding [0, 0], generated column j [S, j]
        assert (enc[r, :n] == [S, 0]).all()
        assert (enc[r, n:L] == [0, 0]).all()
        for j in range(L, S):
            assert (enc[r, j] == [S, j]).all()


def test_flashmask_rejects_non_interval_columns():
    mask = np.ones((1, 1, 4, 4), int)
    mask[0, 0, 1, 0] = 0  # column 0 visible to rows 0, 2, 3: not one range
    assert flashmask_indices(paddle.to_tensor(mask).astype("bool")) is None


def test_flashmask_causal_and_sep_masks():
    causal = build_attention_mask(None, 2, 6, 6)
    np.testing.assert_array_equal(flashmask_to_dense(flashmask_indices(causal), 6), causal.numpy())
    sep = build_attention_mask(np.array([3, 5]), 2, 7, 7)
    np.testing.assert_array_equal(flashmask_to_dense(flashmask_indices(sep), 7), sep.numpy())


def test_forcing_flashmask_on_a_mask_it_cannot_express_is_an_error():
    mask = np.ones((1, 1, 4, 4), int)
    mask[0, 0, 1, 0] = 0
    with pytest.raises(GLMError, match="FlashMask"):
        prepare_mask(paddle.to_tensor(mask).astype("bool"), "float16", 64, backend=FLASHMASK)


def test_int_sep_and_rejected_masks():
    np.testing.assert_array_equal(_np(build_attention_mask(2, 1, 4, 4))[0, 0, 0], [1, 1, 0, 0])
    additive = np.where(np.tril(np.ones((1, 1, 4, 4))) > 0, 0.0, -10000.0)
    with pytest.raises(ValueError, match="0/1"):
        build_attention_mask(additive, 1, 4, 4)
    with pytest.raises(ValueError, match=r"attention_mask: expected \[1, 1, 2, 2\] .* got \[1, 1, 2, 3\]"):
        build_attention_mask(np.ones((1, 1, 2, 3)), 1, 2, 2)
