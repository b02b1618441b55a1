// isa.cpp — run-time choice of the CPU vector path (see isa.h).
#include "isa.h"

#include <cstdlib>
#include <cstring>

#include "tensor.h"

namespace lf {

Isa cpu_best_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // libgcc's checks include the OS's XSAVE state support (XGETBV).
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("fma"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::scalar;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

static Isa parse_isa(const char* name) {
  if (!std::strcmp(name, "scalar")) return Isa::scalar;
  if (!std::strcmp(name, "avx2")) return Isa::avx2;
  if (!std::strcmp(name, "avx512")) return Isa::avx512;
  fail_value("unknown ISA '", name, "'; expected scalar, avx2 or avx512");
}

static Isa initial_isa() {
  Isa best = cpu_best_isa();
  const char* env = std::getenv("LLMFORGE_ISA");
  if (env && *env) {
    Isa want = parse_isa(env);
    if (static_cast<int>(want) < static_cast<int>(best)) return want;
  }
  return best;
}

static Isa g_isa = initial_isa();

Isa current_isa() { return g_isa; }

void set_isa(const char* name) {
  Isa want = parse_isa(name);
  Isa best = cpu_best_isa();
  LF_CHECK(static_cast<int>(want) <= static_cast<int>(best), "this CPU does not support ", name,
           " (best available: ", isa_name(best), ")");
  g_isa = want;
}

bool cpu_has_vnni() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return cpu_best_isa() == Isa::avx512 && __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

bool cpu_has_bf16_dot() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
#else
  return false;
#endif
}

static bool g_vnni = cpu_has_vnni() && !(std::getenv("LLMFORGE_NO_VNNI") && *std::getenv("LLMFORGE_NO_VNNI"));

bool use_vnni() { return g_vnni && g_isa == Isa::avx512; }

void set_vnni(bool on) {
  LF_CHECK(!on || cpu_has_vnni(), "this CPU has no AVX512-VNNI");
  g_vnni = on;
}

}  // namespace lf
