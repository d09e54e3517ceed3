// int4 weights x activations rounded to int16, for CPUs with AVX2: the int4 product of weight_only_linear.cc
// where the build targets AVX2 with FMA and the group size is 16 or a multiple of 32 up to 4096 (elsewhere its
// float32 route runs).
//
// Why: the float32 route converts both nibbles of each byte to float32 and multiplies each with an input: on
// a 2-core AMD EPYC (Zen 3) ~8 GB/s of packed weights per core, below the memory's rate. Here each group of x
// (group_size inputs of one row) is rounded to int16 once per call, scaled by the group's largest |x| / 32767,
// and the nibbles meet it in vpmaddwd (16 products of 16-bit integers, summed in pairs into int32): ~14 GB/s
// per core. Each group's integer sum is scaled once, by the weight's scale times the activation's. The
// rounding moves each input by at most 1/65534 of its group's largest |x|, so a product by at most that times
// the sum of the |weights| it meets (the tests hold the operator to this bound; on random inputs ~1.5e-5 of
// the largest output, where int4's own rounding costs ~1e-1).
//
// Layout (weight_only_linear.cc): w uint8 [out, in/2], byte j = element 2j (low nibble) | element 2j+1 (high),
// each a 4-bit two's complement; scale float32 [out, in/group_size]. XOR 0x88 makes both nibbles unsigned
// u = v + 8 (0..15), so a group's sum is sum(u_low * e + u_high * o) - 8 * sum(e + o) (e, o: the group's even
// and odd inputs as int16); the last term is the accumulators' starting value.
#include "int4_int16_product.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "row_streams.h"

namespace {

constexpr int kChunk = 16;  // bytes of weights (32 inputs) a step reads per output channel
// A group's running sum starts at -8 * (its inputs' sum) and adds products of up to 15 * 32767: at most
// ~9.9 * 32767 * group_size in magnitude along the way, within int32 up to ~6600 inputs.
constexpr int kLargestGroup = 4096;

float lane_sum(__m256 v) {
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)));
}

// x [n, in] rounded per group: even inputs e and odd inputs o [n, in/2] as int16, each group's scale [n, groups]
// and its sum's start [n, groups] (-8 * the sum of the group's e and o).
// A row's scales are stored times 2^k (k: what brings the row's largest |x| to [1, 2)) and its outputs multiplied
// by unscale = 2^-k: the products of the weights' and the activations' scales then stay normal float32 numbers
// for rows of any magnitude (a row of ~1e-37 has scales near 1e-42, below float32's normal range).
struct RoundedInputs {
  std::vector<int16_t> e, o;
  std::vector<float> scale, unscale;
  std::vector<int32_t> start;
};

// The largest |x[i]| of a group, NaN when it holds a NaN or an infinity.
float group_max(const float* x, int64_t size) {
  float m = 0.f;
  bool finite = true;
  for (int64_t i = 0; i < size; ++i) {
    finite = finite && std::isfinite(x[i]);
    m = std::max(m, std::fabs(x[i]));
  }
  return finite ? m : NAN;
}

// One group of `size` inputs (largest |x|: m) -> e, o [size/2] and its scale times `factor`; *sum = the sum of
// e and o.
float round_group(const float* x, int64_t size, float m, double factor, int16_t* e, int16_t* o, int32_t* sum) {
  *sum = 0;
  if (!(m > 0.f)) {  // zeros (scale 0), or a NaN/infinity (scale NaN: the products are NaN)
    std::fill(e, e + size / 2, 0);
    std::fill(o, o + size / 2, 0);
    return m == 0.f ? 0.f : NAN;
  }
  const double inverse = 32767.0 / m;  // double: 32767 / m overflows float32 for m below ~1e-34
  for (int64_t j = 0; j < size / 2; ++j) {
    e[j] = static_cast<int16_t>(std::nearbyint(x[2 * j] * inverse));  // to nearest, ties to even
    o[j] = static_cast<int16_t>(std::nearbyint(x[2 * j + 1] * inverse));
    *sum += e[j] + o[j];
  }
  return static_cast<float>(m / 32767.0 * factor);
}

RoundedInputs round_inputs(const float* x, int64_t n, int64_t in, int64_t group_size) {
  const int64_t half = in / 2, groups = in / group_size;
  RoundedInputs r;
  r.e.resize(n * half);
  r.o.resize(n * half);
  r.scale.resize(n * groups);
  r.unscale.assign(n, 1.f);
  r.start.resize(n * groups);
  std::vector<float> largest(groups);
  for (int64_t b = 0; b < n; ++b) {
    float row = 0.f;
    for (int64_t g = 0; g < groups; ++g) {
      largest[g] = group_max(x + b * in + g * group_size, group_size);
      row = std::max(row, largest[g]);  // a NaN group stays NaN through its own scale
    }
    const int k = row > 0.f && std::isfinite(row) ? -std::ilogb(row) : 0;
    r.unscale[b] = std::ldexp(1.f, -k);
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t j = b * half + g * group_size / 2;
      int32_t sum;
      r.scale[b * groups + g] = round_group(x + b * in + g * group_size, group_size, largest[g], std::ldexp(1.0, k),
                                            &r.e[j], &r.o[j], &sum);
      r.start[b * groups + g] = -8 * sum;
    }
  }
  return r;
}

struct Problem {
  const RoundedInputs* x;
  const int8_t* w;     // [out, in/2]
  const float* scale;  // [out, groups]
  float* y;            // [n, out]
  int64_t in, out, group_size;
};

// Adds the products of one 16-byte chunk of channel w's weights (from byte j) with rows b0..b0+NB-1 to acc[NB]:
// lanes 0-3 from the chunk's first 16 inputs, lanes 4-7 from its last 16.
template <int NB>
inline void add_chunk(const Problem& p, const int8_t* w, int64_t j, int64_t b0, __m256i* acc) {
  const int64_t half = p.in / 2;
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + j));
  const __m256i bytes = _mm256_cvtepu8_epi16(_mm_xor_si128(raw, _mm_set1_epi8(static_cast<char>(0x88))));
  const __m256i lo = _mm256_and_si256(bytes, _mm256_set1_epi16(0x0F)), hi = _mm256_srli_epi16(bytes, 4);  // [16]
  for (int b = 0; b < NB; ++b) {
    const int64_t at = (b0 + b) * half + j;
    const __m256i e = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&p.x->e[at]));
    const __m256i o = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&p.x->o[at]));
    acc[b] = _mm256_add_epi32(acc[b], _mm256_add_epi32(_mm256_madd_epi16(lo, e), _mm256_madd_epi16(hi, o)));
  }
}

inline __m256i in_first_lane(int32_t v) { return _mm256_set_m128i(_mm_setzero_si128(), _mm_cvtsi32_si128(v)); }

// The weights and scales of output channels o0, o0 + stride, ..., o0 + (R-1) * stride.
template <int R>
struct Channels {
  const int8_t* w[R];
  const float* s[R];
  Channels(const Problem& p, int64_t o0, int64_t stride) {
    for (int r = 0; r < R; ++r) {
      w[r] = p.w + (o0 + r * stride) * (p.in / 2);
      s[r] = p.scale + (o0 + r * stride) * (p.in / p.group_size);
    }
  }
};

// Output channels o0, o0 + stride, ..., o0 + (R-1) * stride against rows b0..b0+NB-1, for groups of CH chunks
// (0: read from the group size): each group's int32 sums are scaled at its end.
template <int R, int NB, int CH>
void block(const Problem& p, int64_t o0, int64_t stride, int64_t b0) {
  const int64_t groups = p.in / p.group_size, chunks = CH ? CH : p.group_size / (2 * kChunk);
  const Channels<R> ch(p, o0, stride);
  const int8_t* const* w = ch.w;
  const float* const* s = ch.s;
  __m256 total[R][NB] = {};
  for (int64_t g = 0; g < groups; ++g) {
    __m256i acc[R][NB];
    for (int b = 0; b < NB; ++b) {
      const __m256i start = in_first_lane(p.x->start[(b0 + b) * groups + g]);
      for (int r = 0; r < R; ++r) acc[r][b] = start;
    }
    for (int64_t c = 0; c < chunks; ++c)
      for (int r = 0; r < R; ++r) add_chunk<NB>(p, w[r], (g * chunks + c) * kChunk, b0, acc[r]);
    for (int b = 0; b < NB; ++b) {
      const __m256 sx = _mm256_broadcast_ss(&p.x->scale[(b0 + b) * groups + g]);
      for (int r = 0; r < R; ++r)
        total[r][b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][b]), _mm256_mul_ps(_mm256_broadcast_ss(s[r] + g), sx),
                                      total[r][b]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) p.y[(b0 + b) * p.out + o0 + r * stride] = lane_sum(total[r][b]) * p.x->unscale[b0 + b];
}

// Two float32 values, each in four lanes: a in lanes 0-3, b in lanes 4-7.
inline __m256 halves(float a, float b) { return _mm256_set_m128(_mm_set1_ps(b), _mm_set1_ps(a)); }

// As block, for groups of 16 inputs: each chunk holds two groups, one per half of the sums' lanes.
template <int R, int NB>
void pair_block(const Problem& p, int64_t o0, int64_t stride, int64_t b0) {
  const int64_t groups = p.in / p.group_size;
  const Channels<R> ch(p, o0, stride);
  const int8_t* const* w = ch.w;
  const float* const* s = ch.s;
  __m256 total[R][NB] = {};
  for (int64_t g = 0; g < groups; g += 2) {
    __m256i acc[R][NB];
    __m256 sx[NB];
    for (int b = 0; b < NB; ++b) {
      const int32_t* start = &p.x->start[(b0 + b) * groups + g];
      const __m256i both = _mm256_set_m128i(_mm_cvtsi32_si128(start[1]), _mm_cvtsi32_si128(start[0]));
      for (int r = 0; r < R; ++r) acc[r][b] = both;
      sx[b] = halves(p.x->scale[(b0 + b) * groups + g], p.x->scale[(b0 + b) * groups + g + 1]);
    }
    for (int r = 0; r < R; ++r) {
      add_chunk<NB>(p, w[r], g / 2 * kChunk, b0, acc[r]);
      const __m256 sw = halves(s[r][g], s[r][g + 1]);
      for (int b = 0; b < NB; ++b)
        total[r][b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][b]), _mm256_mul_ps(sw, sx[b]), total[r][b]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) p.y[(b0 + b) * p.out + o0 + r * stride] = lane_sum(total[r][b]) * p.x->unscale[b0 + b];
}

typedef void (*BlockFn)(const Problem&, int64_t, int64_t, int64_t);

template <int R, int NB>
BlockFn block_for(int64_t group_size) {
  switch (group_size) {
    case 16: return &pair_block<R, NB>;
    case 32: return &block<R, NB, 1>;
    case 64: return &block<R, NB, 2>;
    case 128: return &block<R, NB, 4>;
    default: return &block<R, NB, 0>;
  }
}

// Blocks of R channels read side by side (row_streams.h), meeting the rows in tiles of NB (the last tile: 1 row
// at a time).
template <int R, int NB>
void run(const Problem& p, int64_t n, int threads) {
  const BlockFn full = block_for<R, NB>(p.group_size), single_row = block_for<R, 1>(p.group_size);
  const BlockFn one = block_for<1, NB>(p.group_size), one_single = block_for<1, 1>(p.group_size);
  auto tiles = [&](int64_t o0, int64_t stride, BlockFn tile, BlockFn row) {
    int64_t b0 = 0;
    for (; b0 + NB <= n; b0 += NB) tile(p, o0, stride, b0);
    for (; b0 < n; ++b0) row(p, o0, stride, b0);
  };
  for_each_stream_block<R>(
      p.out, threads, [&](int64_t o0, int64_t stride) { tiles(o0, stride, full, single_row); },
      [&](int64_t o) { tiles(o, 1, one, one_single); });
}

}  // namespace

bool int4_int16_product(const float* x, int64_t n, int64_t in, const int8_t* w, const float* scale, int64_t out,
                        int group_size, int threads, float* y) {
  const bool pairs = group_size == 16 && in % (2 * kChunk) == 0;  // whole chunks of two groups
  if (!pairs && (group_size % (2 * kChunk) != 0 || group_size > kLargestGroup)) return false;
  const RoundedInputs rounded = round_inputs(x, n, in, group_size);
  const Problem p{&rounded, w, scale, y, in, out, group_size};
  if (n == 1) {
    run<4, 1>(p, n, threads);
  } else if (n < 4) {
    run<2, 2>(p, n, threads);
  } else {
    run<2, 4>(p, n, threads);
  }
  return true;
}

#else

bool int4_int16_product(const float*, int64_t, int64_t, const int8_t*, const float*, int64_t, int, int, float*) {
  return false;
}

#endif
