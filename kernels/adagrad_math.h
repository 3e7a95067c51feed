// The Adagrad update of one element, shared by the CPU loops
// (adagrad_cpu.h) and the CUDA kernels (adagrad_gpu.cuh).
//
// Keras 3's formula, epsilon inside the square root:
//   accum += g * g
//   var   -= lr * g / sqrt(accum + epsilon)
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

// One element of the update, in the compute type. Same operation order as
// Keras 3 (`lr * g / sqrt(accum + epsilon)`), so float32 results are
// bit-identical to keras.optimizers.Adagrad's.
template <typename C>
TF_ADAGRAD_HOST_DEVICE inline void UpdateElement(C lr, C epsilon, C grad,
                                                 C* var, C* accum) {
  *accum += grad * grad;
  *var -= lr * grad / CorrectlyRoundedSqrt(*accum + epsilon);
}

}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_ADAGRAD_MATH_H_
