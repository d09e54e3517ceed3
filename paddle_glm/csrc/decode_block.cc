// One decode step through a whole pre-LN GLM block whose four projections are weight-only int8/int4, in one call:
//   h  = LayerNorm1(x)
//   c  = attention(h . Wqkv^T + bqkv)          (writes the step's keys and values into the cache; decode_attention.cc)
//   x1 = x + c . Wdense^T + bdense
//   y  = x1 + gelu_tanh(LayerNorm2(x1) . W4h^T + b4h) . Wh^T + bh
// x [b, 1, hidden] float32; Params, in this order: ln1 weight, ln1 bias, then (weight, scale, bias) of
// query_key_value, dense, dense_h_to_4h, dense_4h_to_h, then ln2 weight, ln2 bias (the weights in
// weight_only_linear.cc's layouts); K, V, Bias, Index and length as glm_decode_attention's; activation_bits (16
// or 8) as glm_weight_only_linear's, for all four projections.
// out [b, 1, hidden].
//
// The same step through Paddle's ops and this library's separate operators costs ~0.2 ms a layer of dispatch
// on glm-large (two layer norms, four products, the attention, a GELU, two adds, the Python between them);
// this is one call. The arithmetic follows Paddle's kernels: the layer norm's biased variance, the GELU's
// tanh form (tanh through an Eigen-style float32 rational approximation).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "decode_attention.h"
#include "decode_block.h"
#include "float_vectors.h"
#include "paddle/extension.h"
#include "weight_only_product.h"

// y = (x - mean) / sqrt(var + eps) * w + b over each of n rows of h features.
static void layer_norm(const float* x, const float* w, const float* b, float eps, int64_t n, int64_t h, float* y) {
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * h;
    double sum = 0.0, squares = 0.0;
    for (int64_t i = 0; i < h; ++i) sum += xr[i];
    const double mean = sum / h;
    for (int64_t i = 0; i < h; ++i) squares += (xr[i] - mean) * (xr[i] - mean);
    const float m = static_cast<float>(mean), inv = static_cast<float>(1.0 / std::sqrt(squares / h + eps));
#pragma omp simd
    for (int64_t i = 0; i < h; ++i) y[r * h + i] = (xr[i] - m) * inv * w[i] + b[i];
  }
}

// tanh(u) in the manner of Eigen's generic_fast_tanh_float (its coefficients and its non-FMA clamp): a 13/6 rational function on [-7.9053, 7.9053], where it reaches +-1
// in float32, on kWidth lanes.
static inline vfloat fast_tanh(vfloat u) {
  const vfloat c = vfloat{} + 7.90531110763549805f;
  const vfloat x = u > c ? c : (u < -c ? -c : u);
  const vfloat x2 = x * x;
  vfloat p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = x2 * p + -8.60467152213735e-11f;
  p = x2 * p + 5.12229709037114e-08f;
  p = x2 * p + 1.48572235717979e-05f;
  p = x2 * p + 6.37261928875436e-04f;
  p = x2 * p + 4.89352455891786e-03f;
  vfloat q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = x2 * q + 2.26843463243900e-03f;
  q = x2 * q + 4.89352518554385e-03f;
  return x * p / q;
}

static inline vfloat gelu_lanes(vfloat v) {
  return 0.5f * v * (1.f + fast_tanh(0.7978845608028654f * (v + 0.044715f * v * v * v)));  // sqrt(2 / pi)
}

// x = 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) for n values in place.
static void gelu_span(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) {
    const vfloat y = gelu_lanes(load_floats(x + i));
    std::memcpy(x + i, &y, sizeof y);
  }
  if (i < n) {  // the last n - i < kWidth values, through one padded vector
    vfloat v{};
    std::memcpy(&v, x + i, sizeof(float) * (n - i));
    const vfloat y = gelu_lanes(v);
    std::memcpy(x + i, &y, sizeof(float) * (n - i));
  }
}

static void gelu_tanh(float* x, int64_t n, int threads) {
#pragma omp parallel num_threads(std::max(threads, 1))
  {
    const int64_t t = omp_get_thread_num(), count = omp_get_num_threads();
    const int64_t begin = n * t / count, end = n * (t + 1) / count;
    gelu_span(x + begin, end - begin);
  }
}

static void check_block_inputs(const paddle::Tensor& x, const std::vector<paddle::Tensor>& params, int bits,
                               int group_size) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32 && x.shape().size() == 3 && x.shape()[1] == 1,
           "glm_decode_block: x must be a float32 [b, 1, hidden] CPU tensor");
  PD_CHECK(params.size() == 16, "glm_decode_block: expected 16 params (2 layer norms, 4 projections)");
  const int64_t h = x.shape()[2];
  const int norms[] = {0, 1, 14, 15};
  const char* norm_names[] = {"input_layernorm.weight", "input_layernorm.bias", "post_attention_layernorm.weight",
                              "post_attention_layernorm.bias"};
  for (int j = 0; j < 4; ++j) {
    const paddle::Tensor& t = params[norms[j]];
    PD_CHECK(t.is_cpu() && t.dtype() == paddle::DataType::FLOAT32 && t.numel() == h, "glm_decode_block: ",
             norm_names[j], " is not a float32 CPU tensor of x's hidden size");
  }
  const char* names[] = {"glm_decode_block query_key_value", "glm_decode_block dense",
                         "glm_decode_block dense_h_to_4h", "glm_decode_block dense_4h_to_h"};
  const int64_t ins[] = {h, h, h, 4 * h}, outs[] = {3 * h, h, 4 * h, h};
  for (int j = 0; j < 4; ++j) {
    const paddle::Tensor& w = params[2 + 3 * j];
    check_weight_only_weight(w, params[3 + 3 * j], &params[4 + 3 * j], ins[j], bits, group_size, names[j]);
    PD_CHECK(w.shape()[0] == outs[j], names[j], ": the weight has the wrong number of outputs");
  }
}

void decode_block_step(const paddle::Tensor& x, const std::vector<paddle::Tensor>& params, paddle::Tensor& k,
                       paddle::Tensor& v, const paddle::Tensor& bias, const paddle::Tensor& index, int64_t length,
                       int bits, int group_size, int activation_bits, float eps1, float eps2, int threads, float* y) {
  check_block_inputs(x, params, bits, group_size);
  check_activation_bits(activation_bits, "glm_decode_block");
  const int64_t b = x.shape()[0], h = x.shape()[2];
  paddle::Tensor qkv = paddle::empty({b, 1, 3 * h}, paddle::DataType::FLOAT32, x.place());
  check_decode_attention_inputs(qkv, k, v, bias, index, length, "glm_decode_block");
  std::vector<float> normed(b * h), context(b * h), residual(b * h), wide(b * 4 * h);
  auto product = [&](int j, const float* in, int64_t features, float* out) {
    weight_only_product(in, b, features, params[2 + 3 * j], params[3 + 3 * j], params[4 + 3 * j].data<float>(), bits,
                        group_size, activation_bits, threads, out);
  };
  const float* xp = x.data<float>();
  layer_norm(xp, params[0].data<float>(), params[1].data<float>(), eps1, b, h, normed.data());
  product(0, normed.data(), h, qkv.data<float>());
  decode_attention_rows(qkv.data<float>(), b, k, v, bias, index, length, threads, context.data());
  product(1, context.data(), h, residual.data());
  for (int64_t i = 0; i < b * h; ++i) residual[i] += xp[i];  // x1 (x is not read after this: y may be x)
  layer_norm(residual.data(), params[14].data<float>(), params[15].data<float>(), eps2, b, h, normed.data());
  product(2, normed.data(), h, wide.data());
  gelu_tanh(wide.data(), b * 4 * h, threads);
  product(3, wide.data(), 4 * h, y);
  for (int64_t i = 0; i < b * h; ++i) y[i] += residual[i];
}

std::vector<paddle::Tensor> DecodeBlock(const paddle::Tensor& x, const std::vector<paddle::Tensor>& params,
                                        paddle::Tensor& k, paddle::Tensor& v, const paddle::Tensor& bias,
                                        const paddle::Tensor& index, int length, int bits, int group_size,
                                        int activation_bits, float eps1, float eps2, int threads) {
  PD_CHECK(x.shape().size() == 3, "glm_decode_block: x must be a float32 [b, 1, hidden] CPU tensor");
  paddle::Tensor out = paddle::empty(x.shape(), paddle::DataType::FLOAT32, x.place());
  decode_block_step(x, params, k, v, bias, index, length, bits, group_size, activation_bits, eps1, eps2, threads,
                    out.data<float>());
  return {out};
}

// With an in-place map, the shape and dtype functions give the other outputs only (Out).
std::vector<std::vector<int64_t>> DecodeBlockShape(const std::vector<int64_t>& x,
                                                   const std::vector<std::vector<int64_t>>& params,
                                                   const std::vector<int64_t>& k, const std::vector<int64_t>& v,
                                                   const std::vector<int64_t>& bias, const std::vector<int64_t>& index,
                                                   int length, int bits, int group_size, int activation_bits,
                                                   float eps1, float eps2, int threads) {
  return {x};
}

std::vector<paddle::DataType> DecodeBlockDtype(const paddle::DataType& x, const std::vector<paddle::DataType>& params,
                                               const paddle::DataType& k, const paddle::DataType& v,
                                               const paddle::DataType& bias, const paddle::DataType& index) {
  return {paddle::DataType::FLOAT32};
}

PD_BUILD_OP(glm_decode_block)
    .Inputs({"X", paddle::Vec("Params"), "K", "V", "Bias", "Index"})
    .Outputs({"Out", "KOut", "VOut"})
    .SetInplaceMap({{"K", "KOut"}, {"V", "VOut"}})
    .Attrs({"length: int", "bits: int", "group_size: int", "activation_bits: int", "eps1: float", "eps2: float",
            "threads: int"})
    .SetKernelFn(PD_KERNEL(DecodeBlock))
    .SetInferShapeFn(PD_INFER_SHAPE(DecodeBlockShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(DecodeBlockDtype));
