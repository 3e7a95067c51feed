// Weight decay of one element, shared by the CPU loops (weight_decay_cpu.h)
// and the CUDA kernels (weight_decay_gpu.cuh):
//   var -= var * (weight_decay * lr)
// Keras writes `variable.assign_sub(variable * wd * lr)`; inside a
// tf.function (as in fit()) TensorFlow's graph optimizer folds the two
// scalars first, which is this order, so float32 and float64 results are
// bit-identical to Keras' there. 16-bit types are widened to float32,
// computed, and rounded once on store.
#ifndef TF_ADAGRAD_KERNELS_WEIGHT_DECAY_MATH_H_
#define TF_ADAGRAD_KERNELS_WEIGHT_DECAY_MATH_H_

#include "kernels/host_device.h"

namespace tf_adagrad {

template <typename C>
struct WeightDecayStep {
  C factor;  // weight_decay * lr

  TF_ADAGRAD_HOST_DEVICE C Apply(C var) const { return var - var * factor; }
};

}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_WEIGHT_DECAY_MATH_H_
