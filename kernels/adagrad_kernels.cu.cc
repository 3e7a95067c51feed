// GPU functors for the fused Adagrad ops: the TensorFlow side of the CUDA
// kernels in adagrad_gpu.cuh (the op's stream, temporary memory from the
// op's allocator, errors as statuses), and their explicit instantiations.
#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/adagrad_functors.h"
#include "kernels/adagrad_gpu.cuh"
#include "kernels/gpu_op_helpers.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace tf_adagrad {
namespace functor {

using ::tensorflow::OpKernelContext;
using ::tensorflow::TTypes;
using GPUDevice = Eigen::GpuDevice;

using gpu_op::CudaStatus;
using gpu_op::Stream;

template <typename T, typename Acc>
absl::Status ApplyAdagradDense<GPUDevice, T, Acc>::operator()(
    OpKernelContext* ctx, typename TTypes<T>::Flat var,
    typename TTypes<Acc>::Flat accum, T lr, T epsilon,
    EpsilonPlacement placement, typename TTypes<T>::ConstFlat grad,
    const WeightRounding& rounding) {
  const cudaError_t err = WithAdagradStep(
      placement, ToCompute(lr), ToCompute(epsilon), [&](const auto& step) {
        return gpu::LaunchAdagradDense(
            MathPointer(var.data()), MathPointer(accum.data()),
            MathPointer(grad.data()), step, rounding, var.size(), Stream(ctx));
      });
  return CudaStatus(ctx, "the dense update", err);
}

template <typename T>
absl::Status ApplyAdagradDenseMulti<GPUDevice, T>::operator()(
    OpKernelContext* ctx,
    const std::vector<DenseTensors<typename MathType<T>::type>>& tensors, T lr,
    T epsilon, EpsilonPlacement placement) {
  const cudaError_t err = WithAdagradStep(
      placement, ToCompute(lr), ToCompute(epsilon), [&](const auto& step) {
        return gpu::LaunchAdagradDenseMulti(
            tensors.data(), static_cast<int64_t>(tensors.size()), step,
            Stream(ctx));
      });
  return CudaStatus(ctx, "the multi-tensor dense update", err);
}

template <typename T, typename Acc, typename Index>
absl::Status ApplyAdagradSparse<GPUDevice, T, Acc, Index>::operator()(
    OpKernelContext* ctx, typename TTypes<T>::Matrix var,
    typename TTypes<Acc>::Matrix accum, T lr, T epsilon,
    EpsilonPlacement placement, typename TTypes<T>::ConstMatrix grad,
    typename TTypes<Index>::ConstVec indices, const WeightRounding& rounding) {
  const int64_t nnz = indices.size();
  const int64_t row_size = var.dimension(1);
  const auto launch = [&](const gpu::SparseWorkspace& plan, void* workspace,
                          cudaStream_t stream) {
    return WithAdagradStep(
        placement, ToCompute(lr), ToCompute(epsilon), [&](const auto& step) {
          return gpu::LaunchAdagradSparse(
              MathPointer(var.data()), MathPointer(accum.data()),
              MathPointer(grad.data()), indices.data(), nnz, row_size, step,
              rounding, plan, workspace, stream);
        });
  };
  return gpu_op::UpdateSparseRowsOnGpu(ctx, "the sparse update", indices.data(),
                                       nnz, var.dimension(0), row_size, launch);
}

#define INSTANTIATE_GPU_FUNCTORS(T, Acc)                          \
  template struct ApplyAdagradDense<GPUDevice, T, Acc>;           \
  template struct ApplyAdagradSparse<GPUDevice, T, Acc, int32_t>; \
  template struct ApplyAdagradSparse<GPUDevice, T, Acc, int64_t>;
TF_ADAGRAD_CALL_ELEMENTWISE_TYPE_PAIRS(INSTANTIATE_GPU_FUNCTORS)
#undef INSTANTIATE_GPU_FUNCTORS
#define INSTANTIATE_GPU_MULTI_FUNCTOR(T) \
  template struct ApplyAdagradDenseMulti<GPUDevice, T>;
TF_CALL_FLOAT_TYPES(INSTANTIATE_GPU_MULTI_FUNCTOR)
#undef INSTANTIATE_GPU_MULTI_FUNCTOR

}  // namespace functor
}  // namespace tf_adagrad

#endif  // GOOGLE_CUDA
