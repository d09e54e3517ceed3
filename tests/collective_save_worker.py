"""One rank of tests/test_collective_save.py (2 gloo ranks): rank 0 fails before and during the
gathers of a tensor-parallel save and in an ``on_rank_zero`` write; every rank records the error it ends with.

    python -m paddle.distributed.launch --nproc_per_node 2 tests/collective_save_worker.py -- OUT MODEL_DIR
"""
import errno
import json
import os
import sys
import warnings

from paddle_glm import GLMError, GLMForConditionalGeneration, tensor_parallel
from paddle_glm.checkpoint import writer
from paddle_glm.distributed import on_rank_zero


def failing_add(after: int):
    """ShardedWriter.add that runs out of disk space at its ``after``-th call (rank 0 only)."""
    original, calls = writer.ShardedWriter.add, []

    def add(self, name, array):
        calls.append(name)
        if len(calls) == after:
            raise OSError(errno.ENOSPC, "No space left on device", os.path.join(self.directory, "shard"))
        return original(self, name, array)

    return add


def outcome(action) -> str:
    try:
        action()
        return "ok"
    except GLMError as e:
        return str(e)


def main() -> None:
    warnings.filterwarnings("ignore")
    out, model_dir = sys.argv[1:3]
    model = tensor_parallel.from_pretrained(GLMForConditionalGeneration, model_dir, show_progress=False)
    rank = model.tensor_parallel.rank
    a_file = os.path.join(out, "a-file")
    if rank == 0:
        with open(a_file, "w") as f:
            f.write("not a directory")
    results = {"before the gathers": outcome(lambda: model.save_pretrained(a_file))}
    original = writer.ShardedWriter.add
    if rank == 0:
        writer.ShardedWriter.add = failing_add(after=3)
    results["during the gathers"] = outcome(lambda: model.save_pretrained(os.path.join(out, "full-disk"),
                                                                          max_shard_size="20KB"))
    writer.ShardedWriter.add = original
    results["rank-0 write"] = outcome(lambda: on_rank_zero(lambda: open(os.path.join(out, "no", "such", "dir"), "w")))  # noqa: SIM115
    results["then a save"] = outcome(lambda: model.save_pretrained(os.path.join(out, "saved")))
    with open(os.path.join(out, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
