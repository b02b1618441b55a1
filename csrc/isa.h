// isa.h — which CPU vector path runs. Every kernel in csrc/cpu/ is compiled once
// per ISA into namespace lf::cpu::{scalar,avx2,avx512}; LF_CPU_DISPATCH calls the
// best one this CPU (and the OS) supports, or a lower one chosen with set_isa()
// or the LLMFORGE_ISA environment variable (for tests and benchmarks).
#pragma once

namespace lf {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

Isa cpu_best_isa();            // what the hardware supports
Isa current_isa();             // what kernels use now
void set_isa(const char* name);  // "scalar" | "avx2" | "avx512"; raises if unsupported
const char* isa_name(Isa isa);

// AVX512-VNNI (int8 dot products, vpdpbusd): an extra the AVX-512 kernels use where the CPU has
// it (Cascade Lake, Ice Lake, Zen 4 on) unless LLMFORGE_NO_VNNI is set or set_vnni(false).
bool cpu_has_vnni();
bool use_vnni();
void set_vnni(bool on);  // raises when turning it on for a CPU without it

// Does the CPU multiply bf16 natively (AVX512-BF16 or AMX-BF16)? torch's bf16 matmuls then run at
// twice the float32 rate; training's dtype "auto" picks bf16 autocast on such CPUs.
bool cpu_has_bf16_dot();

}  // namespace lf

#define LF_CPU_DISPATCH(fn, ...)                                          \
  do {                                                                    \
    switch (::lf::current_isa()) {                                        \
      case ::lf::Isa::avx512: ::lf::cpu::avx512::fn(__VA_ARGS__); break;  \
      case ::lf::Isa::avx2: ::lf::cpu::avx2::fn(__VA_ARGS__); break;      \
      default: ::lf::cpu::scalar::fn(__VA_ARGS__); break;                 \
    }                                                                     \
  } while (0)

// Declares one kernel signature in all three ISA namespaces.
#define LF_DECLARE_CPU_KERNEL(ret, fn, ...)          \
  namespace lf::cpu::scalar { ret fn(__VA_ARGS__); } \
  namespace lf::cpu::avx2 { ret fn(__VA_ARGS__); }   \
  namespace lf::cpu::avx512 { ret fn(__VA_ARGS__); }
