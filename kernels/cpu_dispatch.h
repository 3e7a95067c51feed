// One CPU loop compiled for several x86 instruction sets, and the choice at
// run time of the widest one the CPU has, so the library still runs on any
// x86-64. Every loop that benefits (the dense and the sparse update) goes
// through here; none writes its own variants.
//
// A loop is a function object whose call operator is always inlined: each
// variant below inlines it and so vectorizes it for its own vector width.
// No FMA (the build has -ffp-contract=off), and vector sqrt and divide are
// IEEE, so every variant gives the baseline's bits.
#ifndef TF_ADAGRAD_KERNELS_CPU_DISPATCH_H_
#define TF_ADAGRAD_KERNELS_CPU_DISPATCH_H_

#include "kernels/host_device.h"

namespace tf_adagrad {

// kBaseline is SSE2 on x86-64 (and the plain build elsewhere).
enum class VectorIsa { kBaseline, kAvx2, kAvx512 };

// The widest variant this CPU runs. __builtin_cpu_supports also checks that
// the OS saves the registers' state.
inline VectorIsa CpuVectorIsa() {
#ifdef TF_ADAGRAD_X86
  static const VectorIsa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl")) {
      return VectorIsa::kAvx512;
    }
    return __builtin_cpu_supports("avx2") ? VectorIsa::kAvx2
                                          : VectorIsa::kBaseline;
  }();
  return isa;
#else
  return VectorIsa::kBaseline;
#endif
}

namespace cpu_variants {

template <typename Loop, typename... Args>
void Baseline(const Loop& loop, const Args&... args) {
  loop(args...);
}

#ifdef TF_ADAGRAD_X86
template <typename Loop, typename... Args>
__attribute__((target("avx2"))) void Avx2(const Loop& loop,
                                          const Args&... args) {
  loop(args...);
}

template <typename Loop, typename... Args>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void Avx512(
    const Loop& loop, const Args&... args) {
  loop(args...);
}
#endif  // TF_ADAGRAD_X86

}  // namespace cpu_variants

// Runs loop(args...) compiled for `kIsa`; the caller makes sure the CPU has
// it. Off x86, every kIsa runs the baseline.
template <VectorIsa kIsa, typename Loop, typename... Args>
void RunCompiledFor(const Loop& loop, const Args&... args) {
#ifdef TF_ADAGRAD_X86
  if constexpr (kIsa == VectorIsa::kAvx512) {
    cpu_variants::Avx512(loop, args...);
  } else if constexpr (kIsa == VectorIsa::kAvx2) {
    cpu_variants::Avx2(loop, args...);
  } else {
    cpu_variants::Baseline(loop, args...);
  }
#else
  cpu_variants::Baseline(loop, args...);
#endif
}

// Runs loop(args...) compiled for the widest instruction set of this CPU.
template <typename Loop, typename... Args>
void RunOnWidestIsa(const Loop& loop, const Args&... args) {
  switch (CpuVectorIsa()) {
    case VectorIsa::kAvx512:
      return RunCompiledFor<VectorIsa::kAvx512>(loop, args...);
    case VectorIsa::kAvx2:
      return RunCompiledFor<VectorIsa::kAvx2>(loop, args...);
    case VectorIsa::kBaseline:
      break;
  }
  RunCompiledFor<VectorIsa::kBaseline>(loop, args...);
}

}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_CPU_DISPATCH_H_
