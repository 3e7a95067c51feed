// Device functors for the weight decay ops, declared once here and
// specialized per device: CPU in weight_decay_kernels.cc, GPU in
// weight_decay_kernels.cu.cc. The OpKernels validate every input first; the
// rows functor still rejects indices out of range, and then writes nothing.
#ifndef TF_ADAGRAD_KERNELS_WEIGHT_DECAY_FUNCTORS_H_
#define TF_ADAGRAD_KERNELS_WEIGHT_DECAY_FUNCTORS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/adagrad_functors.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor_types.h"

namespace tf_adagrad {
namespace functor {

template <typename Device, typename T>
struct DecayWeights {
  // var -= var * weight_decay * lr for every element, in one pass.
  absl::Status operator()(tensorflow::OpKernelContext* ctx,
                          typename tensorflow::TTypes<T>::Flat var, T lr,
                          T weight_decay);
};

template <typename Device, typename T, typename Index>
struct DecayRows {
  // The same for the rows of var ([num_rows, row_size]) named by indices,
  // each distinct row once. InvalidArgument, with nothing written, if an
  // index is out of [0, num_rows).
  absl::Status operator()(tensorflow::OpKernelContext* ctx,
                          typename tensorflow::TTypes<T>::Matrix var, T lr,
                          T weight_decay,
                          typename tensorflow::TTypes<Index>::ConstVec indices);
};

#if GOOGLE_CUDA
template <typename T>
struct DecayWeights<Eigen::GpuDevice, T> {
  absl::Status operator()(tensorflow::OpKernelContext* ctx,
                          typename tensorflow::TTypes<T>::Flat var, T lr,
                          T weight_decay);
};

template <typename T, typename Index>
struct DecayRows<Eigen::GpuDevice, T, Index> {
  absl::Status operator()(tensorflow::OpKernelContext* ctx,
                          typename tensorflow::TTypes<T>::Matrix var, T lr,
                          T weight_decay,
                          typename tensorflow::TTypes<Index>::ConstVec indices);
};

#define TF_ADAGRAD_DECLARE_GPU_FUNCTORS(T)                        \
  extern template struct DecayWeights<Eigen::GpuDevice, T>;       \
  extern template struct DecayRows<Eigen::GpuDevice, T, int32_t>; \
  extern template struct DecayRows<Eigen::GpuDevice, T, int64_t>;
TF_CALL_FLOAT_TYPES(TF_ADAGRAD_DECLARE_GPU_FUNCTORS)
#undef TF_ADAGRAD_DECLARE_GPU_FUNCTORS
#endif  // GOOGLE_CUDA

}  // namespace functor
}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_WEIGHT_DECAY_FUNCTORS_H_
