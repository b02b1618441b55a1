// rope_simd.h — vector helpers for the RoPE kernel beyond vec.h, per ISA build.
//   vswap_pairs(v)      lanes (0 1)(2 3)... swapped pairwise
//   vfmaddsub(a, b, c)  a*b - c in even lanes, a*b + c in odd lanes
#pragma once
#include "cpu/vec.h"

namespace lf::cpu::LF_ISA {

#if defined(__AVX512F__)
inline V vswap_pairs(V v) { return _mm512_permute_ps(v, 0xB1); }
inline V vfmaddsub(V a, V b, V c) { return _mm512_fmaddsub_ps(a, b, c); }
#elif defined(__AVX2__)
inline V vswap_pairs(V v) { return _mm256_permute_ps(v, 0xB1); }
inline V vfmaddsub(V a, V b, V c) { return _mm256_fmaddsub_ps(a, b, c); }
#endif

}  // namespace lf::cpu::LF_ISA
