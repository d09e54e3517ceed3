"""``openmp_wait``: Paddle's OpenMP threads sleep at once while BLAS products run and spin again (the
runtime's own setting, whatever it was) before the C++ operators run; per thread."""
import threading

import paddle
import pytest

from paddle_glm import cpu_operators, openmp_wait
from paddle_glm.linear import BLAS_ROWS, linear

lib = openmp_wait._library()
pytestmark = pytest.mark.skipif(lib is None, reason="this Paddle build has no Intel OpenMP runtime")


@pytest.fixture(autouse=True)
def own_setting(monkeypatch):
    openmp_wait.spin_when_idle()
    before = lib.kmp_get_blocktime()
    monkeypatch.setitem(openmp_wait._runtime, "own", 37)  # as KMP_BLOCKTIME=37 would
    yield
    monkeypatch.undo()
    lib.kmp_set_blocktime(before)


def test_sleep_then_spin_restores_the_runtimes_own_setting():
    openmp_wait.sleep_when_idle()
    openmp_wait.sleep_when_idle()
    assert lib.kmp_get_blocktime() == 0
    openmp_wait.spin_when_idle()
    assert lib.kmp_get_blocktime() == 37
    openmp_wait.spin_when_idle()
    assert lib.kmp_get_blocktime() == 37


def test_the_setting_is_per_thread():
    seen = []

    def other():
        openmp_wait.spin_when_idle()  # its first call sets the runtime's own value, whatever it began with
        seen.append(lib.kmp_get_blocktime())
        openmp_wait.sleep_when_idle()
        seen.append(lib.kmp_get_blocktime())
        openmp_wait.spin_when_idle()  # undone on this thread only: the main thread's record stays
        seen.append(lib.kmp_get_blocktime())

    openmp_wait.sleep_when_idle()
    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == [37, 0, 37] and lib.kmp_get_blocktime() == 0
    openmp_wait.spin_when_idle()
    assert lib.kmp_get_blocktime() == 37


@pytest.mark.skipif(not cpu_operators.status()[0], reason="the C++ CPU operators could not be built")
def test_blas_products_sleep_and_the_operators_spin(monkeypatch):
    import paddle_glm.linear as linear_module

    monkeypatch.setattr(linear_module, "chosen_cpu_threads", linear_module.usable_cores)
    monkeypatch.setattr(linear_module, "local_ranks", lambda: 1)
    w = paddle.randn([16, 8])
    with paddle.no_grad():
        linear(paddle.randn([BLAS_ROWS, 16]), w)  # a prefill's product: BLAS
        assert lib.kmp_get_blocktime() == 0
        linear(paddle.randn([BLAS_ROWS, 1, 16]), w)  # a decode step's: the C++ operator
        assert lib.kmp_get_blocktime() == 37
        openmp_wait.sleep_when_idle()
        cpu_operators.small_batch_linear(paddle.randn([2, 16]), w)  # the operator on its own spins again
        assert lib.kmp_get_blocktime() == 37


def test_without_the_operators_a_decode_product_spins_again(monkeypatch):
    """Paddle's own matmul (no C++ operators built) after a BLAS product: the threads spin again."""
    import paddle_glm.linear as linear_module

    monkeypatch.setattr(linear_module, "chosen_cpu_threads", linear_module.usable_cores)
    monkeypatch.setattr(linear_module, "local_ranks", lambda: 1)
    monkeypatch.setattr(cpu_operators, "status", lambda: (False, "no compiler"))
    w = paddle.randn([16, 8])
    with paddle.no_grad():
        linear(paddle.randn([BLAS_ROWS, 16]), w)
        assert lib.kmp_get_blocktime() == 0
        linear(paddle.randn([1, 1, 16]), w)
        assert lib.kmp_get_blocktime() == 37
