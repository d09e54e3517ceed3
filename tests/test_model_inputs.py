"""forward's input checks: ids outside the embedding tables and non-integer ids are one-line errors."""
import numpy as np
import paddle
import pytest

from conftest import TINY_A, random_model

from paddle_glm import GLMError

VOCAB, POSITIONS = TINY_A["vocab_size"], TINY_A["max_sequence_length"] + 1  # + 1: the block-position row


@pytest.fixture(scope="module")
def model():
    return random_model(TINY_A, seed=2)


def ids(*values):
    return np.array([values], dtype="int64")


def positions(row0, row1):
    return np.array([[row0, row1]], dtype="int64")  # [1, 2, s]


@pytest.mark.parametrize("bad", [VOCAB, -1, 10 ** 6])
def test_input_ids_outside_the_vocabulary(model, bad):
    with pytest.raises(GLMError, match=rf"^input_ids: value {bad} is outside \[0, {VOCAB}\)"):
        model(ids(3, bad, 4))


@pytest.mark.parametrize("row", [0, 1])
@pytest.mark.parametrize("bad", [POSITIONS, -2])
def test_positions_outside_the_position_table(model, row, bad):
    pos = positions([0, 1, 2], [0, 0, 1])
    pos[0, row, 2] = bad
    with pytest.raises(GLMError, match=rf"^position_ids: value {bad} is outside \[0, {POSITIONS}\)"):
        model(ids(3, 4, 5), pos)


@pytest.mark.parametrize("make", [
    lambda: np.array([[3.0, 4.7]]),
    lambda: [[3.0, 4.7]],
    lambda: paddle.to_tensor([[3.0, 4.7]]),
], ids=["numpy", "list", "paddle"])
def test_float_ids_are_refused_not_truncated(model, make):
    with pytest.raises(GLMError, match="^input_ids: expected integer ids, got float"):
        model(make())
    with pytest.raises(GLMError, match="^position_ids: expected integer ids, got float"):
        model(ids(3, 4), make())


def test_the_edges_and_other_integer_types_are_accepted(model):
    expected = model(ids(0, VOCAB - 1), positions([0, POSITIONS - 1], [POSITIONS - 1, 0])).logits.numpy()
    for given in (paddle.to_tensor([[0, VOCAB - 1]], dtype="int32"), [[0, VOCAB - 1]],
                  np.array([[0, VOCAB - 1]], dtype="int32")):
        got = model(given, positions([0, POSITIONS - 1], [POSITIONS - 1, 0])).logits.numpy()
        np.testing.assert_array_equal(got, expected)
    assert np.isfinite(expected).all()
