"""Generation: KV cache vs recompute, parity with PaddleNLP's generate, batching, sampling, beams, streaming."""
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from conftest import TINY_A, TINY_B, generation_batch, ours_from, paddlenlp_model, random_model

from paddle_glm import GLMError
from paddle_glm.generation import GenerateOutput, TextIteratorStreamer, TextStreamer, TokenCollector

SOP = 7  # any id: stands in for <|startofpiece|> in these tokenizer-free tests
GEN = 10


@pytest.fixture(scope="module", params=[TINY_A, TINY_B], ids=["tiny_a", "tiny_b"])
def pair(request):
    ref = paddlenlp_model(request.param, seed=13, spread=True)
    return request.param, ref, ours_from(ref, request.param)


@pytest.fixture(scope="module", params=[TINY_A, TINY_B], ids=["tiny_a", "tiny_b"])
def own(request):
    """Our model alone (random weights): for the tests that need no reference."""
    return request.param, random_model(request.param, seed=13, spread=True)


def glm_inputs(cfg, lengths=(9, 6), mask_at=(3, 5), gen=GEN, seed=1):
    """Right-padded GLM generation inputs: context + sop, positions and mask laid out for ``gen`` tokens."""
    ids, pos, mask = generation_batch(cfg, lengths=lengths, gen=gen, mask_at=mask_at, seed=seed)
    L = max(lengths)
    prompt = ids[:, :L + 1].copy()
    prompt[:, L] = SOP
    return prompt, pos, mask


def paddlenlp_generate(ref, prompt, pos, mask, new, **kwargs):
    out, _ = ref.generate(input_ids=paddle.to_tensor(prompt), position_ids=paddle.to_tensor(pos),
                          attention_mask=paddle.to_tensor(mask), max_length=new, **kwargs)
    return out.numpy()


def an_eos_for(row, others=(), first=2):
    """``(step, token)``: a token ``row`` first emits at ``step >= first`` that no row in ``others``
    emits up to then, so that using it as eos stops ``row`` alone, mid-run."""
    for step in range(first, len(row) - 1):
        token = int(row[step])
        if token not in row[:step] and all(token not in other[:step + 1] for other in others):
            return step, token
    raise AssertionError(f"no usable stopping token in {row}")


# ---- 1. cache vs recompute -------------------------------------------------------------------------

@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sampling"])
def test_cache_equals_recompute(own, sample):
    cfg, ours = own
    prompt, pos, mask = glm_inputs(cfg)
    kw = dict(max_new_tokens=GEN, bad_words_ids=[], eos_token_id=None, return_dict_in_generate=True,
              do_sample=sample, top_k=20, seed=5)
    cached = ours.generate(prompt, pos, mask, **kw)
    fresh = ours.generate(prompt, pos, mask, use_cache=False, **kw)
    np.testing.assert_array_equal(cached.sequences.numpy(), fresh.sequences.numpy())
    assert len(cached.logits) == GEN
    worst = max(float((a - b).abs().max()) for a, b in zip(cached.logits, fresh.logits))
    assert worst <= 1e-4
    assert len(set(cached.sequences.numpy()[:, prompt.shape[1]:].ravel().tolist())) > 2  # not degenerate


def test_cache_equals_recompute_without_glm_inputs(own):
    """A plain causal prompt (no positions, no mask): the cache path still equals recomputation."""
    cfg, ours = own
    prompt = np.random.default_rng(3).integers(0, cfg["vocab_size"], (2, 6)).astype("int64")
    kw = dict(max_new_tokens=6, bad_words_ids=[], eos_token_id=None, return_dict_in_generate=True)
    cached, fresh = ours.generate(prompt, **kw), ours.generate(prompt, use_cache=False, **kw)
    np.testing.assert_array_equal(cached.sequences.numpy(), fresh.sequences.numpy())
    assert max(float((a - b).abs().max()) for a, b in zip(cached.logits, fresh.logits)) <= 1e-4


# ---- 2. greedy parity with PaddleNLP ---------------------------------------------------------------

def test_greedy_matches_paddlenlp_padded_batch(pair):
    cfg, ref, ours = pair
    prompt, pos, mask = glm_inputs(cfg, lengths=(9, 5), mask_at=(2, 4))
    theirs = paddlenlp_generate(ref, prompt, pos, mask, GEN, decode_strategy="greedy_search")
    got = ours.generate(prompt, pos, mask, max_new_tokens=GEN, bad_words_ids=[], eos_token_id=None)
    assert got.dtype == paddle.int64
    assert got.shape == [2, prompt.shape[1] + GEN]
    np.testing.assert_array_equal(got.numpy()[:, :prompt.shape[1]], prompt)  # full sequences, HF style
    np.testing.assert_array_equal(got.numpy()[:, prompt.shape[1]:], theirs)


def test_greedy_matches_paddlenlp_with_eos(pair):
    cfg, ref, ours = pair
    prompt, pos, mask = glm_inputs(cfg, lengths=(8, 6), mask_at=(0, 1))
    free = ours.generate(prompt, pos, mask, max_new_tokens=GEN, bad_words_ids=[], eos_token_id=None).numpy()
    n0 = prompt.shape[1]
    step, eos = an_eos_for(free[0, n0:], others=[free[1, n0:]])
    pad = cfg["vocab_size"] - 1
    theirs = paddlenlp_generate(ref, prompt, pos, mask, GEN, decode_strategy="greedy_search", eos_token_id=eos,
                                pad_token_id=pad)
    got = ours.generate(prompt, pos, mask, max_new_tokens=GEN, bad_words_ids=[], eos_token_id=eos,
                        pad_token_id=pad).numpy()
    np.testing.assert_array_equal(got[:, n0:], theirs)
    assert got[0, n0 + step] == eos and (got[0, n0 + step + 1:] == pad).all()  # row 0 stopped and was padded
    assert eos not in got[1, n0:n0 + step + 1]


def test_early_exit_when_all_rows_stop(own):
    cfg, ours = own
    prompt, pos, mask = glm_inputs(cfg, lengths=(7,), mask_at=(2,))
    free = ours.generate(prompt, pos, mask, max_new_tokens=GEN, bad_words_ids=[], eos_token_id=None).numpy()
    n0 = prompt.shape[1]
    step, eos = an_eos_for(free[0, n0:])
    got = ours.generate(prompt, pos, mask, max_new_tokens=GEN, bad_words_ids=[], eos_token_id=eos).numpy()
    assert got.shape[1] == n0 + step + 1 and got[0, -1] == eos


# ---- 3. batch vs single ---------------------------------------------------------------------------

def test_each_row_equals_row_alone(own):
    cfg, ours = own
    lengths, mask_at = (9, 5), (2, 4)
    prompt, pos, mask = glm_inputs(cfg, lengths=lengths, mask_at=mask_at)
    batch = ours.generate(prompt, pos, mask, max_new_tokens=GEN, bad_words_ids=[], eos_token_id=None).numpy()
    L = max(lengths)
    for row, (n, m) in enumerate(zip(lengths, mask_at)):
        # the same sample built on its own, with no padding at all
        ids, p, k = generation_batch(cfg, lengths=(n,), gen=GEN, mask_at=(m,), seed=1)
        single_prompt = np.concatenate([prompt[row:row + 1, :n], [[SOP]]], axis=1)
        alone = ours.generate(single_prompt, p[:, :, :n + GEN], k[:, :, :n + GEN, :n + GEN], max_new_tokens=GEN,
                              bad_words_ids=[], eos_token_id=None).numpy()
        np.testing.assert_array_equal(batch[row, L + 1:], alone[0, n + 1:])


# ---- 4. sampling ----------------------------------------------------------------------------------

def test_sampling_is_reproducible_with_seed(own):
    cfg, ours = own
    prompt, pos, mask = glm_inputs(cfg)
    kw = dict(max_new_tokens=GEN, do_sample=True, bad_words_ids=[], eos_token_id=None)
    a = ours.generate(prompt, pos, mask, seed=123, **kw).numpy()
    b = ours.generate(prompt, pos, mask, seed=123, **kw).numpy()
    c = ours.generate(prompt, pos, mask, seed=124, **kw).numpy()
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def _step_distributions(model, prompt, pos, mask, sequences):
    """Next-token probabilities at each generated step, from one separate full forward pass."""
    n0, total = prompt.shape[1], sequences.shape[1]
    logits = model(sequences[:, :-1], pos[:, :, :total - 1], mask[:, :, :total - 1, :total - 1]).logits.numpy()
    return logits[:, n0 - 1:]  # [b, steps, vocab]


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.6), (8, 0.5)])
def test_sampled_tokens_lie_in_top_k_and_nucleus(own, top_k, top_p):
    cfg, ours = own
    prompt, pos, mask = glm_inputs(cfg)
    seqs = ours.generate(prompt, pos, mask, max_new_tokens=GEN, do_sample=True, top_k=top_k, top_p=top_p, seed=7,
                         bad_words_ids=[], eos_token_id=None).numpy()
    logits = _step_distributions(ours, prompt, pos, mask, seqs)
    n0 = prompt.shape[1]
    for row in range(seqs.shape[0]):
        for step in range(GEN):
            token, step_logits = seqs[row, n0 + step], logits[row, step]
            order = np.argsort(-step_logits)
            if top_k:
                assert token in order[:top_k]
            if top_p < 1:
                p = np.exp(step_logits - step_logits.max())
                p /= p.sum()
                mass_before = np.cumsum(p[order]) - p[order]
                nucleus = order[mass_before < top_p]
                assert token in nucleus


def test_sampler_follows_the_distribution():
    from paddle_glm.generation.device_random import row_keys, uniforms
    from paddle_glm.generation.logits_process import sample_choice

    probs = np.array([0.5, 0.3, 0.2, 0.0])
    logits = paddle.to_tensor(np.log(np.maximum(probs, 1e-30))[None].repeat(4000, 0), dtype="float32")
    draws = sample_choice(logits, uniforms(row_keys([0] * 4000), paddle.zeros([1], dtype="int64"))).numpy()
    freq = np.bincount(draws, minlength=4) / draws.size
    assert freq[3] == 0
    np.testing.assert_allclose(freq[:3], probs[:3], atol=0.03)


def test_temperature_and_repetition_penalty_match_hand_computation():
    from paddle_glm.generation.logits_process import LogitsSettings, process_logits

    logits = np.array([[2.0, -1.0, 0.5, -3.0, 1.0]], dtype="float32")
    history = np.array([[1, 2, 2]], dtype="int64")  # tokens 1 and 2 were seen
    settings = LogitsSettings(temperature=0.7, repetition_penalty=1.5)
    got = process_logits(paddle.to_tensor(logits), paddle.to_tensor(history), 0, settings, sampling=True).numpy()
    expected = logits.copy()
    expected[0, 1] = -1.0 * 1.5  # negative: multiplied
    expected[0, 2] = 0.5 / 1.5  # positive: divided
    expected = (expected - expected.max()) / 0.7  # shifted to a best logit of 0, then scaled
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    probs = F.softmax(paddle.to_tensor(got), axis=-1).numpy()
    hand = np.exp(expected - expected.max())
    np.testing.assert_allclose(probs, hand / hand.sum(), rtol=1e-5)


def test_greedy_ignores_warpers():
    from paddle_glm.generation.logits_process import LogitsSettings, process_logits

    logits = paddle.to_tensor([[1.0, 3.0, 2.0]])
    out = process_logits(logits, paddle.to_tensor([[0]]), 0, LogitsSettings(temperature=0.5, top_k=1), False)
    np.testing.assert_array_equal(out.numpy(), logits.numpy())


# ---- 5. beam search -------------------------------------------------------------------------------

@pytest.mark.parametrize("num_beams", [2, 3, 4])
def test_beam_search_matches_paddlenlp(pair, num_beams):
    cfg, ref, ours = pair
    prompt, pos, mask = glm_inputs(cfg, lengths=(9, 5), mask_at=(2, 4), gen=6)
    free = ours.generate(prompt, pos, mask, max_new_tokens=6, bad_words_ids=[], eos_token_id=None).numpy()
    eos = int(free[1, prompt.shape[1] + 2])  # a token greedy emits: some beams end early
    pad = cfg["vocab_size"] - 1
    theirs = paddlenlp_generate(ref, prompt, pos, mask, 6, decode_strategy="beam_search", num_beams=num_beams,
                                eos_token_id=eos, pad_token_id=pad, length_penalty=1.0)
    got = ours.generate(prompt, pos, mask, max_new_tokens=6, num_beams=num_beams, bad_words_ids=[],
                        eos_token_id=eos, pad_token_id=pad).numpy()
    n0 = prompt.shape[1]
    width = max(got.shape[1] - n0, theirs.shape[1])
    pad_to = lambda a: np.pad(a, [(0, 0), (0, width - a.shape[1])], constant_values=pad)  # noqa: E731
    np.testing.assert_array_equal(pad_to(got[:, n0:]), pad_to(theirs))


def test_beam_search_cache_equals_recompute(own):
    cfg, ours = own
    prompt, pos, mask = glm_inputs(cfg, gen=6)
    kw = dict(max_new_tokens=6, num_beams=3, bad_words_ids=[], eos_token_id=None)
    np.testing.assert_array_equal(ours.generate(prompt, pos, mask, **kw).numpy(),
                                  ours.generate(prompt, pos, mask, use_cache=False, **kw).numpy())


def test_beam_search_finds_the_best_sequence_exhaustively():
    """With as many beams as continuations, beam search must return the most likely sequence."""
    cfg = dict(num_layers=1, hidden_size=16, num_attention_heads=2, vocab_size=6, max_sequence_length=32)
    ours = random_model(cfg, seed=2, spread=True)
    prompt = np.array([[1, 2, 3]], dtype="int64")
    steps = 3
    got = ours.generate(prompt, max_new_tokens=steps, num_beams=36, bad_words_ids=[], eos_token_id=None,
                        length_penalty=0.0, return_dict_in_generate=True)
    best, best_score = None, -np.inf
    for seq in np.ndindex(*(6,) * steps):
        full = np.concatenate([prompt, [seq]], axis=1)
        logp = F.log_softmax(ours(full[:, :-1]).logits, axis=-1).numpy()[0]
        score = sum(logp[prompt.shape[1] - 1 + i, t] for i, t in enumerate(seq))
        if score > best_score:
            best, best_score = seq, score
    assert tuple(got.sequences.numpy()[0, 3:]) == best
    assert abs(got.sequences_scores[0] - best_score) < 1e-4


# ---- 7. streaming ---------------------------------------------------------------------------------

def test_streamer_receives_exactly_the_generated_tokens(own):
    cfg, ours = own
    prompt, pos, mask = glm_inputs(cfg)
    collector = TokenCollector()
    out = ours.generate(prompt, pos, mask, max_new_tokens=GEN, bad_words_ids=[], eos_token_id=None,
                        streamer=collector).numpy()
    assert collector.ended
    np.testing.assert_array_equal(np.array(collector.steps).T, out[:, prompt.shape[1]:])


class _DigitsTokenizer:
    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(ord("a") + i % 26) for i in ids)


def test_text_streamers(own, capsys):
    cfg, ours = own
    prompt, pos, mask = glm_inputs(cfg, lengths=(7,), mask_at=(1,))
    out = ours.generate(prompt, pos, mask, max_new_tokens=GEN, bad_words_ids=[], eos_token_id=None,
                        streamer=TextStreamer(_DigitsTokenizer())).numpy()
    expected = _DigitsTokenizer().decode(out[0, prompt.shape[1]:].tolist())
    assert capsys.readouterr().out == expected + "\n"
    iterator = TextIteratorStreamer(_DigitsTokenizer(), timeout=10)
    ours.generate(prompt, pos, mask, max_new_tokens=GEN, bad_words_ids=[], eos_token_id=None, streamer=iterator)
    assert "".join(iterator) == expected


class _DropAfter(TokenCollector):
    """A streamer with ``before_step`` (the server's row-dropping hook): after ``steps`` puts, the rows in
    ``leaving`` are no longer wanted."""

    def __init__(self, batch, steps, leaving):
        super().__init__()
        self.running, self.after, self.leaving = list(range(batch)), steps, set(leaving)

    def before_step(self, state):
        keep = [len(self.steps) < self.after or row not in self.leaving for row in self.running]
        self.running = [row for row, k in zip(self.running, keep) if k]
        state.drop_rows(keep)


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "recompute"])
def test_a_row_the_streamer_drops_stops_costing_compute(own, monkeypatch, use_cache):
    """Row 0 is dropped after step 2: later steps run row 1 alone (the model sees one row), row 1's tokens
    equal row 1 generated on its own, and row 0 comes back padded from the drop on."""
    cfg, ours = own
    lengths, mask_at = (9, 5), (2, 4)
    prompt, pos, mask = glm_inputs(cfg, lengths=lengths, mask_at=mask_at)
    kw = dict(max_new_tokens=GEN, bad_words_ids=[], eos_token_id=None, pad_token_id=0, use_cache=use_cache)
    full = ours.generate(prompt, pos, mask, **kw).numpy()
    ids, p, k = generation_batch(cfg, lengths=(5,), gen=GEN, mask_at=(4,), seed=1)
    alone = ours.generate(np.concatenate([prompt[1:, :5], [[SOP]]], axis=1), p[:, :, :5 + GEN],
                          k[:, :, :5 + GEN, :5 + GEN], **kw).numpy()
    rows_fed = []
    spied = ours.decode_step if use_cache else ours.forward

    def spy(input_ids, *args, **kwargs):
        rows_fed.append(input_ids.shape[0])
        return spied(input_ids, *args, **kwargs)

    monkeypatch.setattr(ours, "decode_step" if use_cache else "forward", spy)
    streamer = _DropAfter(2, steps=2, leaving=[0])
    got = ours.generate(prompt, pos, mask, streamer=streamer, **kw).numpy()
    monkeypatch.undo()
    assert rows_fed == [2] * (1 if use_cache else 2) + [1] * (GEN - 2)  # the prefill (or step) runs both rows
    n0 = prompt.shape[1]
    assert got.shape == full.shape
    np.testing.assert_array_equal(got[1, n0:], alone[0, 6:])
    np.testing.assert_array_equal(got[0, :n0 + 2], full[0, :n0 + 2])
    assert (got[0, n0 + 2:] == 0).all()
    assert [len(s) for s in streamer.steps] == [2, 2] + [1] * (GEN - 2)  # put gets the kept rows only
    np.testing.assert_array_equal(np.array(streamer.steps[2:])[:, 0], got[1, n0 + 2:])


def test_the_loop_ends_when_the_streamer_drops_every_row(own):
    cfg, ours = own
    prompt, pos, mask = glm_inputs(cfg)
    streamer = _DropAfter(2, steps=3, leaving=[0, 1])
    got = ours.generate(prompt, pos, mask, max_new_tokens=GEN, bad_words_ids=[], eos_token_id=None, pad_token_id=0,
                        streamer=streamer).numpy()
    assert len(streamer.steps) == 3 and streamer.ended
    assert got.shape == (2, prompt.shape[1] + 3)


# ---- API details ----------------------------------------------------------------------------------

def test_max_length_counts_the_whole_sequence(own):
    cfg, ours = own
    prompt, pos, mask = glm_inputs(cfg)
    out = ours.generate(prompt, pos, mask, max_length=prompt.shape[1] + 4, bad_words_ids=[], eos_token_id=None)
    assert out.shape[1] == prompt.shape[1] + 4
    with pytest.raises(GLMError, match="not both"):
        ours.generate(prompt, pos, mask, max_length=30, max_new_tokens=3)
    with pytest.raises(GLMError, match="nothing to generate"):
        ours.generate(prompt, pos, mask, max_length=prompt.shape[1])


def test_default_length_is_what_positions_lay_out(own):
    cfg, ours = own
    prompt, pos, mask = glm_inputs(cfg, gen=4)
    out = ours.generate(prompt, pos, mask, bad_words_ids=[], eos_token_id=None)
    assert out.shape[1] == prompt.shape[1] + 4


def test_positions_and_mask_are_extended_with_glm_pattern(own):
    cfg, ours = own
    prompt, pos, mask = glm_inputs(cfg, gen=GEN)
    t = max(9, 6) + 3  # laid out for 3 new tokens only
    a = ours.generate(prompt, pos[:, :, :t], mask[:, :, :t, :t], max_new_tokens=GEN, bad_words_ids=[],
                      eos_token_id=None).numpy()
    b = ours.generate(prompt, pos, mask, max_new_tokens=GEN, bad_words_ids=[], eos_token_id=None).numpy()
    np.testing.assert_array_equal(a, b)


def test_past_the_position_table_is_a_clear_error(own):
    cfg, ours = own
    prompt, pos, mask = glm_inputs(cfg)
    with pytest.raises(GLMError, match="position table"):
        ours.generate(prompt, pos, mask, max_new_tokens=cfg["max_sequence_length"] + 5)
    ids = np.zeros((1, cfg["max_sequence_length"] - 2), dtype="int64")
    with pytest.raises(GLMError, match="position table"):
        ours.generate(ids, max_new_tokens=5)


def test_min_new_tokens_suppresses_eos(own):
    cfg, ours = own
    prompt, pos, mask = glm_inputs(cfg, lengths=(7,), mask_at=(2,))
    free = ours.generate(prompt, pos, mask, max_new_tokens=GEN, bad_words_ids=[], eos_token_id=None).numpy()
    eos = int(free[0, prompt.shape[1]])  # greedy would stop at once
    out = ours.generate(prompt, pos, mask, max_new_tokens=GEN, min_new_tokens=4, bad_words_ids=[],
                        eos_token_id=eos).numpy()
    assert eos not in out[0, prompt.shape[1]:prompt.shape[1] + 4]


def test_bad_words_default_to_config_gmask(own):
    cfg, ours = own
    prompt, pos, mask = glm_inputs(cfg)
    free = ours.generate(prompt, pos, mask, max_new_tokens=GEN, bad_words_ids=[], eos_token_id=None).numpy()
    favourite = int(np.bincount(free[:, prompt.shape[1]:].ravel()).argmax())
    ours.config.bad_words_id = [favourite]
    try:
        out = ours.generate(prompt, pos, mask, max_new_tokens=GEN, eos_token_id=None).numpy()
    finally:
        ours.config.bad_words_id = None
    assert favourite not in out[:, prompt.shape[1]:]
    multi = ours.generate(prompt, pos, mask, max_new_tokens=GEN, eos_token_id=None,
                          bad_words_ids=[[int(free[0, prompt.shape[1]]), int(free[0, prompt.shape[1] + 1])]]).numpy()
    assert multi[0, prompt.shape[1]] == free[0, prompt.shape[1]]
    assert multi[0, prompt.shape[1] + 1] != free[0, prompt.shape[1] + 1]


def test_numpy_paddle_and_hf_alias_inputs_agree(own):
    cfg, ours = own
    prompt, pos, mask = glm_inputs(cfg)
    kw = dict(max_new_tokens=4, bad_words_ids=[], eos_token_id=None)
    a = ours.generate(prompt, pos, mask, **kw).numpy()
    b = ours.generate(paddle.to_tensor(prompt), paddle.to_tensor(pos), paddle.to_tensor(mask), **kw).numpy()
    c = ours.generate(input_ids=prompt, position_ids=pos, generation_attention_mask=mask, **kw).numpy()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    with pytest.raises(GLMError, match="unexpected argument.*decode_strategy"):
        ours.generate(prompt, pos, mask, decode_strategy="greedy_search")


def test_list_inputs_and_int_sep(own):
    cfg, ours = own
    prompt, pos, mask = glm_inputs(cfg)
    kw = dict(bad_words_ids=[], eos_token_id=None)
    a = ours.generate(prompt.tolist(), pos.tolist(), mask.tolist(), **kw).numpy()
    np.testing.assert_array_equal(a, ours.generate(prompt, pos, mask, **kw).numpy())
    ids = prompt[:1, :5]
    np.testing.assert_array_equal(ours(ids, attention_mask=2).logits.numpy(),
                                  ours(ids, attention_mask=np.array([2])).logits.numpy())
    with pytest.raises(GLMError, match="position_ids"):
        ours(prompt, pos[:1, :, :prompt.shape[1]])  # one row of positions for two rows of ids


def test_return_dict(own):
    cfg, ours = own
    prompt, pos, mask = glm_inputs(cfg)
    out = ours.generate(prompt, pos, mask, max_new_tokens=3, return_dict_in_generate=True, eos_token_id=None)
    assert isinstance(out, GenerateOutput) and len(out.logits) == len(out.scores) == 3


# ---- 8. host reads ---------------------------------------------------------------------------------

_READS = ("numpy", "item", "tolist", "__bool__", "__int__", "__float__", "__index__")


def _host_reads(monkeypatch, run) -> int:
    """Device -> host reads during ``run()``: every call of a paddle.Tensor method that copies values out."""
    count = [0]
    for name in _READS:
        original = getattr(paddle.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            count[0] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(paddle.Tensor, name, counted)
    try:
        run()
    finally:
        monkeypatch.undo()
    return count[0]


@pytest.mark.parametrize("how", [dict(), dict(do_sample=True, top_k=5, top_p=0.9, temperature=0.8, seed=3),
                                 dict(num_beams=3), dict(repetition_penalty=1.3, bad_words_ids=[5, [6, 7]],
                                                         min_new_tokens=3)],
                         ids=["greedy", "sampling", "beam", "processors"])
def test_at_most_one_host_read_per_decode_step(monkeypatch, how):
    """Each extra token costs at most one device -> host read (tokens, problem flags and eos together),
    with eos set to a token never generated so that every step runs."""
    ours = random_model(TINY_A, seed=13, spread=True)
    prompt, pos, mask = glm_inputs(TINY_A, gen=24)
    never = TINY_A["vocab_size"] - 1  # banned, so never generated: as eos, every step runs
    kw = dict(how, eos_token_id=never, bad_words_ids=how.get("bad_words_ids", []) + [never])
    with paddle.no_grad():
        short = _host_reads(monkeypatch, lambda: ours.generate(prompt, pos, mask, max_new_tokens=8, **kw))
        long = _host_reads(monkeypatch, lambda: ours.generate(prompt, pos, mask, max_new_tokens=24, **kw))
    assert long - short <= 16, (short, long)
    # and a fixed number to set the run up (today 8: id and position range checks, the layout, the prefill's mask)
    assert short <= 8 + 10, short
