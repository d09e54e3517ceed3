"""CPU thread policy: Paddle defaults to one thread; paddle_glm uses the cores it may run on."""
import os

import pytest

from paddle_glm import GLMError
from paddle_glm.devices import THREADS_ENV, cpu_thread_count


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Paddle's import leaves when the user set nothing
    return monkeypatch


def test_default_is_every_usable_core(env):
    assert cpu_thread_count() == len(os.sched_getaffinity(0))


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
