import json

import pytest

from paddle_glm import GLMConfig, GLMError
from paddle_glm.config import available_presets


def test_presets():
    assert {"glm-10b-chinese", "glm-large-chinese", "glm-tiny-test"} <= set(available_presets())
    big = GLMConfig.from_name("glm-10b-chinese")
    assert (big.num_layers, big.hidden_size, big.num_attention_heads, big.vocab_size, big.max_sequence_length) == \
        (48, 4096, 64, 50048, 1024)
    assert big.head_dim == 64 and big.bad_words_id == [50009]
    with pytest.raises(GLMError, match="available: .*glm-10b-chinese"):
        GLMConfig.from_name("glm-11b")


def test_alias_and_contradiction():
    assert GLMConfig(num_hidden_layers=3).num_layers == 3
    assert GLMConfig(num_layers=3).num_hidden_layers == 3
    with pytest.raises(GLMError, match="num_hidden_layers"):
        GLMConfig(num_layers=2, num_hidden_layers=3)


def test_round_trip_keeps_unknown_keys(tmp_path):
    data = json.loads((available_presets()["glm-large-chinese"]).read_text())
    data["my_custom_key"] = {"nested": [1, 2]}
    data["paddlenlp_version"] = None
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = GLMConfig.from_pretrained(str(tmp_path))
    out = tmp_path / "out"
    config.save_pretrained(str(out))
    assert json.loads((out / "config.json").read_text()) == data


def test_legacy_model_config(tmp_path):
    (tmp_path / "model_config.json").write_text(json.dumps({"num_layers": 2, "hidden_size": 32,
                                                            "num_attention_heads": 4}))
    assert GLMConfig.from_pretrained(str(tmp_path)).hidden_size == 32


@pytest.mark.parametrize("kwargs,message", [
    (dict(hidden_size=100, num_attention_heads=3), "divisible"),
    (dict(num_layers=0), "num_layers"),
    (dict(vocab_size="big"), "vocab_size"),
    (dict(attention_scale=0), "attention_scale"),
    (dict(relative_encoding=True), "relative_encoding"),
])
def test_validation(kwargs, message):
    with pytest.raises(GLMError, match=message):
        GLMConfig(**kwargs)


def test_bad_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(GLMError, match="config.json: not valid JSON"):
        GLMConfig.from_pretrained(str(tmp_path))
