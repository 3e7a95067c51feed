// GPU functors for the rowwise Adagrad ops: the TensorFlow side of the CUDA
// kernels in rowwise_gpu.cuh (the op's stream, temporary memory from the
// op's allocator, errors as statuses), and their explicit instantiations.
#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/gpu_op_helpers.h"
#include "kernels/rowwise_functors.h"
#include "kernels/rowwise_gpu.cuh"
#include "ops/adagrad_errors.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace tf_adagrad {
namespace functor {

using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using GPUDevice = Eigen::GpuDevice;

using gpu_op::CudaStatus;
using gpu_op::Stream;

template <typename T>
absl::Status ApplyRowwiseAdagradDense<GPUDevice, T>::operator()(
    OpKernelContext* ctx, T* var, RowwiseAccumulator<T>* accum, const T* grad,
    int64_t num_rows, int64_t row_size,
    const RowwiseStep<RowwiseAccumulator<T>>& step) {
  return CudaStatus(
      ctx, "the rowwise dense update",
      gpu::LaunchRowwiseDense(MathPointer(var), accum, MathPointer(grad),
                              num_rows, row_size, step, Stream(ctx)));
}

template <typename T, typename Index>
absl::Status ApplyRowwiseAdagradSparse<GPUDevice, T, Index>::operator()(
    OpKernelContext* ctx, T* var, RowwiseAccumulator<T>* accum, const T* grad,
    const Index* indices, int64_t nnz, int64_t num_rows, int64_t row_size,
    const RowwiseStep<RowwiseAccumulator<T>>& step) {
  if (nnz == 0) return absl::OkStatus();
  TF_RETURN_IF_ERROR(gpu_op::CheckIndicesInRange(ctx, indices, nnz, num_rows));
  if (row_size == 0) return absl::OkStatus();
  gpu::SparseWorkspace plan;
  Tensor workspace;
  TF_RETURN_IF_ERROR(gpu_op::AllocateSparseWorkspace<Index>(ctx, nnz, num_rows,
                                                            &plan, &workspace));
  return CudaStatus(
      ctx, "the rowwise sparse update",
      gpu::LaunchRowwiseSparse(MathPointer(var), accum, MathPointer(grad),
                               indices, nnz, row_size, step, plan,
                               workspace.flat<int8_t>().data(), Stream(ctx)));
}

#define INSTANTIATE_ROWWISE_GPU_FUNCTORS(T)                         \
  template struct ApplyRowwiseAdagradDense<GPUDevice, T>;           \
  template struct ApplyRowwiseAdagradSparse<GPUDevice, T, int32_t>; \
  template struct ApplyRowwiseAdagradSparse<GPUDevice, T, int64_t>;
TF_CALL_FLOAT_TYPES(INSTANTIATE_ROWWISE_GPU_FUNCTORS)
#undef INSTANTIATE_ROWWISE_GPU_FUNCTORS

}  // namespace functor
}  // namespace tf_adagrad

#endif  // GOOGLE_CUDA
