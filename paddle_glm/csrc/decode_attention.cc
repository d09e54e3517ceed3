// One decode step's attention on CPU, float32, with the key/value cache write in the same pass:
//   qkv   [b, 1, 3 * heads * d]  the step's packed projection (q | k | v, heads one after another in each)
//   k, v  [B, heads, T, d]       a layer's cache buffers (B >= b: a window's rows are the first b), written
//                                in place at slot index[r] of every row r < b
//   bias  [B, heads, 1, T]       the additive key mask (0 visible, the dtype's minimum hidden)
//   index int64 [1] or [b]       the slot each row writes (one for all rows, or each row's own)
//   length                       the slots attended (a window's length, <= T)
// Paddle hands a custom operator contiguous copies of strided inputs, so k and v must be the whole buffers
// (cpu_operators.decode_attention refuses views: their writes would land in a copy).
// out [b, 1, heads * d]: softmax(q / sqrt(d) . k[:length]^T + bias[:length]) . v[:length] for every row and head.
//
// Paddle's ops for the same step (two index_put_ writes, a scale, two batched matmuls, a bias add, a softmax,
// transposes and reshapes) cost ~0.45 ms a layer on glm-large in per-op dispatch; this is one call. The
// arithmetic matches theirs: q is scaled before the product, the bias added to the scores, the softmax
// subtracts the row maximum.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "decode_attention.h"
#include "paddle/extension.h"

static float dot(const float* a, const float* b, int64_t d) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < d; ++i) s += a[i] * b[i];
  return s;
}

// One (row, head) of a step: its q, new key and value, its cache slots (keys, values, bias) and its output.
struct Head {
  const float* q;
  const float* k_new;
  const float* v_new;
  float* keys;
  float* values;
  const float* bias;
  float* out;
  int64_t slot;  // where k_new and v_new go
};

// Heads a thread attends side by side: their keys, then their values, are read as this many streams of memory
// at once, which the hardware prefetchers serve faster than one (as row_streams.h's products).
constexpr int kGroup = 4;

// `count` (<= kGroup) heads: write each one's key and value at its slot, then attend over slots [0, length).
// Each head's arithmetic is in the same order as with one head at a time. `scratch` holds kGroup * (length + d)
// floats (each head's scores, then its scaled query).
static void attend_heads(const Head* heads, int count, int64_t length, int64_t d, float* scratch) {
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  float *scores[kGroup], *scaled[kGroup], top[kGroup], total[kGroup];
  for (int g = 0; g < count; ++g) {
    const Head& h = heads[g];
    std::memcpy(h.keys + h.slot * d, h.k_new, sizeof(float) * d);
    std::memcpy(h.values + h.slot * d, h.v_new, sizeof(float) * d);
    scores[g] = scratch + g * (length + d);
    scaled[g] = scores[g] + length;
    for (int64_t i = 0; i < d; ++i) scaled[g][i] = h.q[i] * scale;
    top[g] = -INFINITY;
    total[g] = 0.f;
    std::fill(h.out, h.out + d, 0.f);
  }
  for (int64_t t = 0; t < length; ++t) {
    for (int g = 0; g < count; ++g) {
      scores[g][t] = dot(scaled[g], heads[g].keys + t * d, d) + heads[g].bias[t];
      top[g] = std::max(top[g], scores[g][t]);
    }
  }
  for (int g = 0; g < count; ++g) {
    for (int64_t t = 0; t < length; ++t) {
      scores[g][t] = std::exp(scores[g][t] - top[g]);
      total[g] += scores[g][t];
    }
  }
  for (int64_t t = 0; t < length; ++t) {
    for (int g = 0; g < count; ++g) {
      const float p = scores[g][t] / total[g];
      const float* vt = heads[g].values + t * d;
      float* out = heads[g].out;
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) out[i] += p * vt[i];
    }
  }
}

void check_decode_attention_inputs(const paddle::Tensor& qkv, const paddle::Tensor& k, const paddle::Tensor& v,
                                   const paddle::Tensor& bias, const paddle::Tensor& index, int64_t length, const char* what) {
  for (const paddle::Tensor* t : {&qkv, &k, &v, &bias}) {
    PD_CHECK(t->is_cpu() && t->dtype() == paddle::DataType::FLOAT32,
             what, ": qkv, k, v and bias must be float32 CPU tensors");
  }
  PD_CHECK(k.shape().size() == 4 && k.shape() == v.shape(), what, ": k and v must be [B, heads, T, d]");
  const int64_t batch = k.shape()[0], heads = k.shape()[1], slots = k.shape()[2], d = k.shape()[3];
  PD_CHECK(qkv.shape().size() == 3 && qkv.shape()[1] == 1 && qkv.shape()[2] == 3 * heads * d &&
               qkv.shape()[0] <= batch,
           what, ": qkv must be [b, 1, 3 * heads * d] with b at most the cache's rows");
  PD_CHECK(bias.shape() == std::vector<int64_t>({batch, heads, 1, slots}),
           what, ": bias must be [B, heads, 1, T]");
  PD_CHECK(length > 0 && length <= slots, what, ": length must be in 1..T");
  PD_CHECK(index.is_cpu() && index.dtype() == paddle::DataType::INT64 &&
               (index.numel() == 1 || index.numel() == qkv.shape()[0]),
           what, ": index must be int64 [1] or [b]");
  const int64_t* slot = index.data<int64_t>();
  for (int64_t r = 0; r < index.numel(); ++r) {
    PD_CHECK(slot[r] >= 0 && slot[r] < length, what, ": a write index is outside 0..length-1");
  }
}

void decode_attention_rows(const float* qkv, int64_t b, paddle::Tensor& k, paddle::Tensor& v, const paddle::Tensor& bias,
                           const paddle::Tensor& index, int64_t length, int threads, float* out) {
  const int64_t heads = k.shape()[1], slots = k.shape()[2], d = k.shape()[3];
  const int64_t hd = heads * d;
  float *keys = k.data<float>(), *values = v.data<float>();
  const float* mask = bias.data<float>();
  const int64_t* slot = index.data<int64_t>();
  const bool shared = index.numel() == 1;
  const int64_t pairs = b * heads;
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, pairs)));
  std::vector<float> scratch(static_cast<size_t>(threads * kGroup * (length + d)));  // outside the parallel region
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
    float* mine = scratch.data() + t * kGroup * (length + d);
    Head group[kGroup];
    for (int64_t first = pairs * t / n, end = pairs * (t + 1) / n; first < end; first += kGroup) {
      const int count = static_cast<int>(std::min<int64_t>(kGroup, end - first));
      for (int g = 0; g < count; ++g) {
        const int64_t r = (first + g) / heads, h = (first + g) % heads;
        const float* q = qkv + r * 3 * hd + h * d;    // row r's q | k | v, head h in each
        const int64_t at = (r * heads + h) * slots;  // (row, head)'s first slot in k, v and bias
        group[g] = {q, q + hd, q + 2 * hd, keys + at * d, values + at * d, mask + at, out + r * hd + h * d,
                    slot[shared ? 0 : r]};
      }
      attend_heads(group, count, length, d, mine);
    }
  }
}

std::vector<paddle::Tensor> DecodeAttention(const paddle::Tensor& qkv, paddle::Tensor& k, paddle::Tensor& v,
                                            const paddle::Tensor& bias, const paddle::Tensor& index, int length,
                                            int threads) {
  check_decode_attention_inputs(qkv, k, v, bias, index, length, "glm_decode_attention");
  const int64_t b = qkv.shape()[0];
  paddle::Tensor out = paddle::empty({b, 1, k.shape()[1] * k.shape()[3]}, paddle::DataType::FLOAT32, qkv.place());
  decode_attention_rows(qkv.data<float>(), b, k, v, bias, index, length, threads, out.data<float>());
  return {out};
}

// With an in-place map, the shape and dtype functions give the other outputs only (Out).
std::vector<std::vector<int64_t>> DecodeAttentionShape(const std::vector<int64_t>& qkv, const std::vector<int64_t>& k,
                                                       const std::vector<int64_t>& v, const std::vector<int64_t>& bias,
                                                       const std::vector<int64_t>& index, int length, int threads) {
  return {{qkv[0], 1, k[1] * k[3]}};
}

std::vector<paddle::DataType> DecodeAttentionDtype(const paddle::DataType& qkv, const paddle::DataType& k,
                                                   const paddle::DataType& v, const paddle::DataType& bias,
                                                   const paddle::DataType& index) {
  return {paddle::DataType::FLOAT32};
}

PD_BUILD_OP(glm_decode_attention)
    .Inputs({"QKV", "K", "V", "Bias", "Index"})
    .Outputs({"Out", "KOut", "VOut"})
    .SetInplaceMap({{"K", "KOut"}, {"V", "VOut"}})
    .Attrs({"length: int", "threads: int"})
    .SetKernelFn(PD_KERNEL(DecodeAttention))
    .SetInferShapeFn(PD_INFER_SHAPE(DecodeAttentionShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(DecodeAttentionDtype));
