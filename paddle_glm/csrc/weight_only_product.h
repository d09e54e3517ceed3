// The weight-only int8/int4 product of weight_only_linear.cc, for the operators that call it inside a larger
// computation (decode_block.cc). Layouts: weight_only_linear.cc's header.
#pragma once

#include <cstdint>

#include "paddle/extension.h"

// Fails (PD_CHECK, naming `what`) unless w/scale/bias are a valid `bits`-bit weight for `in` input features.
void check_weight_only_weight(const paddle::Tensor& w, const paddle::Tensor& scale, const paddle::Tensor* bias,
                              int64_t in, int bits, int group_size, const char* what);

// Fails (PD_CHECK, naming `what`) unless activation_bits is 16 or 8.
void check_activation_bits(int activation_bits, const char* what);

// y [n, out] = x [n, in] . dequantize(w)^T (+ bias [out] when not null), on `threads` OpenMP threads; int4 on the
// integer route rounds x to `activation_bits` (16 or 8) bits (int4_integer_product.h).
void weight_only_product(const float* x, int64_t n, int64_t in, const paddle::Tensor& w, const paddle::Tensor& scale,
                         const float* bias, int bits, int group_size, int activation_bits, int threads, float* y);
