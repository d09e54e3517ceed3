// The float32 vectors the weight-only and small-batch products compute with (GCC vector extensions): kWidth lanes, as wide as
// the build's target allows (AVX-512: 16, AVX2: 8, else 4), loads from unaligned memory and a lane sum.
#pragma once

#include <cstring>

#if defined(__AVX512F__)
constexpr int kWidth = 16;
#elif defined(__AVX2__)
constexpr int kWidth = 8;
#else
constexpr int kWidth = 4;
#endif

typedef float vfloat __attribute__((vector_size(kWidth * sizeof(float))));

static inline vfloat load_floats(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

static inline float lane_sum(vfloat v) {
  float s = 0.f;
  for (int k = 0; k < kWidth; ++k) s += v[k];
  return s;
}
