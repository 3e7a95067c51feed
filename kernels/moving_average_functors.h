// Device functors for TfAdagrad>MovingAverageRows and
// TfAdagrad>MovingAverageAllRows, declared once here and
// specialized per device: CPU in moving_average_kernels.cc, GPU in
// moving_average_kernels.cu.cc.
#ifndef TF_ADAGRAD_KERNELS_MOVING_AVERAGE_FUNCTORS_H_
#define TF_ADAGRAD_KERNELS_MOVING_AVERAGE_FUNCTORS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/adagrad_functors.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor_types.h"

namespace tf_adagrad {
namespace functor {

template <typename Device, typename T, typename Index>
struct MovingAverageRows {
  // average and var are [num_rows, row_size], last_step [num_rows]. Brings
  // each distinct row named by indices to `step`. InvalidArgument, with
  // nothing written, if an index is out of [0, num_rows).
  absl::Status operator()(tensorflow::OpKernelContext* ctx,
                          typename tensorflow::TTypes<T>::Matrix average,
                          typename tensorflow::TTypes<int64_t>::Vec last_step,
                          typename tensorflow::TTypes<T>::ConstMatrix var,
                          double momentum, int64_t step,
                          typename tensorflow::TTypes<Index>::ConstVec indices);
};

template <typename Device, typename T>
struct MovingAverageAllRows {
  // Every row of average, as MovingAverageRows with every index once.
  absl::Status operator()(tensorflow::OpKernelContext* ctx,
                          typename tensorflow::TTypes<T>::Matrix average,
                          typename tensorflow::TTypes<int64_t>::Vec last_step,
                          typename tensorflow::TTypes<T>::ConstMatrix var,
                          double momentum, int64_t step);
};

#if GOOGLE_CUDA
template <typename T>
struct MovingAverageAllRows<Eigen::GpuDevice, T> {
  absl::Status operator()(tensorflow::OpKernelContext* ctx,
                          typename tensorflow::TTypes<T>::Matrix average,
                          typename tensorflow::TTypes<int64_t>::Vec last_step,
                          typename tensorflow::TTypes<T>::ConstMatrix var,
                          double momentum, int64_t step);
};

template <typename T, typename Index>
struct MovingAverageRows<Eigen::GpuDevice, T, Index> {
  absl::Status operator()(tensorflow::OpKernelContext* ctx,
                          typename tensorflow::TTypes<T>::Matrix average,
                          typename tensorflow::TTypes<int64_t>::Vec last_step,
                          typename tensorflow::TTypes<T>::ConstMatrix var,
                          double momentum, int64_t step,
                          typename tensorflow::TTypes<Index>::ConstVec indices);
};

#define TF_ADAGRAD_DECLARE_GPU_FUNCTORS(T)                                \
  extern template struct MovingAverageAllRows<Eigen::GpuDevice, T>;       \
  extern template struct MovingAverageRows<Eigen::GpuDevice, T, int32_t>; \
  extern template struct MovingAverageRows<Eigen::GpuDevice, T, int64_t>;
TF_CALL_FLOAT_TYPES(TF_ADAGRAD_DECLARE_GPU_FUNCTORS)
#undef TF_ADAGRAD_DECLARE_GPU_FUNCTORS
#endif  // GOOGLE_CUDA

}  // namespace functor
}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_MOVING_AVERAGE_FUNCTORS_H_
