// The exponential moving average of a row that has not changed, shared by
// the CPU loop (moving_average_cpu.h) and the CUDA kernels
// (moving_average_gpu.cuh). Between two updates of a row its weights w stay
// the same, so k steps of Keras' `average = m * average + (1 - m) * w`
// collapse to
//   average = w + m^k * (average - w)
// which lets an optimizer bring a row's average up to date only when the row
// changes. m^k is computed in double; 16-bit types are widened to float32,
// computed, and rounded once on store.
#ifndef TF_ADAGRAD_KERNELS_MOVING_AVERAGE_MATH_H_
#define TF_ADAGRAD_KERNELS_MOVING_AVERAGE_MATH_H_

#include <cmath>
#include <cstdint>

#include "kernels/host_device.h"

namespace tf_adagrad {

// m^k for k > 0 steps (a row already up to date is left as it is).
TF_ADAGRAD_HOST_DEVICE inline double MomentumPower(double momentum,
                                                   int64_t steps) {
  return pow(momentum, static_cast<double>(steps));
}

template <typename C>
TF_ADAGRAD_HOST_DEVICE inline C CaughtUpAverage(C average, C weight, C factor) {
  return weight + factor * (average - weight);
}

}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_MOVING_AVERAGE_MATH_H_
