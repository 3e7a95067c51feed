// GPU functors for the rowwise Adagrad ops: the TensorFlow side of the CUDA
// kernels in rowwise_gpu.cuh (the op's stream, temporary memory from the
// op's allocator, errors as statuses), and their explicit instantiations.
#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/gpu_op_helpers.h"
#include "kernels/rowwise_functors.h"
#include "kernels/rowwise_gpu.cuh"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"

namespace tf_adagrad {
namespace functor {

using ::tensorflow::OpKernelContext;
using GPUDevice = Eigen::GpuDevice;

using gpu_op::CudaStatus;
using gpu_op::Stream;

template <typename T>
absl::Status ApplyRowwiseAdagradDense<GPUDevice, T>::operator()(
    OpKernelContext* ctx, T* var, RowwiseAccumulator<T>* accum, const T* grad,
    int64_t num_rows, int64_t row_size,
    const RowwiseStep<RowwiseAccumulator<T>>& step,
    const WeightRounding& rounding) {
  return CudaStatus(
      ctx, "the rowwise dense update",
      gpu::LaunchRowwiseDense(MathPointer(var), accum, MathPointer(grad),
                              num_rows, row_size, step, rounding, Stream(ctx)));
}

template <typename T, typename Index>
absl::Status ApplyRowwiseAdagradSparse<GPUDevice, T, Index>::operator()(
    OpKernelContext* ctx, T* var, RowwiseAccumulator<T>* accum, const T* grad,
    const Index* indices, int64_t nnz, int64_t num_rows, int64_t row_size,
    const RowwiseStep<RowwiseAccumulator<T>>& step,
    const WeightRounding& rounding) {
  const auto launch = [&](const gpu::SparseWorkspace& plan, void* workspace,
                          cudaStream_t stream) {
    return gpu::LaunchRowwiseSparse(MathPointer(var), accum, MathPointer(grad),
                                    indices, nnz, row_size, step, rounding,
                                    plan, workspace, stream);
  };
  return gpu_op::UpdateSparseRowsOnGpu(ctx, "the rowwise sparse update",
                                       indices, nnz, num_rows, row_size,
                                       launch);
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
