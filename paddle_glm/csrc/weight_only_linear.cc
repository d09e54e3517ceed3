// Weight-only int8/int4 matrix product for CPU: y[..., out] = x[..., in] . dequantize(w)^T + bias (rows: x's
// leading dims; the bias is optional).
//
// Layouts (paddle_glm/quantization/kernels.py):
//   int8: w int8 [out, in], scale float32 [out] (per output channel).
//   int4: w uint8 [out, in / 2], byte j = element 2j (low nibble) | element 2j+1 (high nibble),
//         each a 4-bit two's complement; scale float32 [out, in / group_size].
//
// A decode step is bound by reading the weights, so each weight vector is converted to float32
// in registers once and multiplied with up to 4 rows of x; a block reads R output channels side by
// side, spread over each thread's share of the channels so that the thread reads R streams of
// memory at once (row_streams.h). The arithmetic is written with GCC vector extensions; only the
// widening of int8/int4 to float32 needs intrinsics: AVX-512, AVX2 or SSE2 (16, 8 or 4 lanes),
// whichever the build targets (-march=native by default); a plain loop elsewhere. On AVX2 builds int4 products
// of most group sizes take int4_integer_product.cc's integer route instead (its header says which).
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "float_vectors.h"
#include "int4_integer_product.h"
#include "row_streams.h"
#include "weight_only_product.h"
#include "paddle/extension.h"

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__SSE2__)
#include <immintrin.h>
#endif

// Blocks of R output channels x a tile of batch rows whose accumulators fit the vector registers.
// With AVX-512's 32 registers: 8 x 1 for one row, 4 x 4 from 2 rows on. With 16 registers: 6 x 1
// for one row (six streams of weights: row_streams.h), 4 x 2 for 2-3 rows, 2 x 4 from 4 rows on
// (fewer conversions of each weight vector). int4 needs twice the accumulators (a group's sum and
// the total), so it reads fewer channels side by side.
struct Tiling {
  int rows, tile;
};
#if defined(__AVX512F__)
constexpr Tiling kInt8Tilings[] = {{8, 1}, {4, 4}, {4, 4}}, kInt4Tilings[] = {{6, 1}, {4, 2}, {2, 4}};
#else
constexpr Tiling kInt8Tilings[] = {{6, 1}, {4, 2}, {2, 4}}, kInt4Tilings[] = {{4, 1}, {2, 2}, {2, 4}};
#endif

#if defined(__SSE2__) && !defined(__AVX2__)
// 4 int8 values -> 4 sign-extended int32 lanes (SSE2 has no pmovsxbd).
static inline __m128i sse2_bytes_to_int32(const int8_t* p) {
  int32_t raw;
  std::memcpy(&raw, p, sizeof raw);
  __m128i v = _mm_cvtsi32_si128(raw);
  v = _mm_unpacklo_epi8(v, v);     // 16-bit lanes: b0 b0 | b1 b1 | ...
  v = _mm_unpacklo_epi16(v, v);    // 32-bit lanes: b0 b0 b0 b0 | b1 ...
  return _mm_srai_epi32(v, 24);    // the top byte, sign-extended
}
#endif

// kWidth int8 values -> float32.
static inline vfloat widen_int8(const int8_t* p) {
#if defined(__AVX512F__)
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#elif defined(__AVX2__)
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#elif defined(__SSE2__)
  return _mm_cvtepi32_ps(sse2_bytes_to_int32(p));
#else
  vfloat v;
  for (int k = 0; k < kWidth; ++k) v[k] = static_cast<float>(p[k]);
  return v;
#endif
}

// kWidth packed bytes -> float32 c = b ^ 8 (b: the byte sign-extended) and its high nibble c >> 4.
// With lo, hi the byte's two's-complement nibbles, c = 16 hi + (lo + 8) and 0 <= lo + 8 <= 15, so
// c >> 4 = hi exactly and lo = c - 16 hi - 8: lo * e + hi * o = c * e + hi * (o - 16 e) - 8 e. The
// operator prepares o - 16 e and the group sums of e once per call (prepare_int4_inputs), which
// leaves one XOR where unpacking the low nibble took two shifts. The sums c * e and hi * (o - 16 e)
// partly cancel, so float32 rounds a group's sum ~5x as coarsely as before (~1e-5 relative, far below
// int4's own error; the tests hold it to 1e-5 of float64).
static inline void widen_int4(const int8_t* p, vfloat* c, vfloat* hi) {
#if defined(__AVX512F__)
  const __m512i b = _mm512_xor_si512(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
                                     _mm512_set1_epi32(8));
  *c = _mm512_cvtepi32_ps(b);
  *hi = _mm512_cvtepi32_ps(_mm512_srai_epi32(b, 4));
#elif defined(__AVX2__)
  const __m256i b = _mm256_xor_si256(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))),
                                     _mm256_set1_epi32(8));
  *c = _mm256_cvtepi32_ps(b);
  *hi = _mm256_cvtepi32_ps(_mm256_srai_epi32(b, 4));
#elif defined(__SSE2__)
  const __m128i b = _mm_xor_si128(sse2_bytes_to_int32(p), _mm_set1_epi32(8));
  *c = _mm_cvtepi32_ps(b);
  *hi = _mm_cvtepi32_ps(_mm_srai_epi32(b, 4));
#else
  for (int k = 0; k < kWidth; ++k) {
    const int b = p[k] ^ 8;
    (*c)[k] = static_cast<float>(b);
    (*hi)[k] = static_cast<float>(b >> 4);
  }
#endif
}

struct Problem {
  const float* x;     // int8: x [n, in]; int4: prepare_int4_inputs's e [n, in/2], o - 16 e [n, in/2], sums [n, groups]
  const int8_t* w;    // [out, in] int8 or [out, in/2] packed int4
  const float* scale; // [out] or [out, groups]
  float* y;           // [n, out]
  int64_t n, in, out, group_size;
};

// int8: output channels o0, o0 + stride, ..., o0 + (R-1) * stride against rows b0..b0+NB-1 of x.
template <int R, int NB>
static void int8_block(const Problem& p, int64_t o0, int64_t stride, int64_t b0) {
  vfloat acc[R][NB] = {};
  const int8_t* w[R];
  for (int r = 0; r < R; ++r) w[r] = p.w + (o0 + r * stride) * p.in;
  const float* x = p.x + b0 * p.in;
  int64_t i = 0;
  for (; i + kWidth <= p.in; i += kWidth) {
    vfloat wv[R];
    for (int r = 0; r < R; ++r) wv[r] = widen_int8(w[r] + i);
    for (int b = 0; b < NB; ++b) {
      const vfloat xv = load_floats(x + b * p.in + i);
      for (int r = 0; r < R; ++r) acc[r][b] += wv[r] * xv;
    }
  }
  for (int r = 0; r < R; ++r) {
    const int64_t o = o0 + r * stride;
    for (int b = 0; b < NB; ++b) {
      float s = lane_sum(acc[r][b]);
      for (int64_t j = i; j < p.in; ++j) s += x[b * p.in + j] * static_cast<float>(w[r][j]);
      p.y[(b0 + b) * p.out + o] = s * p.scale[o];
    }
  }
}

// int4: the low nibbles multiply x's even inputs e and the high nibbles its odd ones o, so the
// packed bytes need no shuffling (widen_int4 says how); each group's sum is scaled once, at the
// group's end, and its -8 e term is added from the group's sum of e.
template <int R, int NB>
static void int4_block(const Problem& p, int64_t o0, int64_t stride, int64_t b0) {
  const int64_t half = p.in / 2, group_bytes = p.group_size / 2, groups = p.in / p.group_size;
  const float* xe = p.x + b0 * half;
  const float* xo = p.x + p.n * half + b0 * half;                // o - 16 e
  const float* esum = p.x + 2 * p.n * half + b0 * groups;        // e's sum over each group
  const int8_t* w[R];
  for (int r = 0; r < R; ++r) w[r] = p.w + (o0 + r * stride) * half;
  vfloat total[R][NB] = {};
  float tail[R][NB] = {};
  for (int64_t g = 0; g < groups; ++g) {
    vfloat acc[R][NB] = {};
    float part[R][NB] = {};
    const int64_t end = (g + 1) * group_bytes;
    int64_t j = g * group_bytes;
    for (; j + kWidth <= end; j += kWidth) {
      vfloat c[R], hi[R];
      for (int r = 0; r < R; ++r) widen_int4(w[r] + j, &c[r], &hi[r]);
      for (int b = 0; b < NB; ++b) {
        const vfloat e = load_floats(xe + b * half + j), o = load_floats(xo + b * half + j);
        for (int r = 0; r < R; ++r) acc[r][b] += c[r] * e + hi[r] * o;
      }
    }
    for (; j < end; ++j) {
      for (int r = 0; r < R; ++r) {
        const int c = w[r][j] ^ 8;
        for (int b = 0; b < NB; ++b) part[r][b] += c * xe[b * half + j] + (c >> 4) * xo[b * half + j];
      }
    }
    for (int r = 0; r < R; ++r) {
      const float s = p.scale[(o0 + r * stride) * groups + g];
      for (int b = 0; b < NB; ++b) {
        total[r][b] += acc[r][b] * s;
        tail[r][b] += (part[r][b] - 8.f * esum[b * groups + g]) * s;
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) p.y[(b0 + b) * p.out + o0 + r * stride] = lane_sum(total[r][b]) + tail[r][b];
}

typedef void (*BlockFn)(const Problem&, int64_t, int64_t, int64_t);

template <int R, int NB>
struct Int8Kernel {
  static void run(const Problem& p, int64_t o0, int64_t stride, int64_t b0) { int8_block<R, NB>(p, o0, stride, b0); }
};
template <int R, int NB>
struct Int4Kernel {
  static void run(const Problem& p, int64_t o0, int64_t stride, int64_t b0) { int4_block<R, NB>(p, o0, stride, b0); }
};

// The block function for R output channels and a batch tile of nb rows (1..4).
template <template <int, int> class K, int R>
static BlockFn block_fn(int nb) {
  switch (nb) {
    case 1: return &K<R, 1>::run;
    case 2: return &K<R, 2>::run;
    case 3: return &K<R, 3>::run;
    default: return &K<R, 4>::run;
  }
}

// Blocks of R output channels read side by side (row_streams.h); each block meets the batch in
// tiles of up to TILE rows while its weights sit in cache.
template <template <int, int> class K, int R, int TILE>
static void run_blocks(const Problem& p, int threads) {
  auto tiles = [&p](int64_t o0, int64_t stride, auto pick) {
    for (int64_t b0 = 0; b0 < p.n; b0 += TILE) {
      pick(static_cast<int>(std::min<int64_t>(TILE, p.n - b0)))(p, o0, stride, b0);
    }
  };
  for_each_stream_block<R>(
      p.out, threads, [&](int64_t o0, int64_t stride) { tiles(o0, stride, block_fn<K, R>); },
      [&](int64_t o) { tiles(o, 1, block_fn<K, 1>); });
}

template <template <int, int> class K, const Tiling* T>
static void run_all(const Problem& p, int threads) {
  if (p.n == 1) {
    run_blocks<K, T[0].rows, T[0].tile>(p, threads);
  } else if (p.n < 4) {
    run_blocks<K, T[1].rows, T[1].tile>(p, threads);
  } else {
    run_blocks<K, T[2].rows, T[2].tile>(p, threads);
  }
}

// x [n, in] -> what int4_block reads: x's even inputs e [n, in/2], then o - 16 e [n, in/2] (o: its odd
// inputs), then the sum of e over each group [n, in/group_size].
static std::vector<float> prepare_int4_inputs(const float* x, int64_t n, int64_t in, int64_t group_size) {
  const int64_t half = in / 2, groups = in / group_size, group_half = group_size / 2;
  std::vector<float> out(static_cast<size_t>(n * in + n * groups));
  float* e = out.data();
  float* o = e + n * half;
  float* sums = o + n * half;
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t j = 0; j < half; ++j) {
      e[b * half + j] = x[b * in + 2 * j];
      o[b * half + j] = x[b * in + 2 * j + 1] - 16.f * x[b * in + 2 * j];
    }
    for (int64_t g = 0; g < groups; ++g) {
      float sum = 0.f;
      for (int64_t j = g * group_half; j < (g + 1) * group_half; ++j) sum += e[b * half + j];
      sums[b * groups + g] = sum;
    }
  }
  return out;
}

// y[b, :] += bias for every row (a decode step's bias add without an op of its own).
static void add_bias(float* y, const float* bias, int64_t n, int64_t out) {
  for (int64_t b = 0; b < n; ++b) {
#pragma omp simd
    for (int64_t o = 0; o < out; ++o) y[b * out + o] += bias[o];
  }
}

void check_weight_only_weight(const paddle::Tensor& w, const paddle::Tensor& scale, const paddle::Tensor* bias,
                              int64_t in, int bits, int group_size, const char* what) {
  PD_CHECK(bits == 8 || bits == 4, what, ": bits must be 8 or 4");
  PD_CHECK(w.is_cpu() && w.shape().size() == 2 &&
               w.dtype() == (bits == 8 ? paddle::DataType::INT8 : paddle::DataType::UINT8),
           what, ": the weight must be a 2-D CPU tensor, int8 (8 bits) or uint8 (4 bits)");
  PD_CHECK(scale.is_cpu() && scale.dtype() == paddle::DataType::FLOAT32, what, ": scale must be a float32 CPU tensor");
  const int64_t out = w.shape()[0];
  PD_CHECK(w.shape()[1] * (bits == 4 ? 2 : 1) == in, what, ": the weight does not match its input's features");
  PD_CHECK(bits == 8 || (group_size > 0 && group_size % 2 == 0 && in % group_size == 0),
           what, ": group_size must be a positive even divisor of in");
  PD_CHECK(scale.numel() == (bits == 8 ? out : out * (in / group_size)), what, ": scale does not match the weight");
  PD_CHECK(!bias || (bias->is_cpu() && bias->dtype() == paddle::DataType::FLOAT32 && bias->numel() == out),
           what, ": bias must be a float32 CPU tensor of the weight's outputs");
}

void check_activation_bits(int activation_bits, const char* what) {
  PD_CHECK(activation_bits == 16 || activation_bits == 8, what, ": activation_bits must be 16 or 8");
}

void weight_only_product(const float* x, int64_t n, int64_t in, const paddle::Tensor& w, const paddle::Tensor& scale,
                         const float* bias, int bits, int group_size, int activation_bits, int threads, float* y) {
  const int64_t out = w.shape()[0];
  const int8_t* wp = bits == 8 ? w.data<int8_t>() : reinterpret_cast<const int8_t*>(w.data<uint8_t>());
  if (bits == 8) {
    const Problem p{x, wp, scale.data<float>(), y, n, in, out, 0};
    run_all<Int8Kernel, kInt8Tilings>(p, threads);
  } else if (!int4_integer_product(x, n, in, wp, scale.data<float>(), out, group_size, activation_bits, threads, y)) {
    const std::vector<float> prepared = prepare_int4_inputs(x, n, in, group_size);
    const Problem p{prepared.data(), wp, scale.data<float>(), y, n, in, out, group_size};
    run_all<Int4Kernel, kInt4Tilings>(p, threads);
  }
  if (bias) add_bias(y, bias, n, out);
}

std::vector<paddle::Tensor> WeightOnlyLinear(const paddle::Tensor& x, const paddle::Tensor& w,
                                             const paddle::Tensor& scale, const paddle::optional<paddle::Tensor>& bias,
                                             int bits, int group_size, int activation_bits, int threads) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32 && x.shape().size() >= 1,
           "glm_weight_only_linear: x must be a float32 [..., in] CPU tensor");
  const int64_t in = x.shape().back();
  PD_CHECK(in > 0, "glm_weight_only_linear: x has no inputs");
  const paddle::Tensor* b = bias ? &*bias : nullptr;
  check_weight_only_weight(w, scale, b, in, bits, group_size, "glm_weight_only_linear");
  check_activation_bits(activation_bits, "glm_weight_only_linear");
  std::vector<int64_t> y_shape = x.shape();
  y_shape.back() = w.shape()[0];  // [..., in] -> [..., out]
  paddle::Tensor y = paddle::empty(y_shape, paddle::DataType::FLOAT32, x.place());
  weight_only_product(x.data<float>(), x.numel() / in, in, w, scale, b ? b->data<float>() : nullptr, bits, group_size,
                      activation_bits, threads, y.data<float>());
  return {y};
}

std::vector<std::vector<int64_t>> WeightOnlyLinearShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                                        const std::vector<int64_t>& scale,
                                                        const paddle::optional<std::vector<int64_t>>& bias) {
  std::vector<int64_t> y = x;
  y.back() = w[0];
  return {y};
}

std::vector<paddle::DataType> WeightOnlyLinearDtype(const paddle::DataType& x, const paddle::DataType& w,
                                                    const paddle::DataType& scale,
                                                    const paddle::optional<paddle::DataType>& bias) {
  return {paddle::DataType::FLOAT32};
}

PD_BUILD_OP(glm_weight_only_linear)
    .Inputs({"X", "W", "Scale", paddle::Optional("Bias")})
    .Outputs({"Out"})
    .Attrs({"bits: int", "group_size: int", "activation_bits: int", "threads: int"})
    .SetKernelFn(PD_KERNEL(WeightOnlyLinear))
    .SetInferShapeFn(PD_INFER_SHAPE(WeightOnlyLinearShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(WeightOnlyLinearDtype));
