// GPU functor for TfAdagrad>MovingAverageRows: the TensorFlow side of the
// CUDA kernels in moving_average_gpu.cuh, and its explicit instantiations.
#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/gpu_op_helpers.h"
#include "kernels/moving_average_functors.h"
#include "kernels/moving_average_gpu.cuh"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace tf_adagrad {
namespace functor {

using ::tensorflow::OpKernelContext;
using ::tensorflow::TTypes;
using GPUDevice = Eigen::GpuDevice;

template <typename T, typename Index>
absl::Status MovingAverageRows<GPUDevice, T, Index>::operator()(
    OpKernelContext* ctx, typename TTypes<T>::Matrix average,
    typename TTypes<int64_t>::Vec last_step,
    typename TTypes<T>::ConstMatrix var, double momentum, int64_t step,
    typename TTypes<Index>::ConstVec indices) {
  const int64_t nnz = indices.size();
  const int64_t row_size = var.dimension(1);
  const auto launch = [&](const gpu::SparseWorkspace& plan, void* workspace,
                          cudaStream_t stream) {
    return gpu::LaunchMovingAverageRows(
        MathPointer(average.data()), last_step.data(), MathPointer(var.data()),
        indices.data(), nnz, row_size, momentum, step, plan, workspace, stream);
  };
  return gpu_op::UpdateSparseRowsOnGpu(ctx, "the rows' moving average",
                                       indices.data(), nnz, var.dimension(0),
                                       row_size, launch);
}

template <typename T>
absl::Status MovingAverageAllRows<GPUDevice, T>::operator()(
    OpKernelContext* ctx, typename TTypes<T>::Matrix average,
    typename TTypes<int64_t>::Vec last_step,
    typename TTypes<T>::ConstMatrix var, double momentum, int64_t step) {
  return gpu_op::CudaStatus(
      ctx, "the moving average of every row",
      gpu::LaunchMovingAverageAllRows(MathPointer(average.data()),
                                      last_step.data(), MathPointer(var.data()),
                                      var.dimension(0), var.dimension(1),
                                      momentum, step, gpu_op::Stream(ctx)));
}

#define INSTANTIATE_GPU_FUNCTORS(T)                         \
  template struct MovingAverageAllRows<GPUDevice, T>;       \
  template struct MovingAverageRows<GPUDevice, T, int32_t>; \
  template struct MovingAverageRows<GPUDevice, T, int64_t>;
TF_CALL_FLOAT_TYPES(INSTANTIATE_GPU_FUNCTORS)
#undef INSTANTIATE_GPU_FUNCTORS

}  // namespace functor
}  // namespace tf_adagrad

#endif  // GOOGLE_CUDA
