// vnni.h — vpdpbusd (AVX512-VNNI: acc += sums of 4 products of unsigned and signed bytes per int32
// lane) for the AVX-512 build, through inline assembly: the build needs no VNNI compiler flag,
// and callers choose it at run time (use_vnni(), isa.h) on CPUs that have it.
#pragma once
#if defined(__AVX512F__)
#include <immintrin.h>

namespace lf::cpu::LF_ISA {

inline __m512i dpbusd(__m512i acc, __m512i u8, __m512i s8) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
  return acc;
}

inline __m256i dpbusd(__m256i acc, __m256i u8, __m256i s8) {
  asm("%{evex%} vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));  // EVEX: AVX512-VNNI + VL
  return acc;
}

}  // namespace lf::cpu::LF_ISA
#endif
