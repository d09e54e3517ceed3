// How the [out, in] products (weight_only_linear.cc, small_batch_linear.cc's transposed kernel) share
// the output channels among OpenMP threads so that a decode step reads its weights from memory at
// full speed.
//
// Each thread takes a contiguous range of output channels, splits it into S equal parts and reads
// the parts side by side: block i holds channels a + i, a + q + i, ..., a + (S-1)q + i (q = the
// part's length), so the thread reads S sequential streams of memory at once. One stream per
// thread (S adjacent channels a block) reached ~13-14 GB/s from DRAM on a 2-core AMD EPYC with
// int8 weights of glm-large's and glm-10b's shapes; six streams ~22-34 GB/s, above what one stream of
// plain loads reads (~18-26 GB/s): the hardware prefetchers keep more lines in flight with more streams.
// The channels left over after S * q (fewer than S) go one at a time.
#pragma once

#include <omp.h>

#include <cstdint>

// block(o0, stride): the S channels o0, o0 + stride, ..., o0 + (S-1) * stride; single(o): channel o.
template <int S, typename Block, typename Single>
static void for_each_stream_block(int64_t out, int threads, const Block& block, const Single& single) {
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), count = omp_get_num_threads();
    const int64_t begin = out * t / count, end = out * (t + 1) / count;
    const int64_t part = (end - begin) / S;
    for (int64_t i = 0; i < part; ++i) block(begin + i, part);
    for (int64_t o = begin + S * part; o < end; ++o) single(o);
  }
}
