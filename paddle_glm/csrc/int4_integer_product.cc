// int4 weights x activations rounded to integers, for CPUs with AVX2: the int4 product of weight_only_linear.cc
// where the build targets AVX2 with FMA, the input size is a multiple of 64 and the group size is 16, 32 or a
// multiple of 64 up to 4096 (elsewhere its float32 route runs).
//
// Why: the float32 route converts both nibbles of each byte to float32 and multiplies each with an input: on
// a 2-core AMD EPYC (Zen 3) ~8 GB/s of packed weights per core, below the memory's rate. Here each group of x
// (group_size inputs of one row) is rounded to integers once per call, scaled by the group's largest |x| / L,
// and meets the nibbles in integer multiply-adds: ~11-12 GB/s per core (int16). Each group's integer sums are
// scaled once, by the weight's scale times the activation's. The rounding moves each input by at most 1/(2L) of
// its group's largest |x|, so a product by at most that times the sum of the |weights| it meets (the tests hold
// the operator to this bound).
// - int16 activations (the default, L = 32767): vpmaddwd, 16 products of 16-bit integers summed in pairs into
//   int32; on random inputs ~1.5e-5 of the largest output, where int4's own rounding costs ~1e-1.
// - int8 activations (asked for, L = 127): vpmaddubsw, 32 products of the unsigned nibbles with signed bytes
//   summed in pairs into int16, then vpmaddwd by 1 into int32: about half the instructions a weight; ~4e-3 of the
//   largest output on random inputs.
// Where the build targets AVX-512 VNNI (with VL) or AVX-VNNI, vpdpwssd and vpdpbusd add the products into the int32
// lanes in one instruction: the same sums with fewer instructions. On a 2-core AMD EPYC (Zen 4) the int16 products
// of a decode step read from memory near the fp32 product's rate (benchmarks/RESULTS.md); a standalone loop over
// glm-large's block matrices, alternating builds with and without VNNI, ran ~1.05x (int16) and ~1.1x (int8) as
// fast from the CPU's caches.
//
// Layout (weight_only_linear.cc): w uint8 [out, in/2], byte j = element 2j (low nibble) | element 2j+1 (high),
// each a 4-bit two's complement; scale float32 [out, in/group_size]. A 32-byte load holds 64 inputs' weights.
// XOR 0x88 makes each nibble unsigned u = v + 8 (0..15); each int32 lane's sum is sum(u * x) - 8 * sum(x) over
// the inputs it meets, the last term its starting value: exactly their sum of v * x, so that converting it to
// float32 moves it by at most 2^-24 of sum(|v| * |x|). int16: the load's 16-bit word l holds inputs 4l..4l+3 in
// bits 0-3, 4-7, 8-11, 12-15, which masks and shifts split into four int16 vectors (phases) without moving data
// across lanes; x is stored in the same phase order. int8: the low and the high nibbles of the bytes (even and
// odd inputs), x's even and odd inputs stored apart. Either way the int32 lane j of a product holds inputs
// 8j..8j+7 of the 64, so groups of 16 and 32 own pairs and quads of lanes.
#include "int4_integer_product.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#include "row_streams.h"

// VNNI's multiply-adds into int32 (AVX-512 VNNI on 256-bit vectors, or AVX-VNNI): one instruction where AVX2 takes
// a multiply-add and an addition (int16), or three instructions (int8).
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define GLM_VNNI_AVX512 1
#elif defined(__AVXVNNI__)
#define GLM_VNNI_AVX 1
#endif

namespace {

constexpr int kBlock = 64;  // inputs a step reads per output channel (32 bytes of weights)
// A lane's running sum starts at -8 * (the sum of the rounded inputs it meets: group_size / 8 of them) and adds
// their products with u <= 15: at most ~2.9 * 32767 * group_size in magnitude along the way, within int32.
constexpr int kLargestGroup = 4096;

float lane_sum(__m256 v) {
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)));
}

// The low 4 bytes of v to p (_mm_storeu_si32 needs GCC 11).
inline void store_four_bytes(void* p, __m128i v) {
  const int32_t low = _mm_cvtsi128_si32(v);
  std::memcpy(p, &low, sizeof low);
}

// How x's rounded values are stored, per activation type A.
template <typename A>
struct Activation;

// int16: input 64k + 4l + m at 64k + 16m + l (phase m of block k).
template <>
struct Activation<int16_t> {
  static constexpr double kLevels = 32767.0;
  static int64_t place(int64_t i) { return i / kBlock * kBlock + i % 4 * 16 + i % kBlock / 4; }
  // Inputs i..i+7 (i: a multiple of 8) as int16 a0..a7 in words: phase m takes a_m and a_{m+4}, side by side.
  static void store_eight(__m128i words, int16_t* q, int64_t i) {
    words = _mm_shuffle_epi8(words, _mm_setr_epi8(0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15));
    int16_t* at = q + place(i);
    store_four_bytes(at, words);
    store_four_bytes(at + 16, _mm_srli_si128(words, 4));
    store_four_bytes(at + 32, _mm_srli_si128(words, 8));
    store_four_bytes(at + 48, _mm_srli_si128(words, 12));
  }
};

// int8: input 64k + 2j at 64k + j, input 64k + 2j + 1 at 64k + 32 + j (the even and the odd inputs apart).
template <>
struct Activation<int8_t> {
  static constexpr double kLevels = 127.0;
  static int64_t place(int64_t i) { return i / kBlock * kBlock + i % 2 * 32 + i % kBlock / 2; }
  static void store_eight(__m128i words, int8_t* q, int64_t i) {
    const __m128i bytes = _mm_shuffle_epi8(_mm_packs_epi16(words, words),  // a0 a2 a4 a6 a1 a3 a5 a7
                                           _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 8, 8, 8, 8, 8, 8, 8));
    int8_t* at = q + place(i);
    store_four_bytes(at, bytes);
    store_four_bytes(at + 32, _mm_srli_si128(bytes, 4));
  }
};

// x [n, in] rounded per group: q [n, in] in Activation<A>'s order, and per span (a group, or a block of 64 inputs
// for groups of 16 and 32) 8 lanes of the groups' scales and of the lanes' starts (-8 * the sum of the rounded
// inputs each lane meets): [n, spans, 8].
// A row's scales are stored times 2^k (k: what brings the row's largest |x| to [1, 2)) and its outputs multiplied
// by unscale = 2^-k: the products of the weights' and the activations' scales then stay normal float32 numbers
// for rows of any magnitude (a row of ~1e-37 has scales near 1e-42, below float32's normal range).
template <typename A>
struct RoundedInputs {
  std::vector<A> q;
  std::vector<float> scale, unscale;
  std::vector<int32_t> start;
};

// The largest |x[i]| of a group (size: a multiple of 8), NaN when it holds a NaN or an infinity.
float group_max(const float* x, int64_t size) {
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), finite_max = _mm256_set1_ps(FLT_MAX);
  __m256 m = _mm256_setzero_ps(), finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  for (int64_t i = 0; i < size; i += 8) {
    const __m256 v = _mm256_and_ps(_mm256_loadu_ps(x + i), magnitude);
    finite = _mm256_and_ps(finite, _mm256_cmp_ps(v, finite_max, _CMP_LE_OQ));  // false for NaN and infinity
    m = _mm256_max_ps(m, v);
  }
  const __m128 half = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  const __m128 pair = _mm_max_ps(half, _mm_movehl_ps(half, half));
  const float largest = _mm_cvtss_f32(_mm_max_ss(pair, _mm_movehdup_ps(pair)));
  return _mm256_movemask_ps(finite) == 0xFF ? largest : NAN;
}

// Inputs i..i+7 (i: a multiple of 8) times `inverse`, rounded to integers (to nearest, ties to even: the default
// rounding mode) into q; returns them as int32 [4] summed pairwise.
template <typename A>
inline __m128i round_eight(const float* x, int64_t i, __m256d inverse, A* q) {
  const __m256 v = _mm256_loadu_ps(x + i);  // double: L / m overflows float32 for m below ~1e-34
  const __m128i lo = _mm256_cvtpd_epi32(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), inverse));
  const __m128i hi = _mm256_cvtpd_epi32(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), inverse));
  Activation<A>::store_eight(_mm_packs_epi32(lo, hi), q, i);
  return _mm_add_epi32(lo, hi);
}

// One group of `size` inputs from `first` (largest |x|: m) into q; returns its scale times `factor`. Each 8
// inputs' rounded sum, times -8, goes to the start of the lane that meets them (starts: the row's [spans, 8];
// span: the inputs of a span).
template <typename A>
float round_group(const float* x, int64_t first, int64_t size, float m, double factor, int64_t span, A* q,
                  int32_t* starts) {
  if (!(m > 0.f)) {  // zeros (scale 0), or a NaN/infinity (scale NaN: the products are NaN)
    for (int64_t i = first; i < first + size; ++i) q[Activation<A>::place(i)] = 0;
    return m == 0.f ? 0.f : NAN;
  }
  const __m256d inverse = _mm256_set1_pd(Activation<A>::kLevels / m);
  for (int64_t i = first; i < first + size; i += 8) {
    __m128i sums = round_eight(x, i, inverse, q);
    sums = _mm_add_epi32(sums, _mm_shuffle_epi32(sums, 0x4E));
    starts[i / span * 8 + i % kBlock / 8] -= 8 * _mm_cvtsi128_si32(_mm_add_epi32(sums, _mm_shuffle_epi32(sums, 0xB1)));
  }
  return static_cast<float>(m / Activation<A>::kLevels * factor);
}

// A row's groups: their scales and starts into the row's lanes ([spans, 8]; starts: zeros).
template <typename A>
void round_row(const float* x, int64_t in, int64_t group_size, A* q, float* lanes, int32_t* starts, float* unscale) {
  const int64_t groups = in / group_size, span = std::max<int64_t>(group_size, kBlock);
  const int64_t lanes_per_group = std::min<int64_t>(8, 8 * group_size / kBlock);  // 2, 4 or 8 (of a span's 8)
  std::vector<float> largest(groups);
  float row = 0.f;
  for (int64_t g = 0; g < groups; ++g) {
    largest[g] = group_max(x + g * group_size, group_size);
    row = std::max(row, largest[g]);  // a NaN group stays NaN through its own scale
  }
  const int k = row > 0.f && std::isfinite(row) ? -std::ilogb(row) : 0;
  *unscale = std::ldexp(1.f, -k);
  for (int64_t g = 0; g < groups; ++g) {
    const float scale = round_group(x, g * group_size, group_size, largest[g], std::ldexp(1.0, k), span, q, starts);
    const int64_t lane = g * group_size / span * 8 + g * group_size % span / 8;  // the group's first lane
    std::fill(lanes + lane, lanes + lane + lanes_per_group, scale);
  }
}

template <typename A>
RoundedInputs<A> round_inputs(const float* x, int64_t n, int64_t in, int64_t group_size) {
  const int64_t spans = in / std::max<int64_t>(group_size, kBlock);
  RoundedInputs<A> r;
  r.q.resize(n * in);
  r.scale.resize(n * spans * 8);
  r.start.assign(n * spans * 8, 0);
  r.unscale.resize(n);
  for (int64_t b = 0; b < n; ++b)
    round_row(x + b * in, in, group_size, &r.q[b * in], &r.scale[b * spans * 8], &r.start[b * spans * 8],
              &r.unscale[b]);
  return r;
}

template <typename A>
struct Problem {
  const RoundedInputs<A>* x;
  const int8_t* w;     // [out, in/2]
  const float* scale;  // [out, groups]
  float* y;            // [n, out]
  int64_t in, out, group_size;
};

// The weights and scales of output channels o0, o0 + stride, ..., o0 + (R-1) * stride.
template <int R>
struct Channels {
  const int8_t* w[R];
  const float* s[R];
  Channels(const int8_t* weights, const float* scales, int64_t in, int64_t group_size, int64_t o0, int64_t stride) {
    for (int r = 0; r < R; ++r) {
      w[r] = weights + (o0 + r * stride) * (in / 2);
      s[r] = scales + (o0 + r * stride) * (in / group_size);
    }
  }
};

// A channel's weight scales over span `at`'s 8 lanes (G: the group size, 64 for any from 64 on).
template <int G>
inline __m256 weight_scales(const float* s, int64_t at) {
  if (G == 16) {  // 4 groups: lanes 2i, 2i+1 <- s[4 at + i]
    return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(s + 4 * at)),
                                    _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
  }
  if (G == 32) {  // 2 groups: lanes 0-3 and 4-7
    return _mm256_set_m128(_mm_set1_ps(s[2 * at + 1]), _mm_set1_ps(s[2 * at]));
  }
  return _mm256_broadcast_ss(s + at);
}

// One 64-input block of R channels' weights (from byte j), unsigned: int16, its four phases as int16 [16] each;
// int8, the low and the high nibbles as bytes [32] each.
template <typename A, int R>
struct Unpacked {
  __m256i u[R][4];
  Unpacked(const int8_t* const* w, int64_t j) {
    const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x88));
    const __m256i low = sizeof(A) == 2 ? _mm256_set1_epi16(0x0F) : _mm256_set1_epi8(0x0F);  // per value
    for (int r = 0; r < R; ++r) {
      const __m256i raw = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[r] + j)), flip);
      u[r][0] = _mm256_and_si256(raw, low);
      u[r][1] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
      if constexpr (sizeof(A) == 2) {
        u[r][2] = _mm256_and_si256(_mm256_srli_epi16(raw, 8), low);
        u[r][3] = _mm256_srli_epi16(raw, 12);
      }
    }
  }
};

// acc + a . b: the products of int16 a and b summed in pairs into acc's int32 lanes (one instruction with VNNI).
inline __m256i add_pair_products(__m256i acc, __m256i a, __m256i b) {
#if defined(GLM_VNNI_AVX512)
  return _mm256_dpwssd_epi32(acc, a, b);
#elif defined(GLM_VNNI_AVX)
  return _mm256_dpwssd_avx_epi32(acc, a, b);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}

// acc + one block of a row of x (q: its first value) against one channel's unpacked weights: 8 int32 lanes.
inline __m256i block_product(__m256i acc, const __m256i* u, const int16_t* q) {
  const __m256i* x = reinterpret_cast<const __m256i*>(q);
  const __m256i front = add_pair_products(add_pair_products(acc, u[0], _mm256_loadu_si256(x)), u[1],
                                          _mm256_loadu_si256(x + 1));
  const __m256i back = add_pair_products(_mm256_madd_epi16(u[2], _mm256_loadu_si256(x + 2)), u[3],
                                         _mm256_loadu_si256(x + 3));
  return _mm256_add_epi32(front, back);  // two chains: VNNI's multiply-adds wait on their accumulator
}

inline __m256i block_product(__m256i acc, const __m256i* u, const int8_t* q) {
  const __m256i* x = reinterpret_cast<const __m256i*>(q);
#if defined(GLM_VNNI_AVX512)
  return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(acc, u[0], _mm256_loadu_si256(x)), u[1], _mm256_loadu_si256(x + 1));
#elif defined(GLM_VNNI_AVX)
  return _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(acc, u[0], _mm256_loadu_si256(x)), u[1],
                                 _mm256_loadu_si256(x + 1));
#else
  const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(u[0], _mm256_loadu_si256(x)),  // |.| <= 2 * 2 * 15 * 127
                                         _mm256_maddubs_epi16(u[1], _mm256_loadu_si256(x + 1)));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
#endif
}

// Output channels o0, o0 + stride, ..., o0 + (R-1) * stride against rows b0..b0+NB-1, span by span (G: the group
// size, 64 for any from 64 on; BL: blocks a span, 0: read from the group size): each span's int32 sums are scaled
// at its end, lane by lane.
template <typename A, int R, int NB, int G, int BL>
void block(const Problem<A>& p, int64_t o0, int64_t stride, int64_t b0) {
  const int64_t span = BL ? BL * kBlock : p.group_size, spans = p.in / span;
  const Channels<R> ch(p.w, p.scale, p.in, p.group_size, o0, stride);
  const A* q = p.x->q.data() + b0 * p.in;
  const int32_t* starts = p.x->start.data() + b0 * spans * 8;
  const float* scales = p.x->scale.data() + b0 * spans * 8;
  __m256 total[R][NB] = {};
  for (int64_t at = 0; at < spans; ++at) {
    __m256i acc[R][NB];
    for (int b = 0; b < NB; ++b) {
      const __m256i start = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(starts + (b * spans + at) * 8));
      for (int r = 0; r < R; ++r) acc[r][b] = start;
    }
    for (int64_t first = at * span; first < (at + 1) * span; first += kBlock) {  // each block's first input
      const Unpacked<A, R> w(ch.w, first / 2);
      for (int r = 0; r < R; ++r)
        for (int b = 0; b < NB; ++b)
          acc[r][b] = block_product(acc[r][b], w.u[r], q + b * p.in + first);
    }
    for (int r = 0; r < R; ++r) {
      const __m256 sw = weight_scales<G>(ch.s[r], at);
      for (int b = 0; b < NB; ++b) {
        const __m256 sx = _mm256_loadu_ps(scales + (b * spans + at) * 8);
        total[r][b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][b]), _mm256_mul_ps(sw, sx), total[r][b]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) p.y[(b0 + b) * p.out + o0 + r * stride] = lane_sum(total[r][b]) * p.x->unscale[b0 + b];
}

template <typename A>
using BlockFn = void (*)(const Problem<A>&, int64_t, int64_t, int64_t);

template <typename A, int R, int NB>
BlockFn<A> block_for(int64_t group_size) {
  switch (group_size) {
    case 16: return &block<A, R, NB, 16, 1>;  // a span: one block of 64 inputs
    case 32: return &block<A, R, NB, 32, 1>;
    case 64: return &block<A, R, NB, 64, 1>;
    case 128: return &block<A, R, NB, 64, 2>;
    default: return &block<A, R, NB, 64, 0>;
  }
}

// Blocks of R channels read side by side (row_streams.h), meeting the rows in tiles of NB (the last tile: 1 row
// at a time).
template <typename A, int R, int NB>
void run(const Problem<A>& p, int64_t n, int threads) {
  const BlockFn<A> full = block_for<A, R, NB>(p.group_size), single_row = block_for<A, R, 1>(p.group_size);
  const BlockFn<A> one = block_for<A, 1, NB>(p.group_size), one_single = block_for<A, 1, 1>(p.group_size);
  auto tiles = [&](int64_t o0, int64_t stride, BlockFn<A> tile, BlockFn<A> row) {
    int64_t b0 = 0;
    for (; b0 + NB <= n; b0 += NB) tile(p, o0, stride, b0);
    for (; b0 < n; ++b0) row(p, o0, stride, b0);
  };
  for_each_stream_block<R>(
      p.out, threads, [&](int64_t o0, int64_t stride) { tiles(o0, stride, full, single_row); },
      [&](int64_t o) { tiles(o, 1, one, one_single); });
}

template <typename A>
void product(const float* x, int64_t n, int64_t in, const int8_t* w, const float* scale, int64_t out,
             int group_size, int threads, float* y) {
  const RoundedInputs<A> rounded = round_inputs<A>(x, n, in, group_size);
  const Problem<A> p{&rounded, w, scale, y, in, out, group_size};
  if (n == 1) {
    run<A, 4, 1>(p, n, threads);
  } else if (n < 4) {
    run<A, 2, 2>(p, n, threads);
  } else {
    run<A, 2, 4>(p, n, threads);
  }
}

}  // namespace

// Whether the route takes products of `in` inputs in groups of group_size.
static bool takes(int64_t in, int group_size) {
  const bool sizes = group_size == 16 || group_size == 32 || (group_size > 0 && group_size % kBlock == 0 &&
                                                               group_size <= kLargestGroup);
  return sizes && in % kBlock == 0 && in % group_size == 0;
}

bool int4_integer_product(const float* x, int64_t n, int64_t in, const int8_t* w, const float* scale, int64_t out,
                          int group_size, int activation_bits, int threads, float* y) {
  if (!takes(in, group_size)) return false;
  if (activation_bits == 8) {
    product<int8_t>(x, n, in, w, scale, out, group_size, threads, y);
  } else {
    product<int16_t>(x, n, in, w, scale, out, group_size, threads, y);
  }
  return true;
}

extern "C" int glm_int4_integer_route(int64_t in, int group_size) { return takes(in, group_size) ? 1 : 0; }

#else

bool int4_integer_product(const float*, int64_t, int64_t, const int8_t*, const float*, int64_t, int, int, int,
                          float*) {
  return false;
}

extern "C" int glm_int4_integer_route(int64_t, int) { return -1; }

#endif
