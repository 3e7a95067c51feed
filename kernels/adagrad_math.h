// The Adagrad update of one element, shared by the CPU loops
// (adagrad_cpu.h) and the CUDA kernels (adagrad_gpu.cuh), in the two forms
// the ops offer (their `epsilon_placement` attribute):
//   accum += g * g
//   var   -= lr * g / sqrt(accum + epsilon)       inside the square root
//                                                 (Keras 3, tf_keras)
//   var   -= lr * g / (sqrt(accum) + epsilon)     outside it (TensorFlow's
//                                                 ApplyAdagradV2)
// 16-bit types are widened to float32, computed, and rounded once on store
// (half_types.h).
#ifndef TF_ADAGRAD_KERNELS_ADAGRAD_MATH_H_
#define TF_ADAGRAD_KERNELS_ADAGRAD_MATH_H_

#include <cmath>

#include "kernels/host_device.h"

namespace tf_adagrad {

// IEEE square root on both devices: in device code std::sqrt(float) may
// compile to an approximation (clang does that), so the GPU asks for the
// correctly rounded instruction by name.
TF_ADAGRAD_HOST_DEVICE inline float CorrectlyRoundedSqrt(float x) {
#ifdef __CUDA_ARCH__
  return __fsqrt_rn(x);
#else
  return std::sqrt(x);
#endif
}

TF_ADAGRAD_HOST_DEVICE inline double CorrectlyRoundedSqrt(double x) {
#ifdef __CUDA_ARCH__
  return __dsqrt_rn(x);
#else
  return std::sqrt(x);
#endif
}

enum class EpsilonPlacement { kInsideSqrt, kOutsideSqrt };

// One step's hyperparameters and formula, in the compute type C. The loops
// and kernels take a step and call Apply per element; the placement is a
// template argument, so each form compiles (and vectorizes) on its own.
template <typename C, EpsilonPlacement kPlacement>
struct AdagradStep {
  static constexpr EpsilonPlacement kEpsilonPlacement = kPlacement;
  C lr;
  C epsilon;

  // Same operation order as the reference implementations (Keras 3's
  // `lr * g / sqrt(accum + epsilon)`, ApplyAdagradV2's CPU kernel
  // `g * lr / (sqrt(accum) + epsilon)`; multiplication commutes exactly), so
  // float32 results are bit-identical to theirs.
  TF_ADAGRAD_HOST_DEVICE void Apply(C grad, C* var, C* accum) const {
    *accum += grad * grad;
    if constexpr (kPlacement == EpsilonPlacement::kInsideSqrt) {
      *var -= lr * grad / CorrectlyRoundedSqrt(*accum + epsilon);
    } else {
      *var -= lr * grad / (CorrectlyRoundedSqrt(*accum) + epsilon);
    }
  }
};

// Calls fn(step) with the AdagradStep of `placement`: the one place where
// the run-time attribute becomes a type.
template <typename C, typename Fn>
decltype(auto) WithAdagradStep(EpsilonPlacement placement, C lr, C epsilon,
                               const Fn& fn) {
  if (placement == EpsilonPlacement::kOutsideSqrt) {
    return fn(AdagradStep<C, EpsilonPlacement::kOutsideSqrt>{lr, epsilon});
  }
  return fn(AdagradStep<C, EpsilonPlacement::kInsideSqrt>{lr, epsilon});
}

}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_ADAGRAD_MATH_H_
