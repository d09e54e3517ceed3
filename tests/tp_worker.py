"""One rank of the tensor-parallel tests (tests/test_tensor_parallel.py launches it on 2 CPU processes).

    python -m paddle.distributed.launch --nproc_per_node 2 tests/tp_worker.py -- OUT MODEL_DIR... --errors DIR...

For each model directory: load with ``tensor_parallel.from_pretrained`` and record logits, greedy,
beam and sampled generations, the rank's parameter share, and save the model gathered
into ``OUT/saved-<i>``. Each ``--errors`` directory must fail to load: its one-line
error is recorded. Results go to ``OUT/rank<r>.pkl``; the test compares them with
the single-process model.
"""
import os
import pickle
import sys
import warnings

import numpy as np
import paddle

from conftest import generation_batch

from paddle_glm import GLMError, GLMForConditionalGeneration, tensor_parallel
from paddle_glm.parallel import split_kind

GENERATE = dict(max_new_tokens=5, eos_token_id=None, bad_words_ids=[])


def generation_inputs(config):
    cfg = dict(vocab_size=config.vocab_size)
    ids, pos, mask = generation_batch(cfg, lengths=(9, 6), gen=5, mask_at=(3, 5))
    return ids, pos, mask


def run_model(path: str, save_to: str, safe: bool) -> dict:
    model = tensor_parallel.from_pretrained(GLMForConditionalGeneration, path, show_progress=False)
    tp = model.tensor_parallel
    ids, pos, mask = generation_inputs(model.config)
    prompt = ids[:, :9]  # right-padded batch of 2, context + the generated block laid out in pos/mask
    with paddle.no_grad():
        logits = model(paddle.to_tensor(ids), paddle.to_tensor(pos), paddle.to_tensor(mask)).logits.numpy()
    held = sum(int(np.prod(p.shape)) for p in model.parameters())
    full = sum(int(np.prod(p.shape)) * (tp.world if split_kind(n) else 1) for n, p in model.state_dict().items())
    result = {
        "logits": logits,
        "greedy": model.generate(prompt, pos, mask, **GENERATE).numpy(),
        "beam": model.generate(prompt, pos, mask, num_beams=3, **GENERATE).numpy(),
        "sampled_seeded": model.generate(prompt, pos, mask, do_sample=True, top_k=50, seed=11, **GENERATE).numpy(),
        "sampled_unseeded": model.generate(prompt, pos, mask, do_sample=True, **GENERATE).numpy(),
        "cache_heads": model.new_cache(1, 8).keys[0].shape[1],
        "share": held / full,
    }
    model.save_pretrained(save_to, safe_serialization=safe, max_shard_size="40KB")
    return result


def main() -> None:
    warnings.filterwarnings("ignore")
    args = sys.argv[1:]
    split = args.index("--errors") if "--errors" in args else len(args)
    out, models, bad = args[0], args[1:split], args[split + 1:]
    results = {"models": [run_model(p, os.path.join(out, f"saved-{i}"), safe=i % 2 == 0)
                          for i, p in enumerate(models)], "errors": []}
    for path in bad:
        try:
            tensor_parallel.from_pretrained(GLMForConditionalGeneration, path, show_progress=False)
            results["errors"].append(None)
        except GLMError as e:
            results["errors"].append(str(e))
    with open(os.path.join(out, f"rank{paddle.distributed.get_rank()}.pkl"), "wb") as f:
        pickle.dump(results, f)


if __name__ == "__main__":
    main()
