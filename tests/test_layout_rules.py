"""Each layout rule has one owner: forward, generate, multiple choice and the server apply the same
default positions, 2-D promotion, 0/1 mask check, position-table check and int conversion."""
import numpy as np
import paddle
import pytest

from conftest import TINY_A, random_model

from paddle_glm import GLMError, GLMForMultipleChoice
from paddle_glm.glm_layout import default_positions, extend_positions
from paddle_glm.masks import build_attention_mask

ROWS = TINY_A["max_sequence_length"] + 1  # the block-position row
TABLE = rf"the model's position table \(positions 0..{ROWS - 1}\)"
NO_BLOCKS = dict(TINY_A, block_position_encoding=False)


@pytest.fixture(scope="module")
def model():
    return random_model(TINY_A, seed=3)


@pytest.fixture(scope="module")
def no_blocks():
    return random_model(NO_BLOCKS, seed=4)


def ids(*rows):
    return np.array(rows, dtype="int64")


def test_default_positions_are_0_to_s_and_zeros(model):
    expected = np.stack([np.broadcast_to(np.arange(5), [2, 5]), np.zeros([2, 5], "int64")], axis=1)  # [b, 2, s]
    np.testing.assert_array_equal(default_positions(2, 5).numpy(), expected)
    np.testing.assert_array_equal(extend_positions(None, 2, 5).numpy(), expected)
    tokens = ids([3, 4, 5, 6, 7], [8, 9, 10, 11, 12])
    np.testing.assert_array_equal(model(tokens).logits.numpy(), model(tokens, expected).logits.numpy())


def test_2d_positions_of_a_model_without_block_positions(no_blocks):
    tokens, positions = ids([3, 4, 5, 6]), np.array([[0, 1, 2, 2]], dtype="int64")
    full = np.stack([positions, np.zeros_like(positions)], axis=1)  # [1, 2, 4]
    np.testing.assert_array_equal(no_blocks(tokens, positions).logits.numpy(), no_blocks(tokens, full).logits.numpy())
    kept = dict(max_new_tokens=3, eos_token_id=None)
    np.testing.assert_array_equal(no_blocks.generate(tokens, positions, **kept).numpy(),
                                  no_blocks.generate(tokens, full, **kept).numpy())


def test_one_mask_check_for_forward_and_generate(model):
    half = np.full([1, 1, 3, 3], 0.5, dtype="float32")
    with pytest.raises(GLMError) as built:
        build_attention_mask(half, 1, 3, 3)
    with pytest.raises(GLMError) as generated:
        model.generate(ids([3, 4, 5]), attention_mask=half, max_new_tokens=2)
    assert str(built.value) == str(generated.value)
    assert "only 0 and 1" in str(built.value) and "0/1" in str(built.value)


@pytest.mark.parametrize("bad", [[[3, 4], [5]], paddle.to_tensor([[True, False]])], ids=["ragged", "bool"])
def test_one_int_conversion_for_forward_and_generate(model, bad):
    with pytest.raises(GLMError) as forward:
        model(bad)
    with pytest.raises(GLMError) as generate:
        model.generate(bad, max_new_tokens=2)
    assert str(forward.value) == str(generate.value)
    assert str(forward.value).startswith("input_ids: expected integer ids")


def test_every_position_message_names_the_table_alike(model):
    with pytest.raises(GLMError, match=rf"^position_ids: value {ROWS} is outside \[0, {ROWS}\), {TABLE}"):
        model(ids([3, 4]), np.array([[[0, ROWS], [0, 0]]], dtype="int64"))
    with pytest.raises(GLMError, match=rf"^a {ROWS + 1}-token input needs position {ROWS}, past {TABLE}"):
        model(np.full([1, ROWS + 1], 3, dtype="int64"))
    with pytest.raises(GLMError, match=rf"^generating 200 new tokens after a 3-token prompt needs position 201, "
                                       rf"past {TABLE}: ask for fewer new tokens"):
        model.generate(ids([3, 4, 5]), max_new_tokens=200)
    scorer = GLMForMultipleChoice(model.config)
    with pytest.raises(GLMError, match=rf"^position_ids: value {ROWS + 5} is outside \[0, {ROWS}\), {TABLE}"):
        scorer(ids([3, 4]), np.array([[[0, ROWS + 5], [0, 1]]], dtype="int64"), None, [[[4]]], [[[1]]])


@pytest.mark.parametrize("new_tokens", [1, 5])
def test_a_prompt_past_the_table_is_too_long_by_itself(model, new_tokens):
    """Whatever the number of new tokens, the prompt is named as the problem (GLM's layout: a blank's
    span takes the blank's position, so only the prompt's own positions can run past the table)."""
    length = ROWS + 10
    tokens = np.full([1, length], 3, dtype="int64")
    positions = np.stack([np.arange(length), np.zeros(length, "int64")])[None]  # [1, 2, length]
    with pytest.raises(GLMError, match=rf"^the prompt alone is too long: a {length}-token prompt needs position "
                                       rf"{length - 1}, past {TABLE}: shorten the text"):
        model.generate(tokens, positions, max_new_tokens=new_tokens)


