// GPU functors for the weight decay ops: the TensorFlow side of the CUDA
// kernels in weight_decay_gpu.cuh, and their explicit instantiations.
#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/gpu_op_helpers.h"
#include "kernels/weight_decay_functors.h"
#include "kernels/weight_decay_gpu.cuh"
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

template <typename T>
WeightDecayStep<ComputeType<typename MathType<T>::type>> GpuDecayStep(
    T lr, T weight_decay) {
  // The product in T, as TensorFlow folds Keras' two scalars.
  return {ToCompute(static_cast<T>(weight_decay * lr))};
}

template <typename T>
absl::Status DecayWeights<GPUDevice, T>::operator()(
    OpKernelContext* ctx, typename TTypes<T>::Flat var, T lr, T weight_decay) {
  return CudaStatus(ctx, "the weight decay",
                    gpu::LaunchWeightDecay(MathPointer(var.data()),
                                           GpuDecayStep(lr, weight_decay),
                                           var.size(), Stream(ctx)));
}

template <typename T, typename Index>
absl::Status DecayRows<GPUDevice, T, Index>::operator()(
    OpKernelContext* ctx, typename TTypes<T>::Matrix var, T lr, T weight_decay,
    typename TTypes<Index>::ConstVec indices) {
  const int64_t nnz = indices.size();
  const int64_t row_size = var.dimension(1);
  const auto launch = [&](const gpu::SparseWorkspace& plan, void* workspace,
                          cudaStream_t stream) {
    return gpu::LaunchWeightDecayRows(
        MathPointer(var.data()), indices.data(), nnz, row_size,
        GpuDecayStep(lr, weight_decay), plan, workspace, stream);
  };
  return gpu_op::UpdateSparseRowsOnGpu(ctx, "the rows' weight decay",
                                       indices.data(), nnz, var.dimension(0),
                                       row_size, launch);
}

#define INSTANTIATE_GPU_FUNCTORS(T)                 \
  template struct DecayWeights<GPUDevice, T>;       \
  template struct DecayRows<GPUDevice, T, int32_t>; \
  template struct DecayRows<GPUDevice, T, int64_t>;
TF_CALL_FLOAT_TYPES(INSTANTIATE_GPU_FUNCTORS)
#undef INSTANTIATE_GPU_FUNCTORS

}  // namespace functor
}  // namespace tf_adagrad

#endif  // GOOGLE_CUDA
