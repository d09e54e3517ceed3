// The int4 weight-only product on AVX2 CPUs with the activations rounded to int16 or int8
// (int4_integer_product.cc).
#pragma once

#include <cstdint>

// y [n, out] = x [n, in] . dequantize(w)^T for int4 w (weight_only_linear.cc's layout), x rounded per group to
// `activation_bits` (16 or 8) bits, on `threads` OpenMP threads; false (nothing written) where it does not apply:
// a build without AVX2 and FMA, an input size that is not a multiple of 64, or a group size other than 16, 32 or a
// multiple of 64 up to 4096.
bool int4_integer_product(const float* x, int64_t n, int64_t in, const int8_t* w, const float* scale, int64_t out,
                          int group_size, int activation_bits, int threads, float* y);

// For Python, through ctypes: 1 when int4_integer_product takes products of `in` inputs in groups of group_size, 0
// when it does not, -1 when the library was built without the route (no AVX2 and FMA).
extern "C" int glm_int4_integer_route(int64_t in, int group_size);
