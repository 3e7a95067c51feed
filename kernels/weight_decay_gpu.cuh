// Weight decay on the GPU: CUDA kernels on raw pointers and a stream, no
// TensorFlow. The element math is weight_decay_math.h's, so results equal
// the CPU path's bit for bit. The rows kernel reuses the sparse update's
// sort (adagrad_gpu.cuh) to find each distinct index once.
#ifndef TF_ADAGRAD_KERNELS_WEIGHT_DECAY_GPU_CUH_
#define TF_ADAGRAD_KERNELS_WEIGHT_DECAY_GPU_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/adagrad_gpu.cuh"
#include "kernels/half_types.h"
#include "kernels/weight_decay_math.h"

namespace tf_adagrad {
namespace gpu {

// One pass over var, grid-stride.
template <typename T, typename C>
__global__ void __launch_bounds__(kThreadsPerBlock)
    WeightDecayKernel(T* __restrict__ var, WeightDecayStep<C> step,
                      int64_t size) {
  using A = GpuArithmetic<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < size; i += stride) {
    var[i] = A::Store(step.Apply(A::Load(var[i])));
  }
}

// Decays `size` elements of var in place, on `stream`.
template <typename T, typename C>
cudaError_t LaunchWeightDecay(T* var, const WeightDecayStep<C>& step,
                              int64_t size, cudaStream_t stream) {
  if (size == 0) return cudaSuccess;
  const auto kernel = WeightDecayKernel<T, C>;
  int blocks = 0;
  const cudaError_t err = ResidentGridSize(kernel, size, &blocks);
  if (err != cudaSuccess) return err;
  kernel<<<blocks, kThreadsPerBlock, 0, stream>>>(var, step, size);
  return cudaGetLastError();
}

// One thread per (sorted position, column), grid-stride: the position that
// starts a run of equal indices decays its row's column; the run's other
// positions do nothing, so each distinct row decays once.
template <typename T, typename Key, typename C>
__global__ void __launch_bounds__(kThreadsPerBlock)
    WeightDecaySortedRowsKernel(T* __restrict__ var,
                                const Key* __restrict__ sorted_indices,
                                int64_t nnz, int64_t row_size,
                                WeightDecayStep<C> step) {
  using A = GpuArithmetic<T>;
  const int64_t size = nnz * row_size;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < size; i += stride) {
    const int64_t position = i / row_size;
    const Key row = sorted_indices[position];
    if (position > 0 && sorted_indices[position - 1] == row) continue;
    T* element = var + static_cast<int64_t>(row) * row_size + i % row_size;
    *element = A::Store(step.Apply(A::Load(*element)));
  }
}

// Decays the rows of var ([num_rows, row_size]) named by the nnz indices,
// each distinct row once. Every index must be in [0, num_rows);
// `workspace` holds plan.total_bytes of device memory (PlanSparseWorkspace).
template <typename T, typename Index, typename C>
cudaError_t LaunchWeightDecayRows(T* var, const Index* indices, int64_t nnz,
                                  int64_t row_size,
                                  const WeightDecayStep<C>& step,
                                  const SparseWorkspace& plan, void* workspace,
                                  cudaStream_t stream) {
  if (nnz == 0 || row_size == 0) return cudaSuccess;
  cudaError_t err = SortIndices(indices, nnz, plan, workspace, stream);
  if (err != cudaSuccess) return err;
  const auto kernel = WeightDecaySortedRowsKernel<T, SortKey<Index>, C>;
  int blocks = 0;
  err = ResidentGridSize(kernel, nnz * row_size, &blocks);
  if (err != cudaSuccess) return err;
  kernel<<<blocks, kThreadsPerBlock, 0, stream>>>(
      var, Buffers<Index>(plan, workspace).sorted_indices, nnz, row_size, step);
  return cudaGetLastError();
}

}  // namespace gpu
}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_WEIGHT_DECAY_GPU_CUH_
