// Float32 matrix products for a few rows on CPU (rows: x's leading dims, at most 128):
//   transposed = 0: y[..., out] = x[..., in] . w[in, out] + bias[out]  (Paddle's Linear layout, row-major
//                   [in, out]; the bias is optional: the accumulators start from it, which saves a pass)
//   transposed = 1: y[..., out] = x[..., in] . w[out, in]^T  (a tied output projection: the embeddings)
//
// A decode step multiplies 1-16 rows by every weight matrix, which is bound by reading the weights,
// and a short prompt's prefill a few dozen; Paddle's CPU matmul costs ~5x a one-row pass at 8 rows and
// ~2.3x this file's kernels from 16 to 128 rows (measured on the glm-large shapes). Both kernels read
// each weight once for all rows:
// * [in, out]: the output columns are split into blocks (block_width) that OpenMP shares out; a block's
//   accumulators for every row (at most kAccFloats, 32 KiB) stay in L1 while the block's part of w is
//   read, kSteps rows of w at a time (contiguous runs of the block's width), each met with every row of x.
// * [out, in]: blocks of kDotRows output channels (dot products with every row of x, kDotTile rows at
//   a time; 6 channels for one row), each weight vector loaded into registers once per tile, the
//   channels of a block spread over the thread's share so that it reads several streams of memory at
//   once (row_streams.h), as weight_only_linear.cc does.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "float_vectors.h"
#include "row_streams.h"
#include "paddle/extension.h"

constexpr int64_t kMaxRows = 128;
constexpr int64_t kAccFloats = 8192;  // a column block's accumulators for every row: 32 KiB, in L1
static_assert(kAccFloats / kMaxRows >= 16, "a block of 16 columns must fit every row's accumulators");
constexpr int64_t kSteps = 4;
constexpr int kDotRows = 4, kDotTile = 2;  // 8 accumulators + 4 weight vectors: fits 16 vector registers
constexpr int kDotStreamsOneRow = 6;      // one row: 6 accumulators + 6 weight vectors


// w [in, out]: y[b, c0:c1] = bias[c0:c1] + sum_i x[b, i] * w[i, c0:c1] for every row b (bias may be null).
static void column_block(const float* x, const float* w, const float* bias, float* y, int64_t n, int64_t in,
                         int64_t out, int64_t c0, int64_t c1) {
  const int64_t width = c1 - c0;
  float acc[kAccFloats];
  for (int64_t b = 0; b < n; ++b) {
    if (bias) {
      std::memcpy(acc + b * width, bias + c0, sizeof(float) * width);
    } else {
      std::memset(acc + b * width, 0, sizeof(float) * width);
    }
  }
  int64_t i = 0;
  for (; i + kSteps <= in; i += kSteps) {
    const float* w0 = w + i * out + c0;
    const float* w1 = w0 + out;
    const float* w2 = w1 + out;
    const float* w3 = w2 + out;
    for (int64_t b = 0; b < n; ++b) {
      const float* xb = x + b * in + i;
      const float x0 = xb[0], x1 = xb[1], x2 = xb[2], x3 = xb[3];
      float* a = acc + b * width;
#pragma omp simd
      for (int64_t k = 0; k < width; ++k) a[k] += x0 * w0[k] + x1 * w1[k] + x2 * w2[k] + x3 * w3[k];
    }
  }
  for (; i < in; ++i) {
    const float* w0 = w + i * out + c0;
    for (int64_t b = 0; b < n; ++b) {
      const float x0 = x[b * in + i];
      float* a = acc + b * width;
#pragma omp simd
      for (int64_t k = 0; k < width; ++k) a[k] += x0 * w0[k];
    }
  }
  for (int64_t b = 0; b < n; ++b) std::memcpy(y + b * out + c0, acc + b * width, sizeof(float) * width);
}

// w [out, in]: y[b, o] = x[b, :] . w[o, :] for the R output channels o = o0 + r * stride and rows
// b0..b0+NB-1.
template <int R, int NB>
static void dot_block(const float* x, const float* w, float* y, int64_t in, int64_t out, int64_t o0, int64_t stride,
                      int64_t b0) {
  vfloat acc[R][NB] = {};
  const float* wr[R];
  for (int r = 0; r < R; ++r) wr[r] = w + (o0 + r * stride) * in;
  const float* xb = x + b0 * in;
  int64_t i = 0;
  for (; i + kWidth <= in; i += kWidth) {
    vfloat wv[R];
    for (int r = 0; r < R; ++r) wv[r] = load_floats(wr[r] + i);
    for (int b = 0; b < NB; ++b) {
      const vfloat xv = load_floats(xb + b * in + i);
      for (int r = 0; r < R; ++r) acc[r][b] += wv[r] * xv;
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int b = 0; b < NB; ++b) {
      float s = lane_sum(acc[r][b]);
      for (int64_t j = i; j < in; ++j) s += xb[b * in + j] * wr[r][j];
      y[(b0 + b) * out + o0 + r * stride] = s;
    }
  }
}

// One block of R output channels against every row, in tiles of up to TILE rows.
template <int R, int TILE>
static void dot_rows(const float* x, const float* w, float* y, int64_t n, int64_t in, int64_t out, int64_t o0,
                     int64_t stride) {
  for (int64_t b0 = 0; b0 < n; b0 += TILE) {
    if (n - b0 >= TILE) {
      dot_block<R, TILE>(x, w, y, in, out, o0, stride, b0);
    } else {
      dot_block<R, 1>(x, w, y, in, out, o0, stride, b0);
    }
  }
}

// Columns per block for n rows: their accumulators fill at most kAccFloats; a multiple of 16, at most 512.
static int64_t block_width(int64_t n) {
  const int64_t width = std::min<int64_t>(512, kAccFloats / std::max<int64_t>(n, 1));
  return std::max<int64_t>(16, width / 16 * 16);
}

static void run_columns(const float* x, const float* w, const float* bias, float* y, int64_t n, int64_t in,
                        int64_t out, int threads) {
  const int64_t per_thread = (out + threads - 1) / std::max(threads, 1);  // narrower blocks keep every thread busy
  const int64_t width = std::min(block_width(n), std::max<int64_t>(16, (per_thread + 15) / 16 * 16));
  const int64_t blocks = (out + width - 1) / width;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    column_block(x, w, bias, y, n, in, out, blk * width, std::min(out, (blk + 1) * width));
  }
}

// Blocks of output channels read side by side (row_streams.h): 6 for one row, else 4 in tiles of 2 rows.
template <int R, int TILE>
static void run_dot_blocks(const float* x, const float* w, float* y, int64_t n, int64_t in, int64_t out,
                           int threads) {
  for_each_stream_block<R>(
      out, threads, [&](int64_t o0, int64_t stride) { dot_rows<R, TILE>(x, w, y, n, in, out, o0, stride); },
      [&](int64_t o) { dot_rows<1, TILE>(x, w, y, n, in, out, o, 1); });
}

static void run_dots(const float* x, const float* w, float* y, int64_t n, int64_t in, int64_t out, int threads) {
  if (n == 1) {
    run_dot_blocks<kDotStreamsOneRow, 1>(x, w, y, n, in, out, threads);
  } else {
    run_dot_blocks<kDotRows, kDotTile>(x, w, y, n, in, out, threads);
  }
}

std::vector<paddle::Tensor> SmallBatchLinear(const paddle::Tensor& x, const paddle::Tensor& w,
                                             const paddle::optional<paddle::Tensor>& bias, int threads,
                                             int transposed) {
  PD_CHECK(x.is_cpu() && x.dtype() == paddle::DataType::FLOAT32 && x.shape().size() >= 1,
           "glm_small_batch_linear: x must be a float32 [..., in] CPU tensor");
  PD_CHECK(w.is_cpu() && w.dtype() == paddle::DataType::FLOAT32 && w.shape().size() == 2,
           "glm_small_batch_linear: w must be a float32 2-D CPU tensor");
  const int64_t in = x.shape().back(), out = w.shape()[transposed ? 0 : 1];
  PD_CHECK(in > 0, "glm_small_batch_linear: x has no inputs");
  const int64_t n = x.numel() / in;
  PD_CHECK(w.shape()[transposed ? 1 : 0] == in, "glm_small_batch_linear: w does not match x's inputs");
  PD_CHECK(n <= kMaxRows, "glm_small_batch_linear: at most 128 rows");
  PD_CHECK(!bias || (!transposed && bias->is_cpu() && bias->dtype() == paddle::DataType::FLOAT32 &&
                     bias->numel() == out),
           "glm_small_batch_linear: bias must be a float32 CPU tensor of w's outputs (not transposed)");
  std::vector<int64_t> shape = x.shape();
  shape.back() = out;  // [..., in] -> [..., out]
  paddle::Tensor y = paddle::empty(shape, paddle::DataType::FLOAT32, x.place());
  if (n == 0 || out == 0) return {y};
  if (transposed) {
    run_dots(x.data<float>(), w.data<float>(), y.data<float>(), n, in, out, threads);
  } else {
    run_columns(x.data<float>(), w.data<float>(), bias ? bias->data<float>() : nullptr, y.data<float>(), n, in, out,
                threads);
  }
  return {y};
}

std::vector<std::vector<int64_t>> SmallBatchLinearShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                                        const paddle::optional<std::vector<int64_t>>& bias, int threads,
                                                        int transposed) {
  std::vector<int64_t> y = x;
  y.back() = w[transposed ? 0 : 1];
  return {y};
}

std::vector<paddle::DataType> SmallBatchLinearDtype(const paddle::DataType& x, const paddle::DataType& w,
                                                   const paddle::optional<paddle::DataType>& bias) {
  return {paddle::DataType::FLOAT32};
}

PD_BUILD_OP(glm_small_batch_linear)
    .Inputs({"X", "W", paddle::Optional("Bias")})
    .Outputs({"Out"})
    .Attrs({"threads: int", "transposed: int"})
    .SetKernelFn(PD_KERNEL(SmallBatchLinear))
    .SetInferShapeFn(PD_INFER_SHAPE(SmallBatchLinearShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SmallBatchLinearDtype));
