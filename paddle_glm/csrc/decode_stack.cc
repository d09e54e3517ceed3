// Every block of a GLM stack's decode step in one call: decode_block.cc's step for each layer in turn. Not a Paddle
// operator: cpu_operators.decode_stack calls glm_decode_stack through ctypes (the library is the one Paddle loads).
//
// Why: a custom operator's call costs ~60 us of Paddle's dispatch on this machine whatever its work
// (glm_decode_block on a block of 64 features), and the Python around each block's call ~50 us more: ~2.6 ms
// of a glm-large decode step (24 blocks) that takes ~15-18 ms. Here the step costs one call.
//
// The tensors come as a table of int64, kFields per tensor: its address, dtype (kDtypes' index), number of
// dims, then up to 4 dims. Rows: x [b, 1, hidden], out (the same shape; may be x), the key bias, the write
// index, then per layer glm_decode_block's 16 params in its order, then per layer its keys and its values. Each
// becomes a paddle::Tensor over the same memory (paddle::from_blob, no copy) and meets glm_decode_block's checks.
#include <cstdint>
#include <cstring>
#include <exception>
#include <vector>

#include "decode_block.h"
#include "paddle/extension.h"

namespace {

constexpr int kFields = 7;
constexpr int kParams = 16;  // a block's params, as glm_decode_block takes them
const paddle::DataType kDtypes[] = {paddle::DataType::FLOAT32, paddle::DataType::INT8, paddle::DataType::UINT8,
                                    paddle::DataType::INT64};

paddle::Tensor wrap(const int64_t* row) {
  PD_CHECK(row[1] >= 0 && row[1] < 4 && row[2] >= 1 && row[2] <= 4, "glm_decode_stack: a bad table row");
  const std::vector<int64_t> shape(row + 3, row + 3 + row[2]);
  return paddle::from_blob(reinterpret_cast<void*>(row[0]), shape, kDtypes[row[1]], phi::DataLayout::NCHW,
                           phi::CPUPlace());
}

void run_stack(const int64_t* table, int64_t layers, int64_t length, int bits, int group_size, int activation_bits,
               const float* epsilons, int threads) {
  const paddle::Tensor x = wrap(table);
  paddle::Tensor out = wrap(table + kFields);
  const paddle::Tensor bias = wrap(table + 2 * kFields), index = wrap(table + 3 * kFields);
  PD_CHECK(out.dtype() == paddle::DataType::FLOAT32 && out.shape() == x.shape(),
           "glm_decode_stack: out must be float32 in x's shape");
  float* y = out.data<float>();
  for (int64_t l = 0; l < layers; ++l) {
    const int64_t* rows = table + (4 + l * kParams) * kFields;
    std::vector<paddle::Tensor> params;
    params.reserve(kParams);
    for (int j = 0; j < kParams; ++j) params.push_back(wrap(rows + j * kFields));
    const int64_t* buffers = table + (4 + layers * kParams + 2 * l) * kFields;
    paddle::Tensor k = wrap(buffers), v = wrap(buffers + kFields);
    decode_block_step(l == 0 ? x : out, params, k, v, bias, index, length, bits, group_size, activation_bits,
                      epsilons[2 * l], epsilons[2 * l + 1], threads, y);
  }
}

}  // namespace

// Runs the stack's step; 0, or 1 with the failure's message in error (error_size bytes, NUL-terminated).
extern "C" int glm_decode_stack(const int64_t* table, int64_t layers, int64_t length, int bits, int group_size,
                                int activation_bits, const float* epsilons, int threads, char* error,
                                int64_t error_size) {
  try {
    run_stack(table, layers, length, bits, group_size, activation_bits, epsilons, threads);
    return 0;
  } catch (const std::exception& e) {
    std::strncpy(error, e.what(), static_cast<size_t>(error_size - 1));
  } catch (...) {
    std::strncpy(error, "glm_decode_stack: an unknown C++ exception", static_cast<size_t>(error_size - 1));
  }
  error[error_size - 1] = '\0';
  return 1;
}
