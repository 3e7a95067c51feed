// Device functors for the rowwise Adagrad ops, declared once here and
// specialized per device: CPU in rowwise_kernels.cc, GPU in
// rowwise_kernels.cu.cc. The OpKernels validate every input before calling
// them; the sparse functor may still reject indices out of range, and then
// it writes nothing.
#ifndef TF_ADAGRAD_KERNELS_ROWWISE_FUNCTORS_H_
#define TF_ADAGRAD_KERNELS_ROWWISE_FUNCTORS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/adagrad_functors.h"
#include "kernels/rowwise_math.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"

namespace tf_adagrad {

// The accumulator's element type of a variable of type T (also the type of
// lr and epsilon): float32 for float16, bfloat16 and float32, float64 for
// float64.
template <typename T>
using RowwiseAccumulator = ComputeType<typename MathType<T>::type>;

namespace functor {

template <typename Device, typename T>
struct ApplyRowwiseAdagradDense {
  // var and grad are [num_rows, row_size] with row_size > 0, accum is
  // [num_rows]; new weights are stored as `rounding` says. Fails only if
  // the device does (a CUDA error).
  absl::Status operator()(tensorflow::OpKernelContext* ctx, T* var,
                          RowwiseAccumulator<T>* accum, const T* grad,
                          int64_t num_rows, int64_t row_size,
                          const RowwiseStep<RowwiseAccumulator<T>>& step,
                          const WeightRounding& rounding);
};

template <typename Device, typename T, typename Index>
struct ApplyRowwiseAdagradSparse {
  // var is [num_rows, row_size] with row_size > 0, accum [num_rows], grad
  // [nnz, row_size]. Returns InvalidArgument, with nothing written, if an
  // index is out of [0, num_rows).
  absl::Status operator()(tensorflow::OpKernelContext* ctx, T* var,
                          RowwiseAccumulator<T>* accum, const T* grad,
                          const Index* indices, int64_t nnz, int64_t num_rows,
                          int64_t row_size,
                          const RowwiseStep<RowwiseAccumulator<T>>& step,
                          const WeightRounding& rounding);
};

#if GOOGLE_CUDA
template <typename T>
struct ApplyRowwiseAdagradDense<Eigen::GpuDevice, T> {
  absl::Status operator()(tensorflow::OpKernelContext* ctx, T* var,
                          RowwiseAccumulator<T>* accum, const T* grad,
                          int64_t num_rows, int64_t row_size,
                          const RowwiseStep<RowwiseAccumulator<T>>& step,
                          const WeightRounding& rounding);
};

template <typename T, typename Index>
struct ApplyRowwiseAdagradSparse<Eigen::GpuDevice, T, Index> {
  absl::Status operator()(tensorflow::OpKernelContext* ctx, T* var,
                          RowwiseAccumulator<T>* accum, const T* grad,
                          const Index* indices, int64_t nnz, int64_t num_rows,
                          int64_t row_size,
                          const RowwiseStep<RowwiseAccumulator<T>>& step,
                          const WeightRounding& rounding);
};

#define TF_ADAGRAD_DECLARE_ROWWISE_GPU_FUNCTORS(T)                      \
  extern template struct ApplyRowwiseAdagradDense<Eigen::GpuDevice, T>; \
  extern template struct ApplyRowwiseAdagradSparse<Eigen::GpuDevice, T, \
                                                   int32_t>;            \
  extern template struct ApplyRowwiseAdagradSparse<Eigen::GpuDevice, T, \
                                                   int64_t>;
TF_CALL_FLOAT_TYPES(TF_ADAGRAD_DECLARE_ROWWISE_GPU_FUNCTORS)
#undef TF_ADAGRAD_DECLARE_ROWWISE_GPU_FUNCTORS
#endif  // GOOGLE_CUDA

}  // namespace functor
}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_ROWWISE_FUNCTORS_H_
