"""Weight-only int8/int4 kernels: quantization by exact arithmetic, the C++ operator and the tiled
fallback against a float64 reference, every route decision, the operator's build cache, and the
CUDA layout against ``paddle.nn.quant.weight_quantize``'s own output (which runs on CPU)."""
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import paddle
import pytest

from conftest import activation_rounding_bound

from paddle_glm import GLMError, cpu_operators
from paddle_glm.quantization import kernels
from paddle_glm.quantization.cuda_layout import cuda_arch, cuda_weight_only_args
from paddle_glm.quantization.kernels import (
    CPU_OPERATOR,
    CPU_TILED_FALLBACK,
    CUDA_WEIGHT_ONLY,
    choose_route,
    dequantize_weight,
    quantize_weight,
    to_cuda_layout,
    weight_only_linear,
)

INT8, INT4 = "weight_only_int8", "weight_only_int4"
# the operators are built for the host (-march=native) unless told otherwise: is int4's integer route in them?
CPU_FLAGS = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
AVX2_BUILD = not os.environ.get(cpu_operators.CFLAGS_ENV) and {"avx2", "fma"} <= CPU_FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- quantize / dequantize by exact arithmetic ---

def test_int8_per_channel_by_hand():
    w = np.array([[127, -3, 2.5, -0.5, 0],  # scale 1: 2.5 and -0.5 are ties, rounded to even
                  [0, 0, 0, 0, 0],  # a zero channel: scale 0, no NaN
                  [-254, 1.5, 3, 0.75, 254]], np.float32)  # scale 2
    q, s = quantize_weight(w, INT8)
    assert q.dtype == np.int8 and s.dtype == np.float32
    np.testing.assert_array_equal(s, [1, 0, 2])
    np.testing.assert_array_equal(q, [[127, -3, 2, 0, 0], [0, 0, 0, 0, 0], [-127, 1, 2, 0, 127]])
    np.testing.assert_array_equal(dequantize_weight(q, s, INT8), [[127, -3, 2, 0, 0], [0] * 5, [-254, 2, 4, 0, 254]])


def test_int4_groups_and_nibble_order_by_hand():
    w = np.array([[7, -1, 0, 0, 14, -2, 3, -7]], np.float32)  # groups of 4: scales 1 and 2
    q, s = quantize_weight(w, INT4, group_size=4)  # the second group: 7, -1, 2 (1.5, a tie), -4 (-3.5, a tie)
    np.testing.assert_array_equal(s, [[1, 2]])
    # byte j = element 2j in the low nibble | element 2j+1 in the high nibble, two's complement
    assert q.dtype == np.uint8
    np.testing.assert_array_equal(q, [[0xF7, 0x00, 0xF7, 0xC2]])
    np.testing.assert_array_equal(dequantize_weight(q, s, INT4, 4), [[7, -1, 0, 0, 14, -2, 4, -8]])


def test_every_nibble_unpacks_to_its_value():
    packed = np.arange(256, dtype=np.uint8).reshape(1, 256)
    values = kernels.unpack_int4(packed)
    low, high = np.arange(256) % 16, np.arange(256) // 16
    np.testing.assert_array_equal(values[0, 0::2], np.where(low >= 8, low - 16, low))
    np.testing.assert_array_equal(values[0, 1::2], np.where(high >= 8, high - 16, high))
    assert values.min() == -8 and values.max() == 7


def test_full_range_round_trips():
    q8 = np.arange(-127, 128, dtype=np.int8).reshape(1, -1)
    s8 = np.array([0.5], np.float32)
    q, s = quantize_weight(dequantize_weight(q8, s8, INT8), INT8)
    np.testing.assert_array_equal(q, q8)
    np.testing.assert_array_equal(s, s8)
    q4 = np.array([[v & 0xF | ((-v) & 0xF) << 4 for v in range(-7, 8)] + [0]], np.uint8)  # -7..7 and 7..-7
    s4 = np.array([[0.25]], np.float32)
    q, s = quantize_weight(dequantize_weight(q4, s4, INT4, 32), INT4, 32)
    np.testing.assert_array_equal(q, q4)
    np.testing.assert_array_equal(s, s4)


@pytest.mark.parametrize("quant_type,group_size", [(INT8, 64), (INT4, 32), (INT4, 64), (INT4, 128)])
def test_zero_rows_and_groups_no_nan_no_warning(quant_type, group_size):
    w = np.random.default_rng(0).standard_normal((6, 256)).astype(np.float32)
    w[1] = 0
    w[3, :128] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q, s = quantize_weight(w, quant_type, group_size)
        d = dequantize_weight(q, s, quant_type, group_size)
    assert np.isfinite(d).all() and not d[1].any() and not d[3, :128].any()
    assert np.abs(d - w).max() <= (s.max() / 2) * 1.0001  # each value within half a step


def test_chunked_quantization_equals_one_chunk(monkeypatch):
    w = np.random.default_rng(1).standard_normal((37, 128)).astype(np.float16)  # float16 input too
    whole = [quantize_weight(w, qt, 64) for qt in (INT8, INT4)]
    monkeypatch.setattr(kernels, "_CHUNK_ELEMENTS", 300)  # 2 rows per chunk
    for (q, s), qt in zip(whole, (INT8, INT4)):
        q2, s2 = quantize_weight(w, qt, 64)
        np.testing.assert_array_equal(q, q2)
        np.testing.assert_array_equal(s, s2)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_weights_are_refused(bad):
    w = np.ones((3, 64), np.float32)
    w[2, 5] = bad
    for qt in (INT8, INT4):
        with pytest.raises(GLMError, match="^weight has non-finite values$"):
            quantize_weight(w, qt)


@pytest.mark.parametrize("quant_type,group_size,shape,match", [
    ("int8", 64, (4, 64), "quant_type"),
    (INT4, 0, (4, 64), "group_size"),
    (INT4, -64, (4, 64), "group_size"),
    (INT4, 3, (4, 63), "odd"),
    (INT4, 5, (4, 60), "group_size"),  # odd group
    (INT4, 48, (4, 64), "group_size"),  # not a divisor
    (INT8, 64, (4, 64, 1), "2-D"),
])
def test_bad_arguments_are_one_line(quant_type, group_size, shape, match):
    with pytest.raises(GLMError, match=match) as info:
        quantize_weight(np.ones(shape, np.float32), quant_type, group_size)
    assert "\n" not in str(info.value)


# --- the kernels against a float64 reference ---

def _case(quant_type, group_size, out_features, in_features, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out_features, in_features)).astype(np.float32)
    w[0] = 0  # a zero channel
    q, s = quantize_weight(w, quant_type, group_size)
    return q, s, dequantize_weight(q, s, quant_type, group_size).astype(np.float64)


def _rel_err(got, ref):
    return np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30)


def _integer_route(quant_type, group_size, in_features):
    """Whether csrc/int4_integer_product.cc takes this product (on an AVX2 build)."""
    return quant_type == INT4 and in_features % 64 == 0 and (group_size in (16, 32)
                                                             or (group_size % 64 == 0 and group_size <= 4096))


def _allowed(x, d, quant_type, group_size, ref, bits=16):
    """What the operator's product may differ from float64 by: 1e-5 of the largest output (float32 sums), plus,
    where the integer route applies, the rounding of its activations to ``bits`` bits."""
    allowed = 1e-5 * np.abs(ref).max()
    if _integer_route(quant_type, group_size, x.shape[-1]):
        bound = activation_rounding_bound(x.reshape(-1, x.shape[-1]), d, group_size, bits)
        allowed = allowed + bound.reshape(ref.shape)
    return allowed


def _assert_operator_close(got, x, d, quant_type, group_size, ref=None, bits=16):
    """The operator's product against float64, within :func:`_allowed`."""
    ref = x.astype(np.float64) @ d.T if ref is None else ref
    assert np.all(np.abs(got - ref) <= _allowed(x, d, quant_type, group_size, ref, bits)), _rel_err(got, ref)


SHAPES = [(INT8, 64, o, i) for o in (1, 3, 17, 130) for i in (1, 3, 17, 130, 1000)] + [
    (INT4, g, o, i) for g in (32, 64, 128) for o in (1, 3, 17, 130) for i in (128, 384, 1024) if i % g == 0] + [
    (INT4, 2, 5, 6), (INT4, 6, 7, 18), (INT4, 130, 3, 260)] + [  # groups shorter than a vector / not a multiple of it
    (INT4, 16, o, i) for o in (1, 3, 17) for i in (48, 128)]  # the word embeddings' groups: odd and even counts


@pytest.mark.parametrize("quant_type,group_size,out_features,in_features", SHAPES)
def test_operator_and_fallback_match_float64(quant_type, group_size, out_features, in_features):
    built, reason = cpu_operators.status()
    assert built, reason
    q, s, d = _case(quant_type, group_size, out_features, in_features)
    qt, st = paddle.to_tensor(q), paddle.to_tensor(s)
    rng = np.random.default_rng(out_features * in_features)
    for n in (1, 2, 3, 5, 8, 16):
        x = rng.standard_normal((n, in_features)).astype(np.float32)
        x[n // 2] = 0  # a zero row of x
        ref = x.astype(np.float64) @ d.T
        xt = paddle.to_tensor(x)
        op = cpu_operators.run(xt, qt, st, quant_type, group_size).numpy()
        tiled = kernels.tiled_fallback(xt, qt, st, quant_type, group_size).numpy()
        _assert_operator_close(op, x, d, quant_type, group_size, ref)
        assert _rel_err(tiled, ref) <= 1e-5, n
        assert not op[n // 2].any()


@pytest.mark.parametrize("bits", [16, 8])
@pytest.mark.parametrize("group_size,in_features", [(16, 192), (32, 192), (256, 512), (4096, 4096), (8192, 8192),
                                                    (16, 96), (32, 96)])
def test_int4_activation_rounding_edges(group_size, in_features, bits):
    """csrc/int4_integer_product.cc rounds each group of x to int16 (or int8) by its largest |x|: a group with one
    outlier (the others rounded coarsely), a row of values near float32's smallest normal (scales below float32's
    normal range unless the row is rescaled), a group of zeros; each output within the rounding's bound. Groups of 16
    and 32 (four and two to a block of 64 inputs, an odd number of blocks), groups of several blocks (256: the
    group size read at run time), up to 4096 (the int32 sums' limit); 8192 and inputs not a multiple of 64 take the
    float32 route. A NaN or an infinity in x makes its row's outputs NaN (inf: not
    finite), as a float32 product would."""
    assert cpu_operators.status()[0]
    q, s, d = _case(INT4, group_size, 7, in_features, seed=group_size)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, in_features)).astype(np.float32)
    x[0, 3] = 5000.0  # an outlier in the first group
    x[1] *= np.float32(1e-37)
    x[2, :group_size] = 0
    got = cpu_operators.run(paddle.to_tensor(x[:4]), paddle.to_tensor(q), paddle.to_tensor(s), INT4, group_size,
                            activation_bits=bits)
    for row in range(4):  # each row against its own scale
        _assert_operator_close(got.numpy()[row:row + 1], x[row:row + 1], d, INT4, group_size, bits=bits)
    if _integer_route(INT4, group_size, in_features) and AVX2_BUILD:  # the rounding shows: the route ran
        ref = x[:1].astype(np.float64) @ d.T
        error = np.abs(got.numpy()[:1] - ref)
        assert error.max() > 1e-6 * np.abs(ref).max()
    x[3, 1], x[4, -1] = np.nan, np.inf
    got = cpu_operators.run(paddle.to_tensor(x), paddle.to_tensor(q), paddle.to_tensor(s), INT4, group_size,
                            activation_bits=bits).numpy()
    assert np.isnan(got[3]).all() and not np.isfinite(got[4]).any() and np.isfinite(got[:3]).all()


@pytest.mark.parametrize("group_size,in_features", [(16, 64), (32, 192), (64, 1024), (128, 384)])
def test_int8_activations_within_their_bound(group_size, in_features):
    """With ``activation_bits=8`` the integer route rounds x to int8 per group: every output of 1-8 rows (one of
    zeros) within 1/254 of each group's largest |x| times the |weights| it meets, and beyond int16's bound
    somewhere (the int8 rounding ran, where the route runs)."""
    assert cpu_operators.status()[0]
    q, s, d = _case(INT4, group_size, 37, in_features, seed=in_features)
    rng = np.random.default_rng(group_size)
    for n in (1, 2, 3, 5, 8):
        x = rng.standard_normal((n, in_features)).astype(np.float32)
        x[n // 2] = 0
        ref = x.astype(np.float64) @ d.T
        got = cpu_operators.run(paddle.to_tensor(x), paddle.to_tensor(q), paddle.to_tensor(s), INT4, group_size,
                                activation_bits=8).numpy()
        _assert_operator_close(got, x, d, INT4, group_size, ref, bits=8)
        assert not got[n // 2].any()
        if AVX2_BUILD and n > 1:  # (n = 1: its one row is the zeros)
            assert np.any(np.abs(got - ref) > _allowed(x, d, INT4, group_size, ref, 16)), n


def test_the_library_says_whether_it_has_the_integer_route():
    """cpu_operators.int4_integer_route asks the loaded library; a build for this host has the route when the CPU
    has AVX2 and FMA."""
    assert cpu_operators.status()[0]
    built, reason = cpu_operators.int4_integer_route()
    assert built == AVX2_BUILD and (built or reason == "the C++ CPU operators were built without AVX2 and FMA")


def test_activation_bits_other_than_16_or_8_are_refused():
    assert cpu_operators.status()[0]
    q, s, _ = _case(INT4, 64, 4, 128)
    with pytest.raises(Exception, match="activation_bits must be 16 or 8"):
        cpu_operators.run(paddle.ones([1, 128]), paddle.to_tensor(q), paddle.to_tensor(s), INT4, 64,
                          activation_bits=12)


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@pytest.mark.parametrize("quant_type,group_size", [(INT8, 64), (INT4, 64)])
def test_every_thread_count_computes_every_channel_once(monkeypatch, threads, quant_type, group_size):
    """Each thread reads its share of the output channels as several streams, then its leftover channels
    one at a time (csrc/row_streams.h): channel counts below, at and above threads x streams, with
    leftovers of every size, each equal the float64 product."""
    assert cpu_operators.status()[0]
    monkeypatch.setattr(cpu_operators, "chosen_cpu_threads", lambda: threads)
    rng = np.random.default_rng(threads)
    cases = [(group_size, out, 128) for out in (1, 5, 6, 11, 12, 13, 24, 29, 61, 97)]
    if quant_type == INT4:  # groups shorter than a vector (the scalar tail) in blocks of channels far apart
        cases += [(6, 29, 18), (2, 61, 6)]
    for group, out_features, in_features in cases:
        q, s, d = _case(quant_type, group, out_features, in_features)
        for n in (1, 2, 3, 4, 7):
            x = rng.standard_normal((n, in_features)).astype(np.float32)
            got = cpu_operators.run(paddle.to_tensor(x), paddle.to_tensor(q), paddle.to_tensor(s), quant_type,
                                    group).numpy()
            _assert_operator_close(got, x, d, quant_type, group)


@pytest.mark.parametrize("quant_type,group_size", [(INT8, 64), (INT4, 64)])
def test_weight_only_linear_shapes_and_bias(quant_type, group_size):
    q, s, d = _case(quant_type, group_size, 96, 256, seed=3)
    rng = np.random.default_rng(4)
    bias = rng.standard_normal(96).astype(np.float32)
    for shape in ((7, 256), (2, 3, 256), (1, 1, 256), (2, 0, 256), (256,)):  # the operator takes [..., in] as it is
        x = rng.standard_normal(shape).astype(np.float32)
        for b in (None, bias):
            got = weight_only_linear(paddle.to_tensor(x), paddle.to_tensor(q), paddle.to_tensor(s),
                                     None if b is None else paddle.to_tensor(b),
                                     quant_type=quant_type, group_size=group_size)
            ref = x.astype(np.float64) @ d.T + (0 if b is None else b)
            assert list(got.shape) == list(shape[:-1]) + [96]
            if ref.size:
                _assert_operator_close(got.numpy(), x, d, quant_type, group_size, ref)


@pytest.mark.parametrize("quant_type", [INT8, INT4])
def test_x_that_needs_a_gradient_gets_it(quant_type):
    q, s, d = _case(quant_type, 64, 24, 128, seed=7)
    rng = np.random.default_rng(8)
    x = paddle.to_tensor(rng.standard_normal((2, 3, 128)).astype(np.float32), stop_gradient=False)
    g = rng.standard_normal((2, 3, 24))
    y = weight_only_linear(x, paddle.to_tensor(q), paddle.to_tensor(s), quant_type=quant_type)
    _assert_operator_close(y.numpy(), x.numpy(), d, quant_type, 64)
    (y * paddle.to_tensor(g.astype(np.float32))).sum().backward()
    assert _rel_err(x.grad.numpy(), g @ d) <= 1e-5  # d(sum(y * g))/dx = g @ W
    rows = paddle.to_tensor(x.numpy().reshape(6, 128), stop_gradient=False)  # the tiled route's own autograd
    (kernels.tiled_fallback(rows, paddle.to_tensor(q), paddle.to_tensor(s), quant_type, 64)
     * paddle.to_tensor(g.reshape(6, 24).astype(np.float32))).sum().backward()
    assert _rel_err(rows.grad.numpy(), g.reshape(6, 24) @ d) <= 1e-5


def test_an_unknown_quant_type_is_one_line():
    q, s, _ = _case(INT8, 64, 4, 64)
    with pytest.raises(GLMError, match="quant_type: expected one of"):
        weight_only_linear(paddle.ones([1, 64]), paddle.to_tensor(q), paddle.to_tensor(s), quant_type="int3")


def test_a_trainable_bias_gets_its_gradient():
    """x needs no gradient (the operator takes the bias itself then), but the bias does: it must get one."""
    q, s, _ = _case(INT8, 64, 24, 128, seed=9)
    x = paddle.to_tensor(np.random.default_rng(1).standard_normal((2, 3, 128)).astype(np.float32))
    bias = paddle.zeros([24])
    bias.stop_gradient = False
    weight_only_linear(x, paddle.to_tensor(q), paddle.to_tensor(s), bias, quant_type=INT8).sum().backward()
    np.testing.assert_array_equal(bias.grad.numpy(), np.full(24, 6, np.float32))  # one per row of x


def test_operator_refuses_a_weight_of_the_wrong_type():
    q, s, _ = _case(INT8, 64, 8, 64)
    with pytest.raises(Exception, match="int8 .8 bits. or uint8 .4 bits."):
        cpu_operators.run(paddle.ones([1, 128]), paddle.to_tensor(q), paddle.to_tensor(s), INT4, 64)


def test_operator_reads_a_non_contiguous_x():
    q, s, d = _case(INT8, 64, 40, 64, seed=5)
    x = paddle.to_tensor(np.random.default_rng(6).standard_normal((64, 3)).astype(np.float32)).t()  # [3, 64] view
    got = weight_only_linear(x, paddle.to_tensor(q), paddle.to_tensor(s), quant_type=INT8)
    assert _rel_err(got.numpy(), x.numpy().astype(np.float64) @ d.T) <= 1e-5


# --- the dispatch ---

@pytest.mark.parametrize("case,expected", [
    (("cpu", "float32", INT8, True), CPU_OPERATOR),
    (("cpu", "float32", INT4, True), CPU_OPERATOR),
    (("cpu", "float32", INT8, False), CPU_TILED_FALLBACK),
    (("cpu", "float32", INT4, False), CPU_TILED_FALLBACK),
    (("gpu", "float16", INT8, False), CUDA_WEIGHT_ONLY),  # the CPU operator plays no part on a GPU
    (("gpu", "bfloat16", INT4, True), CUDA_WEIGHT_ONLY),
])
def test_choose_route(case, expected):
    assert choose_route(*case) == expected


@pytest.mark.parametrize("case,match", [
    (("cpu", "float16", INT8, True), "^half precision on CPU: Paddle has no CPU kernels for it; use float32$"),
    (("cpu", "bfloat16", INT4, False), "^half precision on CPU"),
    (("gpu", "float32", INT8, False), "float16 or bfloat16"),
    (("cpu", "float32", "int8", True), "quant_type"),
    (("cpu", "float64", INT8, True), "expected float32"),
])
def test_choose_route_refusals(case, match):
    with pytest.raises(GLMError, match=match):
        choose_route(*case)


@pytest.mark.parametrize("capability,arch", [(70, 70), (72, 70), (75, 75), (80, 80), (86, 86), (87, 86),
                                             (89, 89), (90, 90), (100, 100), (103, 100)])
def test_cuda_arch(capability, arch):
    assert cuda_arch(capability) == arch


@pytest.mark.parametrize("capability", [61, 120])
def test_cuda_arch_without_kernels(capability):
    with pytest.raises(GLMError, match="no weight-only kernel for compute capability"):
        cuda_arch(capability)


def test_cuda_call_arguments():
    assert cuda_weight_only_args(INT8, 64, 80) == {"weight_dtype": "int8", "arch": 80, "group_size": -1}
    assert cuda_weight_only_args(INT4, 128, 90) == {"weight_dtype": "int4", "arch": 90, "group_size": 128}
    with pytest.raises(GLMError, match="group_size 32: .* 64 or 128 only"):
        cuda_weight_only_args(INT4, 32, 80)


# --- the CUDA layout against weight_quantize (CPU-runnable with a GPU arch) ---

def _fp16_exact_case(quant_type, group_size, out_features, in_features, seed):
    """Integers and scales whose products are exact in float16, each row/group reaching +-qmax,
    so weight_quantize on the dequantized float16 weight recomputes exactly our q and scale."""
    rng = np.random.default_rng(seed)
    qmax = 127 if quant_type == INT8 else 7
    groups = 1 if quant_type == INT8 else in_features // group_size
    q = rng.integers(-qmax, qmax + 1, (out_features, in_features)).astype(np.int8)
    q.reshape(out_features, groups, -1)[:, :, 0] = qmax * rng.choice([-1, 1], (out_features, groups))
    s = (2.0 ** rng.integers(-12, -4, (out_features, groups)) * (1 + rng.integers(0, 8, (out_features, groups)) / 8))
    if quant_type == INT8:
        return q, s[:, 0].astype(np.float32)
    pairs = q.reshape(out_features, -1, 2).view(np.uint8) & 0xF
    return (pairs[:, :, 0] | pairs[:, :, 1] << 4).astype(np.uint8), s.astype(np.float32)


@pytest.mark.parametrize("arch", [70, 75, 80, 86, 89, 90, 100])
@pytest.mark.parametrize("quant_type,group_size", [(INT8, 64), (INT4, 64), (INT4, 128)])
def test_to_cuda_layout_equals_weight_quantize(arch, quant_type, group_size):
    q, s = _fp16_exact_case(quant_type, group_size, 192, 384, seed=arch)
    w = dequantize_weight(q, s, quant_type, group_size)
    assert np.array_equal(w.astype(np.float16).astype(np.float32), w)
    ref_w, ref_s = paddle.nn.quant.weight_quantize(paddle.to_tensor(w.T.copy()).astype("float16"), algo=quant_type,
                                                   arch=arch, group_size=-1 if quant_type == INT8 else group_size)
    got_w, got_s = to_cuda_layout(q, s, quant_type, group_size, arch)
    assert got_w.dtype == np.int8 and got_w.shape == tuple(ref_w.shape)
    np.testing.assert_array_equal(got_w, ref_w.numpy())
    np.testing.assert_array_equal(got_s.astype(np.float16), ref_s.numpy())


@pytest.mark.parametrize("quant_type,group_size,shape,match", [
    (INT4, 32, (64, 32), "group_size 32"),
    (INT8, 64, (64, 96), "multiple of 64"),
    (INT8, 64, (64, 128), "arch 92"),
])
def test_to_cuda_layout_refusals(quant_type, group_size, shape, match):
    with pytest.raises(GLMError, match=match):
        to_cuda_layout(np.zeros(shape, np.int8 if quant_type == INT8 else np.uint8),
                       np.zeros(shape[0], np.float32), quant_type, group_size, 92 if "arch" in match else 80)


# --- the operator's build, cache and fallback ---

SCRIPT = textwrap.dedent("""
    import numpy as np, paddle
    from paddle_glm import cpu_operators
    from paddle_glm.quantization.kernels import dequantize_weight, quantize_weight, weight_only_linear
    from conftest import activation_rounding_bound  # tests/ is on the script's path
    rng = np.random.default_rng(0)
    worst = 0.0
    for qt, bits in (("weight_only_int8", 16), ("weight_only_int4", 16), ("weight_only_int4", 8)):
        for out_f, in_f in ((13, 64), (130, 1024)):
            q, s = quantize_weight(rng.standard_normal((out_f, in_f)).astype("float32"), qt, 64)
            x = rng.standard_normal((5, in_f)).astype("float32")
            d = dequantize_weight(q, s, qt, 64).astype("f8")
            ref = x.astype("f8") @ d.T
            route = qt == "weight_only_int4" and cpu_operators.int4_integer_route()[0]  # rounds x per group
            bound = activation_rounding_bound(x, d, 64, bits) if route else 0.0
            for _ in range(2):
                got = weight_only_linear(paddle.to_tensor(x), paddle.to_tensor(q), paddle.to_tensor(s), quant_type=qt,
                                         activation_bits=bits)
                worst = max(worst, float((np.abs(got.numpy() - ref) - bound).max() / np.abs(ref).max()))
            if bits == 8 and route:  # the int8 rounding ran: beyond int16's bound
                assert (np.abs(got.numpy() - ref) > activation_rounding_bound(x, d, 64, 16)).any(), (out_f, in_f)
    from paddle_glm.linear import linear, linear_transposed  # the float products: the operator or Paddle's matmul
    with paddle.no_grad():
        for rows in (1, 5, 40):
            x, w = rng.standard_normal((rows, 70)).astype("float32"), rng.standard_normal((70, 33)).astype("float32")
            ref = x.astype("f8") @ w.astype("f8")
            for got in (linear(paddle.to_tensor(x), paddle.to_tensor(w)),
                        linear_transposed(paddle.to_tensor(x), paddle.to_tensor(np.ascontiguousarray(w.T)))):
                worst = max(worst, float(np.abs(got.numpy() - ref).max() / np.abs(ref).max()))
    # decode attention: the operator or Paddle's ops, against generation without a cache
    from paddle_glm import GLMConfig, GLMForConditionalGeneration
    from paddle_glm.attention import CPU_DECODE, decode_backend
    paddle.seed(0)
    model = GLMForConditionalGeneration(GLMConfig.from_name("glm-tiny-test"))
    model.eval()
    ids = rng.integers(10, 500, (2, 9))
    cached, plain = (model.generate(ids, max_new_tokens=6, eos_token_id=None, bad_words_ids=[], use_cache=use).numpy()
                     for use in (True, False))
    with paddle.no_grad():
        backend = decode_backend("bhsd", paddle.zeros([1]), False)
    assert (backend == CPU_DECODE) == cpu_operators.status()[0] and (cached == plain).all(), (backend, cached, plain)
    print("ROUTE", cpu_operators.int4_integer_route()[0], "STATUS", cpu_operators.status()[0], "ERR", worst)
""")


def _run_script(env_changes, timeout=300):
    path = os.pathsep.join([ROOT, os.path.join(ROOT, "tests"), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, **env_changes)
    env = {k: v for k, v in env.items() if v}  # an empty value unsets
    return subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(proc, timeout=300):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, err
    route, status, error = out.split("ROUTE ")[1].split(" STATUS ")[0], *out.split("STATUS ")[1].split(" ERR ")
    assert route == "False" or status == "True", out  # int4's integer route only in a loaded library
    notices = [line for line in err.splitlines() if line.startswith("paddle_glm:")]
    return status == "True", float(error), notices, route == "True"


@pytest.mark.parametrize("env,reason", [
    ({"PADDLE_GLM_CPU_OPERATORS": "0"}, "PADDLE_GLM_CPU_OPERATORS=0"),
    ({"CXX": "/nonexistent/g++"}, "CXX=/nonexistent/g++ is not an executable"),
    ({"CXX": "", "PATH": "/nonexistent"}, "no C++ compiler"),  # none on PATH
    ({"PADDLE_GLM_CACHE_DIR": "/proc/no-cache-here"}, "cannot build in /proc/no-cache-here/ops"),
    ({"CXX": "false"}, "the build exited with status 1"),  # a compiler that fails
])
def test_fallback_runs_with_one_notice_naming_the_reason(tmp_path, env, reason):
    built, error, notices, _ = _finish(_run_script({"PADDLE_GLM_CACHE_DIR": str(tmp_path), **env}))
    assert not built and error <= 1e-5
    fallback = [line for line in notices if "tiled dequantization" in line]
    assert len(fallback) == 1 and reason in fallback[0], notices
    assert len(notices) == (2 if env.get("CXX") == "false" else 1)  # plus the one build notice when it tried
    ops = tmp_path / "ops"
    assert set(os.listdir(ops) if ops.exists() else []) <= {"last-failed-build.log"}  # no temporary build left


def test_a_build_that_loses_the_race_keeps_the_winners_library(tmp_path, monkeypatch):
    library = tmp_path / "ops" / "key" / (cpu_operators.LIBRARY + ".so")
    library.parent.mkdir(parents=True)
    library.write_bytes(b"winner")

    def fake_compile(compiler, flags, tmp, ops_dir):
        os.makedirs(os.path.join(tmp, "work", cpu_operators.LIBRARY))
        with open(os.path.join(tmp, "work", cpu_operators.LIBRARY, cpu_operators.LIBRARY + ".so"), "wb") as f:
            f.write(b"loser")
        return ""

    monkeypatch.setattr(cpu_operators, "_compile", fake_compile)
    lines = []
    assert cpu_operators.build("g++", [], str(library), announce=lines.append) == ""
    assert library.read_bytes() == b"winner" and os.listdir(tmp_path / "ops") == ["key"]
    assert lines == ["paddle_glm: building the C++ CPU operators (once, ~20 s)"]


def test_cache_key_follows_paddle_compiler_flags_and_source():
    key = cpu_operators.cache_key("/usr/bin/g++", ["-march=native"])
    assert key.startswith(paddle.__version__ + "-")
    assert key != cpu_operators.cache_key("/usr/bin/g++", ["-march=x86-64"])
    assert key == cpu_operators.cache_key("/usr/bin/g++", ["-march=native"])


@pytest.mark.slow
def test_two_processes_build_the_portable_operator_at_once(tmp_path):
    """Both build the baseline x86-64 variant (no AVX2: the SSE2 paths) into one fresh cache at
    the same time; both load a working library (without int4's integer route, which needs AVX2: its probe says
    so) and the cache holds one complete build, no leftovers."""
    env = {"PADDLE_GLM_CACHE_DIR": str(tmp_path), "PADDLE_GLM_CPU_OPERATORS_CFLAGS": "-march=x86-64"}
    procs = [_run_script(env), _run_script(env)]
    results = [_finish(p, timeout=900) for p in procs]
    for built, error, notices, route in results:
        assert built and not route and error <= 1e-5 and len(notices) <= 1
    (key,) = os.listdir(tmp_path / "ops")
    assert os.listdir(tmp_path / "ops" / key) == [cpu_operators.LIBRARY + ".so"]


X86_64_V3 = {"avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "abm"}  # what -march=x86-64-v3 compiles for


def _compiler_takes(flags):
    """Whether g++ compiles for ``flags`` (-march=x86-64-v3 needs GCC 11, -mavxvnni also binutils 2.36)."""
    if shutil.which("g++") is None or platform.machine() not in ("x86_64", "AMD64"):
        return False
    probe = "#include <immintrin.h>\nint main() { return 0; }\n"
    return subprocess.run(["g++", *flags, "-x", "c++", "-c", "-", "-o", os.devnull], input=probe, text=True,
                          capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not X86_64_V3 <= CPU_FLAGS or not _compiler_takes(["-march=x86-64-v3"]),
                    reason="a CPU without x86-64-v3 (AVX2, FMA, BMI2, ...) or a compiler without the target")
def test_the_avx2_build_without_avx512_or_vnni(tmp_path):
    """x86-64-v3 (AVX2 and FMA): int4's integer route with AVX2's multiply-adds, where -march=native on a CPU with
    AVX-512 VNNI or AVX-VNNI builds their one-instruction multiply-adds instead: both within their bounds."""
    env = {"PADDLE_GLM_CACHE_DIR": str(tmp_path), "PADDLE_GLM_CPU_OPERATORS_CFLAGS": "-march=x86-64-v3"}
    built, error, notices, route = _finish(_run_script(env), timeout=900)
    assert built and route and error <= 1e-5 and len(notices) <= 1


@pytest.mark.skipif(shutil.which("objdump") is None, reason="no objdump")
@pytest.mark.parametrize("flags,vnni", [
    (["-march=x86-64-v3"], False),
    (["-march=x86-64-v3", "-mavxvnni"], True),  # AVX-VNNI (no CPU here may run it: compiled only)
    (["-march=x86-64-v3", "-mavx512f", "-mavx512vl", "-mavx512vnni"], True),
])
def test_int4_route_takes_vnni_where_the_build_targets_it(tmp_path, flags, vnni):
    """Compiled only (not run): VNNI's multiply-adds where the target has them, AVX2's elsewhere."""
    if not _compiler_takes(flags):
        pytest.skip(f"g++ does not compile for {' '.join(flags)} (or not an x86-64 machine)")
    source = Path(cpu_operators.__file__).parent / "csrc" / "int4_integer_product.cc"
    obj = tmp_path / "route.o"
    subprocess.run(["g++", "-std=c++17", "-O2", "-fopenmp", *flags, "-c", str(source), "-o", str(obj)], check=True)
    code = subprocess.run(["objdump", "-d", str(obj)], check=True, capture_output=True, text=True).stdout
    assert ("vpdpwssd" in code and "vpdpbusd" in code) == vnni
    assert ("vpmaddubsw" in code) != vnni and "vpmaddwd" in code  # int16's second chain starts with vpmaddwd
