// Rowwise Adagrad (FBGEMM's exact rowwise Adagrad), shared by the CPU loops
// (rowwise_cpu.h) and the CUDA kernels (rowwise_gpu.cuh): one accumulator
// per row of the variable, rows being the first axis. For each row r with
// gradient row g (duplicate sparse rows summed first):
//   accum[r] += mean(g * g)
//   var[r]   -= (lr / (sqrt(accum[r]) + epsilon)) * g
// in the accumulator's type: float32 for float16, bfloat16 and float32
// variables, float64 for float64 ones. The multiplier is computed once per
// row, as FBGEMM does.
#ifndef TF_ADAGRAD_KERNELS_ROWWISE_MATH_H_
#define TF_ADAGRAD_KERNELS_ROWWISE_MATH_H_

#include <cstdint>

#include "kernels/adagrad_math.h"
#include "kernels/host_device.h"

namespace tf_adagrad {

// The mean's sum of squares is taken in one fixed order on both devices, so
// that their results agree bit for bit: lane l of kRowwiseLanes adds the
// squares of elements l, l + 32, l + 64, ... in that order, starting from
// +0; then lane l + s is added to lane l for s = 16, 8, 4, 2, 1 (a GPU
// warp's shuffle-down tree). Lanes vectorize on the CPU.
constexpr int kRowwiseLanes = 32;

template <typename C>
TF_ADAGRAD_HOST_DEVICE inline C SumOfLanes(C* partial) {
  for (int s = kRowwiseLanes / 2; s > 0; s /= 2) {
    for (int l = 0; l < s; ++l) partial[l] += partial[l + s];
  }
  return partial[0];
}

// One step's hyperparameters, in the accumulator's type C.
template <typename C>
struct RowwiseStep {
  C lr;
  C epsilon;

  // The row's new accumulator, from the sum of squares of its `row_size`
  // (> 0) gradient elements.
  TF_ADAGRAD_HOST_DEVICE C NewAccumulator(C accum, C sum_of_squares,
                                          int64_t row_size) const {
    return accum + sum_of_squares / static_cast<C>(row_size);
  }

  // What every gradient element of the row is multiplied by before it is
  // subtracted.
  TF_ADAGRAD_HOST_DEVICE C Multiplier(C accum) const {
    return lr / (CorrectlyRoundedSqrt(accum) + epsilon);
  }
};

}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_ROWWISE_MATH_H_
