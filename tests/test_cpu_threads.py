"""CPU thread policy: Paddle defaults to one thread; paddle_glm uses the cores it may run on, shared among the
ranks of a job on one machine."""
import os
from pathlib import Path

import pytest

from paddle_glm import GLMError
from paddle_glm.devices import THREADS_ENV, cpu_thread_count


@pytest.fixture
def env(monkeypatch):
    for name in (THREADS_ENV, "PADDLE_TRAINERS_NUM", "PADDLE_LOCAL_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Paddle's import leaves when the user set nothing
    return monkeypatch


def test_default_is_every_usable_core(env):
    assert cpu_thread_count() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("launcher_env", [
    {"PADDLE_TRAINERS_NUM": "2", "PADDLE_LOCAL_SIZE": "2"},  # paddle.distributed.launch, by paddle-glm or by hand
    {"PADDLE_TRAINERS_NUM": "2"},  # paddle.distributed.spawn (tools/train_tiny.py)
], ids=["launch", "spawn"])
def test_ranks_on_one_machine_share_its_cores(env, launcher_env):
    for name, value in launcher_env.items():
        env.setenv(name, value)
    assert cpu_thread_count() == max(1, len(os.sched_getaffinity(0)) // 2)
    env.setenv(THREADS_ENV, "3")  # a per-process choice is kept
    assert cpu_thread_count() == 3


def test_users_omp_setting_above_one_is_kept(env):
    env.setenv("OMP_NUM_THREADS", "3")
    assert cpu_thread_count() == 3


def test_own_variable_wins_and_may_ask_for_one_thread(env):
    env.setenv("OMP_NUM_THREADS", "3")
    env.setenv(THREADS_ENV, "1")
    assert cpu_thread_count() == 1


@pytest.mark.parametrize("value", ["two", "0", "-1"])
def test_bad_values_are_named(env, value):
    env.setenv(THREADS_ENV, value)
    with pytest.raises(GLMError, match=THREADS_ENV):
        cpu_thread_count()


@pytest.fixture
def thread_calls(monkeypatch):
    """Records every call of Paddle's private thread setter (and makes it do nothing)."""
    import paddle

    calls = []
    monkeypatch.setattr(paddle.base.core, "set_num_threads", calls.append)
    return calls


def test_building_a_model_changes_no_process_wide_setting(thread_calls):
    import paddle

    from paddle_glm import GLMConfig, GLMForConditionalGeneration

    dtype, device = paddle.get_default_dtype(), paddle.get_device()
    config = GLMConfig(num_layers=1, hidden_size=32, num_attention_heads=2, vocab_size=50, max_sequence_length=16)
    GLMForConditionalGeneration(config)
    with paddle.LazyGuard():
        GLMForConditionalGeneration(config)
    assert thread_calls == []
    assert (paddle.get_default_dtype(), paddle.get_device()) == (dtype, device)


def test_from_pretrained_is_an_entry_point_that_sets_threads(tmp_path, env, thread_calls):
    from paddle_glm import GLMConfig, GLMForConditionalGeneration

    env.setenv(THREADS_ENV, "3")
    config = GLMConfig(num_layers=1, hidden_size=32, num_attention_heads=2, vocab_size=50, max_sequence_length=16)
    GLMForConditionalGeneration(config).save_pretrained(str(tmp_path))
    assert thread_calls == []
    GLMForConditionalGeneration.from_pretrained(str(tmp_path), show_progress=False)
    assert thread_calls == [3]


def test_only_devices_calls_the_private_thread_api():
    root = Path(__file__).resolve().parent.parent
    callers = [str(path.relative_to(root)) for folder in ("paddle_glm", "benchmarks", "tools")
               for path in (root / folder).rglob("*.py") if "set_num_threads" in path.read_text(encoding="utf-8")]
    assert callers == ["paddle_glm/devices.py"]
