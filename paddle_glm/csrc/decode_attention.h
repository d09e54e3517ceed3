// A decode step's attention (decode_attention.cc), for the operators that call it inside a larger computation
// (decode_block.cc). Shapes and meaning: decode_attention.cc's header.
#pragma once

#include <cstdint>

#include "paddle/extension.h"

// Fails (PD_CHECK, naming `what`) unless qkv [b, 1, 3 * heads * d], k/v [B, heads, T, d], bias [B, heads, 1, T], index [1] or [b]
// and length fit together and every write index is inside 0..length-1.
void check_decode_attention_inputs(const paddle::Tensor& qkv, const paddle::Tensor& k, const paddle::Tensor& v,
                                   const paddle::Tensor& bias, const paddle::Tensor& index, int64_t length,
                                   const char* what);

// Writes rows 0..b-1 of `qkv`'s keys and values into k/v at their slots and attends over slots 0..length-1:
// out [b, heads * d].
void decode_attention_rows(const float* qkv, int64_t b, paddle::Tensor& k, paddle::Tensor& v, const paddle::Tensor& bias,
                           const paddle::Tensor& index, int64_t length, int threads, float* out);
