// A GLM block's decode step (decode_block.cc), for the operators that run it: glm_decode_block (one block) and
// decode_stack.cc (every block of a stack in one call).
#pragma once

#include <cstdint>
#include <vector>

#include "paddle/extension.h"

// y [b * hidden] = the block's step of x [b, 1, hidden] (y may be x's own data), writing the step's keys and
// values into k and v; fails (PD_CHECK) on inputs glm_decode_block refuses. params, k, v, bias, index and length
// as glm_decode_block's.
void decode_block_step(const paddle::Tensor& x, const std::vector<paddle::Tensor>& params, paddle::Tensor& k,
                       paddle::Tensor& v, const paddle::Tensor& bias, const paddle::Tensor& index, int64_t length,
                       int bits, int group_size, int activation_bits, float eps1, float eps2, int threads, float* y);
