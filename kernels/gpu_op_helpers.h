// What the GPU functors of both op families (adagrad_kernels.cu.cc,
// rowwise_kernels.cu.cc) share: CUDA errors as statuses, the op's stream,
// and the sparse update's set-up (the index check that runs before anything
// is written, and the sort's workspace).
#ifndef TF_ADAGRAD_KERNELS_GPU_OP_HELPERS_H_
#define TF_ADAGRAD_KERNELS_GPU_OP_HELPERS_H_

#if GOOGLE_CUDA
#define EIGEN_USE_GPU

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/adagrad_gpu.cuh"
#include "ops/adagrad_errors.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace tf_adagrad {
namespace gpu_op {

inline absl::Status CudaStatus(tensorflow::OpKernelContext* ctx,
                               const char* step, cudaError_t err) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(
      ctx->op_kernel().type_string(), ": CUDA error in ", step, ": ",
      cudaGetErrorName(err), " (", cudaGetErrorString(err), ")"));
}

inline cudaStream_t Stream(tensorflow::OpKernelContext* ctx) {
  return ctx->eigen_device<Eigen::GpuDevice>().stream();
}

// Checks on the device that every one of the nnz indices is in
// [0, num_rows); the host waits for the answer, so that nothing is written
// when one is not (InvalidArgument naming the first).
template <typename Index>
absl::Status CheckIndicesInRange(tensorflow::OpKernelContext* ctx,
                                 const Index* indices, int64_t nnz,
                                 int64_t num_rows) {
  tensorflow::Tensor first_bad;  // one word for the kernel's atomicMin
  TF_RETURN_IF_ERROR(ctx->allocate_temp(
      tensorflow::DT_UINT64, tensorflow::TensorShape({1}), &first_bad));
  int64_t bad_position = -1, bad_index = 0;
  TF_RETURN_IF_ERROR(CudaStatus(
      ctx, "the index check",
      gpu::FindFirstOutOfRangeIndex(
          indices, nnz, num_rows,
          // uint64 and unsigned long long: both 64 bits, named differently.
          reinterpret_cast<unsigned long long*>(
              first_bad.flat<uint64_t>().data()),
          &bad_position, &bad_index, Stream(ctx))));
  if (bad_position >= 0) {
    return absl::InvalidArgumentError(op_errors::IndexOutOfRange(
        ctx->op_kernel().type_string(), bad_position, bad_index, num_rows));
  }
  return absl::OkStatus();
}

// The GPU sparse update of both families up to the launch: every one of the
// nnz indices is checked on the device against [0, num_rows) first, so that
// nothing is written when one is out of range; then, unless there is nothing
// to update (no indices, or rows of no elements), the sort's workspace is
// planned and allocated from the op's allocator, and
// launch(plan, workspace, stream) queues the update (`step` names it in a
// CUDA error).
template <typename Index, typename Launch>
absl::Status UpdateSparseRowsOnGpu(tensorflow::OpKernelContext* ctx,
                                   const char* step, const Index* indices,
                                   int64_t nnz, int64_t num_rows,
                                   int64_t row_size, const Launch& launch) {
  if (nnz == 0) return absl::OkStatus();
  TF_RETURN_IF_ERROR(CheckIndicesInRange(ctx, indices, nnz, num_rows));
  if (row_size == 0) return absl::OkStatus();
  gpu::SparseWorkspace plan;
  TF_RETURN_IF_ERROR(
      CudaStatus(ctx, "planning the sort",
                 gpu::PlanSparseWorkspace<Index>(nnz, num_rows, &plan)));
  tensorflow::Tensor workspace;
  TF_RETURN_IF_ERROR(ctx->allocate_temp(
      tensorflow::DT_INT8,
      tensorflow::TensorShape({static_cast<int64_t>(plan.total_bytes)}),
      &workspace));
  return CudaStatus(ctx, step,
                    launch(plan, workspace.flat<int8_t>().data(), Stream(ctx)));
}

}  // namespace gpu_op
}  // namespace tf_adagrad

#endif  // GOOGLE_CUDA
#endif  // TF_ADAGRAD_KERNELS_GPU_OP_HELPERS_H_
