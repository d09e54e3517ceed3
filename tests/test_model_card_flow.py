"""The glm-10b-chinese model card's usage, in Paddle form, runs verbatim."""
import pytest

from conftest import random_model
from tokenizer_helpers import TOKENIZER_DIR

from paddle_glm import GenerationConfig, GLMChineseTokenizer
from paddle_glm.generation import TokenCollector

# A tiny random model with the real model's position table, so max_gen_length=512 fits.
CFG = dict(num_layers=1, hidden_size=32, num_attention_heads=2, vocab_size=1216, max_sequence_length=1024)
TEXT = "凯旋门位于意大利米兰市古城堡旁。1807年为纪念[MASK]而建，门高25米，顶上矗立两武士青铜古兵车铸像。"


@pytest.fixture(scope="module")
def setup():
    model = random_model(CFG, seed=5, spread=True)
    model.config.bad_words_id = [1209]
    tokenizer = GLMChineseTokenizer.from_pretrained(str(TOKENIZER_DIR))
    # what from_pretrained reads from a directory holding the tokenizer (as the real model's does)
    model.generation_config = GenerationConfig.from_model_config(model.config, tokenizer)
    return model, tokenizer


def test_model_card_usage_verbatim(setup):
    model, tokenizer = setup
    inputs = tokenizer(TEXT, return_tensors="pd")
    inputs = tokenizer.build_inputs_for_generation(inputs, max_gen_length=512)
    outputs = model.generate(**inputs, max_length=512, eos_token_id=tokenizer.eop_token_id)
    text = tokenizer.decode(outputs[0].tolist())
    assert text.startswith("[CLS]" + TEXT + "<|endoftext|><|startofpiece|>")
    assert outputs.shape[1] <= 512
    generated = outputs[0, inputs["input_ids"].shape[1]:].numpy()
    assert (generated < tokenizer.vocab_size).all()


def test_padded_vocabulary_rows_are_never_generated(setup):
    """fill_blanks bans the embedding rows beyond the tokenizer (the real model pads 50010 -> 50048)."""
    from paddle_glm import fill_blanks

    model, tokenizer = setup
    assert model.config.vocab_size > tokenizer.vocab_size
    weight = model.glm.word_embeddings.weight
    original = weight.numpy()
    boosted = original.copy()
    boosted[tokenizer.vocab_size:] *= 50  # make the unusable rows the likeliest
    weight.set_value(boosted)
    try:
        collector = TokenCollector()
        fill_blanks(model, tokenizer, TEXT, max_new_tokens=5, streamer=collector)
        inputs = tokenizer.build_inputs_for_generation(tokenizer(TEXT, return_tensors="pd"), max_gen_length=8)
        # default bad words: [gMASK] and the rows the tokenizer lacks
        default = model.generate(**inputs, max_new_tokens=5)
        unguarded = model.generate(**inputs, max_new_tokens=5, bad_words_ids=[])
    finally:
        weight.set_value(original)
    assert collector.steps and all(t[0] < tokenizer.vocab_size for t in collector.steps)
    assert collector.ended
    n0 = inputs["input_ids"].shape[1]
    assert (default[0, n0:].numpy() < tokenizer.vocab_size).all()
    assert (unguarded[0, n0:].numpy() >= tokenizer.vocab_size).any()  # the guard is what prevents them
