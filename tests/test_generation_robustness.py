"""Bad or absurd generation arguments give one clear error, fast and without allocating (issue 14, generation side).

Needs neither PaddleNLP nor torch: tiny random models of our own.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import paddle
import pytest

from tokenizer_helpers import TOKENIZER_DIR

from paddle_glm import GenerationConfig, GLMChineseTokenizer, GLMConfig, GLMError, GLMForConditionalGeneration
from paddle_glm.glm_layout import part_a_b_mask, part_b_sequence
from paddle_glm.infilling import fill_blanks
from paddle_glm.multiple_choice import GLMForMultipleChoice

CFG = dict(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=1210, max_sequence_length=64,
           bad_words_id=[1209])
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tokenizer():
    return GLMChineseTokenizer.from_pretrained(str(TOKENIZER_DIR))


@pytest.fixture(scope="module")
def model():
    paddle.seed(3)
    return GLMForConditionalGeneration(GLMConfig(**CFG)).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model, tokenizer):
    directory = tmp_path_factory.mktemp("robust_model")
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def inputs(tokenizer):
    batch = tokenizer("今天天气[MASK]。", return_tensors="np")
    return tokenizer.build_inputs_for_generation(batch, max_gen_length=4)


def run_python(code: str):
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def run_cli(*args, stdin=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "paddle_glm", *args], capture_output=True, text=True, input=stdin,
                          env=env, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def error_lines(stderr):
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.strip().splitlines() if line.startswith("paddle-glm")]


def assert_one_line_error(code, stderr, *needles):
    assert code != 0
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---- item 3: absurd lengths are refused before anything of that length is allocated ---------------

MEASURE = textwrap.dedent('''
    import json, time
    import numpy as np
    from paddle_glm import GLMChineseTokenizer, GLMError, GLMForConditionalGeneration, fill_blanks
    from paddle_glm.cli import main

    def status_mb(key):  # VmRSS: resident memory now; VmHWM: its peak since the last reset
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024

    def reset_peak():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    model = GLMForConditionalGeneration.from_pretrained({model_dir!r}, show_progress=False)
    tok = GLMChineseTokenizer.from_pretrained({model_dir!r})
    inputs = tok.build_inputs_for_generation(tok("今天[MASK]。", return_tensors="pd"), max_gen_length=4)
    model.generate(**inputs, max_new_tokens=2)  # warm up Paddle's kernels
    cases = {{
        "generate": lambda: model.generate(**inputs, max_new_tokens=10**9),
        "generate_causal": lambda: model.generate(np.array([[5, 6, 7]]), max_new_tokens=10**9),
        "fill": lambda: fill_blanks(model, tok, "今天[MASK]。", max_new_tokens=10**9),
        "cli": lambda: main(["generate", {model_dir!r}, "今天[MASK]。", "--max-new-tokens", str(10**9)]),
    }}
    out = {{}}
    for name, call in cases.items():
        reset_peak()
        before, start = status_mb("VmRSS"), time.perf_counter()
        try:
            result = call()
            message = "exit code %d" % result
        except GLMError as e:
            message = str(e)
        out[name] = dict(seconds=time.perf_counter() - start, peak_growth_mb=status_mb("VmHWM") - before,
                         message=message)
    print(json.dumps(out))
''')


def test_huge_max_new_tokens_is_refused_at_once_without_memory(model_dir):
    results = json.loads(run_python(MEASURE.format(model_dir=str(model_dir))).strip().splitlines()[-1])
    print(results)
    for name, result in results.items():
        assert result["seconds"] < 1.0, (name, result)
        assert result["peak_growth_mb"] < 50, (name, result)
        if name == "cli":
            assert result["message"] == "exit code 2", result
        else:
            assert "past the model's position table (positions 0..64)" in result["message"], result


def test_cli_huge_max_new_tokens_is_one_line(model_dir):
    for command in ("generate", "fill"):
        assert_one_line_error(*run_cli(command, str(model_dir), "今天[MASK]。", "--max-new-tokens", str(10**9))[::2],
                              "position table")


# ---- item 8: silent garbage ------------------------------------------------------------------------

@pytest.mark.parametrize("settings, needle", [
    (dict(do_sample=True, temperature=float("inf")), "temperature"),
    (dict(do_sample=True, temperature=1e-40), "temperature"),  # denormal in float32
    (dict(do_sample=True, temperature=0.0), "temperature"),
    (dict(do_sample=True, temperature=float("nan")), "temperature"),
    (dict(do_sample=True, top_p=0.0), "top_p"),
    (dict(do_sample=True, top_p=1.5), "top_p"),
    (dict(do_sample=True, top_k=-1), "top_k"),
    (dict(do_sample=True, top_k=2.5), "top_k"),
    (dict(seed=-1, do_sample=True), "seed"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(bad_words_ids="1209"), "bad_words_ids"),
    (dict(num_beams=2, do_sample=True), "beam sampling"),
])
def test_bad_settings_are_refused(model, inputs, settings, needle):
    with pytest.raises(GLMError, match=needle):
        model.generate(**inputs, **settings)


def test_tiny_temperature_still_samples_the_best_token(model, inputs):
    """A small but valid temperature does not overflow: it samples (almost) greedily."""
    kw = dict(max_new_tokens=4, bad_words_ids=[], eos_token_id=None)
    greedy = model.generate(**inputs, **kw).numpy()
    cold = model.generate(**inputs, do_sample=True, temperature=1e-30, seed=0, **kw).numpy()
    np.testing.assert_array_equal(cold, greedy)


def test_banning_the_whole_vocabulary_is_an_error(model, inputs):
    with pytest.raises(GLMError, match="step 0: every token is banned"):
        model.generate(**inputs, bad_words_ids=list(range(CFG["vocab_size"])))
    everything_but_eos = [t for t in range(CFG["vocab_size"]) if t != 5]
    with pytest.raises(GLMError, match="step 0: every token is banned"):
        model.generate(**inputs, bad_words_ids=everything_but_eos, eos_token_id=5, min_new_tokens=2)


def test_non_finite_logits_name_the_step(inputs):
    paddle.seed(4)
    broken = GLMForConditionalGeneration(GLMConfig(**CFG)).eval()
    weight = broken.glm.transformer.final_layernorm.weight
    weight.set_value(np.full(weight.shape, np.nan, dtype="float32"))
    for kw in (dict(), dict(num_beams=2), dict(do_sample=True, seed=1)):
        with pytest.raises(GLMError, match="step 0: .*not finite"):
            broken.generate(**inputs, max_new_tokens=3, **kw)


def test_float_ids_and_non_binary_masks_are_refused(model, inputs):
    ids, pos, mask = inputs["input_ids"], inputs["position_ids"], inputs["attention_mask"]
    for bad_ids in (ids.astype("float32"), [[float(t) for t in ids[0]]],
                    paddle.to_tensor(ids, dtype="float32")):
        with pytest.raises(GLMError, match="input_ids: expected integer ids"):
            model.generate(bad_ids, pos, mask, max_new_tokens=2)
    with pytest.raises(GLMError, match="position_ids: expected integer ids"):
        model.generate(ids, pos + 0.5, mask, max_new_tokens=2)
    for bad_mask in (mask * 0.5, paddle.to_tensor(mask * 0.5), mask * 2):
        with pytest.raises(GLMError, match="attention_mask: .*only 0 and 1"):
            model.generate(ids, pos, bad_mask, max_new_tokens=2)
    model.generate(ids, pos, mask.astype("float32"), max_new_tokens=2)  # 0./1. floats are a valid mask


# ---- item 11: fill_blanks ---------------------------------------------------------------------------

def test_fill_blanks_refuses_what_it_cannot_return(model, tokenizer):
    with pytest.raises(GLMError, match="return_dict_in_generate is not supported"):
        fill_blanks(model, tokenizer, "今天[MASK]。", return_dict_in_generate=True)
    with pytest.raises(GLMError, match="expected one text"):
        fill_blanks(model, tokenizer, ["今天[MASK]。", "明天[MASK]。"])
    with pytest.raises(GLMError, match="unexpected argument.*decode_strategy"):
        fill_blanks(model, tokenizer, "今天[MASK]。", decode_strategy="sampling")


# ---- item 9: multiple choice past the position table, CLI flags --------------------------------------

def test_multiple_choice_past_the_position_table(tokenizer):
    paddle.seed(5)
    scorer = GLMForMultipleChoice(GLMConfig(**CFG)).eval()
    batch = tokenizer(["天" * 70 + "[MASK]。"], return_tensors="np")
    inputs = tokenizer.build_inputs_for_multiple_choice(batch, [["北京", "上海"]])
    table = r"the model's position table \(positions 0..64\)"
    with pytest.raises(GLMError, match=rf"^position_ids: value 75 is outside \[0, 65\), {table}"):
        scorer(**inputs)


@pytest.mark.parametrize("flag, value", [("--seed", "-1"), ("--max-new-tokens", "0"), ("--temperature", "inf"),
                                         ("--top-p", "0")])
def test_cli_bad_generation_flags_name_the_flag(model_dir, flag, value):
    for command in ("generate", "fill"):
        assert_one_line_error(*run_cli(command, str(model_dir), "今天[MASK]。", flag, value, "--do-sample")[::2],
                              f"error: {flag}: ")


def test_interactive_generate_goes_on_after_a_bad_line(model_dir):
    stdin = "第一句[MASK]\n" + "天" * 80 + "[MASK]\n第三句[MASK]\n"
    code, out, err = run_cli("generate", str(model_dir), "--max-new-tokens", "3", stdin=stdin)
    lines = error_lines(err)
    assert len(lines) == 1 and "line 2" in lines[0] and "position table" in lines[0], err
    assert err.count("tokens/s") == 2  # lines 1 and 3 were generated
    assert code == 1


# ---- GenerationConfig ------------------------------------------------------------------------------

def test_generation_config_round_trip_and_overrides(model, inputs, tmp_path):
    config = GenerationConfig(max_new_tokens=3, do_sample=True, top_k=5, seed=7, bad_words_ids=[], eos_token_id=None)
    config.save_pretrained(str(tmp_path))
    assert json.loads((tmp_path / "generation_config.json").read_text()) == dict(
        max_new_tokens=3, do_sample=True, top_k=5, seed=7, bad_words_ids=[])
    loaded = GenerationConfig.from_pretrained(str(tmp_path))
    assert loaded == config
    by_config = model.generate(**inputs, generation_config=loaded).numpy()
    by_keywords = model.generate(**inputs, max_new_tokens=3, do_sample=True, top_k=5, seed=7, bad_words_ids=[],
                                 eos_token_id=None).numpy()
    np.testing.assert_array_equal(by_config, by_keywords)
    longer = model.generate(**inputs, generation_config=loaded, max_length=inputs["input_ids"].shape[1] + 5)
    assert longer.shape[1] == inputs["input_ids"].shape[1] + 5  # a keyword length replaces the config's
    (tmp_path / "generation_config.json").write_text(json.dumps(dict(top_k=5, decode_strategy="sampling",
                                                                     transformers_version="4.30")))
    with pytest.raises(GLMError, match="unknown generation setting.*decode_strategy"):
        GenerationConfig.from_pretrained(str(tmp_path))
    # what PaddleNLP 2.8.1's save_pretrained writes for GLM, derived from config.json: no user setting
    derived = dict(_from_model_config=True, max_length=20, no_repeat_ngram_size=0, use_cache=False)
    (tmp_path / "generation_config.json").write_text(json.dumps(derived))
    assert GenerationConfig.from_pretrained(str(tmp_path)) == GenerationConfig()


def test_eos_comes_from_the_tokenizer_or_the_config(model_dir, tokenizer, tmp_path):
    loaded = GLMForConditionalGeneration.from_pretrained(str(model_dir), show_progress=False)
    assert loaded.generation_config.eos_token_id == tokenizer.eop_token_id
    assert GenerationConfig.from_model_config(GLMConfig(**CFG, eop_token_id=7)).eos_token_id == 7
    assert GenerationConfig.from_model_config(GLMConfig(**CFG)).eos_token_id is None  # not bad_words_id - 2
    (tmp_path / "generation_config.json").write_text(json.dumps(dict(eos_token_id=11, max_new_tokens=2)))
    assert GenerationConfig.from_pretrained(str(tmp_path)).eos_token_id == 11


def test_load_save_load_keeps_every_generation_setting(model_dir, tokenizer, tmp_path):
    """save_pretrained writes generation_config.json: a load -> save -> load keeps every setting."""
    loaded = GLMForConditionalGeneration.from_pretrained(str(model_dir), show_progress=False)
    # the defaults, decided once: [gMASK] and the rows the tokenizer has no token for, eos = <|endofpiece|>
    assert loaded.generation_config.bad_words_ids == [1209] + list(range(tokenizer.vocab_size, CFG["vocab_size"]))
    assert loaded.generation_config.resolved(loaded.config).bad_words_ids == loaded.generation_config.bad_words_ids
    assert loaded.generation_config.eos_token_id == tokenizer.eop_token_id
    loaded.generation_config = loaded.generation_config.updated(
        max_new_tokens=9, do_sample=True, temperature=0.5, top_k=3, top_p=0.8, repetition_penalty=1.2, seed=4,
        min_new_tokens=2, bad_words_ids=[[5, 6], 7], eos_token_id=11, pad_token_id=12, use_cache=False)
    loaded.save_pretrained(str(tmp_path / "saved"))
    again = GLMForConditionalGeneration.from_pretrained(str(tmp_path / "saved"), show_progress=False)
    assert again.generation_config == loaded.generation_config


def test_without_a_tokenizer_only_the_configs_bad_words_are_banned():
    """[gMASK] (bad_words_id) need not be the last id: the ids after it are real tokens, not banned."""
    config = GenerationConfig().resolved(GLMConfig(**dict(CFG, bad_words_id=[3])))
    assert config.bad_words_ids == [3]


def test_multi_span_layout_by_hand():
    """Part A of 4 ids with blanks at 1 and 2, two spans: positions, block positions, labels and mask."""
    sequence = part_b_sequence([10, 11, 12, 13], [(1, [20, 21]), (2, [])], sop_token_id=8, eop_token_id=9)
    assert sequence["input_ids"].tolist() == [10, 11, 12, 13, 8, 20, 21, 8]
    assert sequence["position_ids"].tolist() == [[0, 1, 2, 3, 1, 1, 1, 2], [0, 0, 0, 0, 1, 2, 3, 1]]
    assert sequence["labels"].tolist() == [0, 0, 0, 0, 20, 21, 9, 9]
    expected = np.zeros((8, 8), dtype="int64")
    for i in range(8):
        expected[i, :4] = 1  # Part A is visible to every token
        if i >= 4:
            expected[i, 4:i + 1] = 1  # Part B is causal
    np.testing.assert_array_equal(part_a_b_mask(4, 8), expected)
