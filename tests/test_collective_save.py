"""Collective saves: when rank 0 fails before or during the gathers of a tensor-parallel
``save_pretrained`` (or in a rank-0 write that the others wait for), no rank waits forever; every rank
ends with the same one-line error, and the job goes on to a good save afterwards."""
import json
import subprocess
import sys
from pathlib import Path

from process_tree import assert_nothing_left, kill_tree, tree_env

from conftest import TINY_A, random_model

TESTS = Path(__file__).resolve().parent


def test_rank_zero_failures_reach_every_rank(tmp_path):
    model_dir, out = tmp_path / "model", tmp_path / "out"
    random_model(TINY_A).save_pretrained(str(model_dir))
    out.mkdir()
    env = tree_env(tmp_path)
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
               str(tmp_path / "logs"), str(TESTS / "collective_save_worker.py"), "--", str(out), str(model_dir)]
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        assert job.wait(timeout=90) == 0, [p.read_text()[-2000:] for p in (tmp_path / "logs").glob("workerlog.*")]
    finally:
        kill_tree(job, env)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # the same outcome, word for word, on both ranks
    results = ranks[0]
    assert results["before the gathers"] == f"{out / 'a-file'}: exists and is not a directory"
    assert "No space left on device" in results["during the gathers"]
    assert "no/such/dir: No such file or directory" in results["rank-0 write"]
    assert all("\n" not in message for message in results.values())
    assert results["then a save"] == "ok" and (out / "saved" / "config.json").is_file()
    assert not (out / "full-disk").exists()
    assert_nothing_left(env, out)
