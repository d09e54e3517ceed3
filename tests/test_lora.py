"""LoRA adapters: only adapters train; files interchange with PaddleNLP 2.8.1's peft; merging."""
import json

import numpy as np
import paddle
import pytest

from conftest import generation_batch, logits_of, ours_from, paddlenlp_model

from paddle_glm import GLMError
from paddle_glm.lora import CONFIG_FILE, WEIGHTS_FILE, LoRAConfig, apply_lora, load_adapter, merge_lora, save_adapter

CFG = dict(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=300, max_sequence_length=64)
TARGETS = [".*query_key_value.*", ".*dense_h_to_4h.*"]


def _randomise_adapters(model, seed):
    """Non-zero lora_B (a fresh adapter is the identity), so the comparisons mean something."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if name.endswith(("lora_A", "lora_B")):
            p.set_value(rng.normal(0, 0.3, p.shape).astype("float32"))


@pytest.fixture(scope="module")
def batch():
    return generation_batch(CFG, lengths=(9, 6), mask_at=(3, 5))


def test_only_adapters_get_gradients(batch):
    ids, pos, mask = batch
    paddle.seed(0)
    model = apply_lora(ours_from(paddlenlp_model(CFG), CFG), LoRAConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    model.train()
    model(ids, pos, mask, labels=paddle.to_tensor(ids)).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and float(p.grad.abs().max()) > 0}
    adapters = {n for n, _ in model.named_parameters() if n.endswith(("lora_A", "lora_B"))}
    assert len(adapters) == 2 * 2 * CFG["num_layers"]
    # lora_A starts with a zero gradient (lora_B is zero), lora_B gets one
    assert with_grad and with_grad <= adapters and {n for n in adapters if n.endswith("lora_B")} <= with_grad
    assert all(p.stop_gradient for n, p in model.named_parameters() if n not in adapters)


def test_our_adapter_loads_in_paddlenlp(batch, tmp_path):
    peft = pytest.importorskip("paddlenlp.peft")
    ids, pos, mask = batch
    ref = paddlenlp_model(CFG, seed=2)
    ours = apply_lora(ours_from(ref, CFG), LoRAConfig(r=4, lora_alpha=16, target_modules=TARGETS))
    _randomise_adapters(ours, 1)
    save_adapter(ours, str(tmp_path))
    saved = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert saved["r"] == 4 and saved["scaling"] == 4.0 and (tmp_path / WEIGHTS_FILE).is_file()
    theirs = peft.LoRAModel.from_pretrained(ref, str(tmp_path))
    theirs.eval()
    ours.eval()
    expected = logits_of(ours, ids, pos, mask)
    got = theirs(paddle.to_tensor(ids), paddle.to_tensor(pos), paddle.to_tensor(mask), return_dict=True).logits.numpy()
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
    assert np.abs(expected - logits_of(ours_from(paddlenlp_model(CFG, seed=2), CFG), ids, pos, mask)).max() > 1e-2


def test_paddlenlp_adapter_loads_here(batch, tmp_path):
    peft = pytest.importorskip("paddlenlp.peft")
    ids, pos, mask = batch
    base = paddlenlp_model(CFG, seed=4)
    ours = ours_from(base, CFG)
    theirs = peft.LoRAModel(base, peft.LoRAConfig(r=2, lora_alpha=4, target_modules=[".*query_key_value.*"]))
    _randomise_adapters(theirs.model, 3)
    theirs.save_pretrained(str(tmp_path))
    theirs.eval()
    expected = theirs(paddle.to_tensor(ids), paddle.to_tensor(pos), paddle.to_tensor(mask),
                      return_dict=True).logits.numpy()
    load_adapter(ours, str(tmp_path))
    ours.eval()
    got = logits_of(ours, ids, pos, mask)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
    merged = logits_of(merge_lora(ours), ids, pos, mask)
    assert not any("lora" in name for name in ours.state_dict())
    assert np.abs(merged - got).max() <= 1e-5 * np.abs(got).max()


def test_bad_adapter_files(tmp_path):
    model = ours_from(paddlenlp_model(CFG), CFG)
    with pytest.raises(GLMError, match="no LoRA config"):
        load_adapter(model, str(tmp_path))
    with pytest.raises(GLMError, match="match no Linear"):
        apply_lora(model, LoRAConfig(target_modules=["nothing"]))
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"r": 4, "rslora": True}))
    with pytest.raises(GLMError, match="rslora"):
        load_adapter(model, str(tmp_path))
