"""Peak RSS of ``from_pretrained`` in a plain process, or as one rank of a launched job (then tensor-parallel).

    python tests/tp_memory_worker.py OUT MODEL_DIR
    python -m paddle.distributed.launch --nproc_per_node 2 tests/tp_memory_worker.py -- OUT MODEL_DIR

Writes ``OUT/<rank or single>.json``: RSS after imports (and the job's set-up), peak RSS, bytes held.
"""
import json
import os
import resource
import sys
import warnings
from functools import partial

import paddle
import psutil

from paddle_glm import GLMForConditionalGeneration, tensor_parallel
from paddle_glm.distributed import in_launched_job

if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    out, path = sys.argv[1:3]
    parallel = in_launched_job()
    if parallel:
        paddle.distributed.init_parallel_env()
    after_setup = psutil.Process().memory_info().rss
    load = partial(tensor_parallel.from_pretrained, GLMForConditionalGeneration) if parallel else \
        GLMForConditionalGeneration.from_pretrained
    model = load(path, show_progress=False)
    result = {"after_setup": after_setup, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
              "param_bytes": sum(int(p.numel()) * p.element_size() for p in model.parameters())}
    with open(os.path.join(out, f"{paddle.distributed.get_rank() if parallel else 'single'}.json"), "w") as f:
        json.dump(result, f)
