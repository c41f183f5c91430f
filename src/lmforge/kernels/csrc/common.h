// Shared by every kernel file: the instruction-set levels, run-time CPU detection, and the override
// the parity tests use to force a path (AVX2 on an AVX-512 machine). No file is compiled with
// -march=native: each fast function carries a target attribute, and is called only when the CPU
// (and the override) allow it.
#pragma once

#include <atomic>
#include <cstdint>

// Target attributes for the fast paths. A function carrying one may only be called when the matching
// use_*() / active_isa() check passed. The AVX-512 base set has no VNNI/BF16, so the compiler cannot emit
// those instructions into code that also runs on AVX-512 CPUs without them (Skylake-X).
#define LMFORGE_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define LMFORGE_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define LMFORGE_TARGET_AVX512_VNNI \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,avx512vnni")))
#define LMFORGE_TARGET_AVX512_BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,avx512bf16")))

namespace lmforge {

// Ordered: a level includes the ones below it.
enum Isa : int64_t {
  ISA_SCALAR = 0,    // portable C++ (the compiler's baseline x86-64)
  ISA_AVX2 = 1,      // AVX2 + FMA + F16C
  ISA_AVX512 = 2,    // AVX-512 F/BW/VL/DQ (+ VNNI and BF16 checked separately: see has_vnni/has_bf16)
};

inline int64_t detected_isa() {
  static const int64_t level = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      return (int64_t)ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
      return (int64_t)ISA_AVX2;
    return (int64_t)ISA_SCALAR;
  }();
  return level;
}

inline bool cpu_has_vnni() {  // AVX512-VNNI (vpdpbusd on zmm)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vnni");
}

inline bool cpu_has_bf16() {  // AVX512-BF16 (vdpbf16ps)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16");
}

// The level requested by lmforge::set_isa (-1: none, use what the CPU has).
inline std::atomic<int64_t>& requested_isa() {
  static std::atomic<int64_t> level{-1};
  return level;
}

// The level the kernels run at now: the detected one, capped by the override.
inline int64_t active_isa() {
  int64_t req = requested_isa().load(std::memory_order_relaxed);
  int64_t det = detected_isa();
  return req < 0 || req > det ? det : req;
}

// VNNI / BF16 instructions are used only at the AVX-512 level (forcing AVX2 turns them off too).
inline bool use_vnni() { return active_isa() >= ISA_AVX512 && cpu_has_vnni(); }
inline bool use_bf16() { return active_isa() >= ISA_AVX512 && cpu_has_bf16(); }

}  // namespace lmforge
