// The lazy moving average of rows on the GPU: CUDA kernels on raw pointers
// and a stream, no TensorFlow. The element math is moving_average_math.h's,
// so results equal the CPU path's. Rows are found once each through the
// sparse update's sort (adagrad_gpu.cuh).
#ifndef TF_ADAGRAD_KERNELS_MOVING_AVERAGE_GPU_CUH_
#define TF_ADAGRAD_KERNELS_MOVING_AVERAGE_GPU_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/adagrad_gpu.cuh"
#include "kernels/half_types.h"
#include "kernels/moving_average_math.h"

namespace tf_adagrad {
namespace gpu {

// One thread per (sorted position, column), grid-stride: the first position
// of each run of equal indices brings its row's column up to date. Reads
// last_step, which the next kernel writes.
template <typename T, typename Key>
__global__ void __launch_bounds__(kThreadsPerBlock)
    MovingAverageSortedRowsKernel(T* __restrict__ average,
                                  const int64_t* __restrict__ last_step,
                                  const T* __restrict__ var,
                                  const Key* __restrict__ sorted_indices,
                                  int64_t nnz, int64_t row_size,
                                  double momentum, int64_t step) {
  using A = GpuArithmetic<T>;
  using C = ComputeType<T>;
  const int64_t size = nnz * row_size;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < size; i += stride) {
    const int64_t position = i / row_size;
    const int64_t row = static_cast<int64_t>(sorted_indices[position]);
    if (position > 0 &&
        static_cast<int64_t>(sorted_indices[position - 1]) == row) {
      continue;
    }
    const int64_t steps = step - last_step[row];
    // Up to date already: w + 1 * (average - w) would round; keep it.
    if (steps <= 0) continue;
    const C factor = static_cast<C>(MomentumPower(momentum, steps));
    const int64_t element = row * row_size + i % row_size;
    average[element] = A::Store(CaughtUpAverage(A::Load(average[element]),
                                                A::Load(var[element]), factor));
  }
}

// last_step[row] = step for each row named (repeats write the same value).
template <typename Key>
__global__ void __launch_bounds__(kThreadsPerBlock)
    SetLastStepKernel(int64_t* __restrict__ last_step,
                      const Key* __restrict__ sorted_indices, int64_t nnz,
                      int64_t step) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < nnz; i += stride) {
    last_step[sorted_indices[i]] = step;
  }
}

// Brings the average of each distinct row named by the nnz indices to `step`
// and records it in last_step. Every index must be in [0, num_rows);
// `workspace` holds plan.total_bytes of device memory (PlanSparseWorkspace).
template <typename T, typename Index>
cudaError_t LaunchMovingAverageRows(T* average, int64_t* last_step,
                                    const T* var, const Index* indices,
                                    int64_t nnz, int64_t row_size,
                                    double momentum, int64_t step,
                                    const SparseWorkspace& plan,
                                    void* workspace, cudaStream_t stream) {
  if (nnz == 0) return cudaSuccess;
  cudaError_t err = SortIndices(indices, nnz, plan, workspace, stream);
  if (err != cudaSuccess) return err;
  const SortKey<Index>* sorted = Buffers<Index>(plan, workspace).sorted_indices;
  int blocks = 0;
  if (row_size > 0) {
    const auto rows_kernel = MovingAverageSortedRowsKernel<T, SortKey<Index>>;
    err = ResidentGridSize(rows_kernel, nnz * row_size, &blocks);
    if (err != cudaSuccess) return err;
    rows_kernel<<<blocks, kThreadsPerBlock, 0, stream>>>(
        average, last_step, var, sorted, nnz, row_size, momentum, step);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  const auto step_kernel = SetLastStepKernel<SortKey<Index>>;
  err = ResidentGridSize(step_kernel, nnz, &blocks);
  if (err != cudaSuccess) return err;
  step_kernel<<<blocks, kThreadsPerBlock, 0, stream>>>(last_step, sorted, nnz,
                                                       step);
  return cudaGetLastError();
}

// Every row, one thread per element, grid-stride; reads last_step, which
// the next kernel writes.
template <typename T>
__global__ void __launch_bounds__(kThreadsPerBlock)
    MovingAverageAllRowsKernel(T* __restrict__ average,
                               const int64_t* __restrict__ last_step,
                               const T* __restrict__ var, int64_t num_rows,
                               int64_t row_size, double momentum,
                               int64_t step) {
  using A = GpuArithmetic<T>;
  using C = ComputeType<T>;
  const int64_t size = num_rows * row_size;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < size; i += stride) {
    const int64_t steps = step - last_step[i / row_size];
    if (steps <= 0) continue;
    const C factor = static_cast<C>(MomentumPower(momentum, steps));
    average[i] =
        A::Store(CaughtUpAverage(A::Load(average[i]), A::Load(var[i]), factor));
  }
}

// A template, so that every file including this header may instantiate it.
template <typename Value>
__global__ void __launch_bounds__(kThreadsPerBlock)
    FillKernel(Value* __restrict__ values, int64_t n, Value value) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < n; i += stride) {
    values[i] = value;
  }
}

// Brings every row's average to `step` and records it in last_step.
template <typename T>
cudaError_t LaunchMovingAverageAllRows(T* average, int64_t* last_step,
                                       const T* var, int64_t num_rows,
                                       int64_t row_size, double momentum,
                                       int64_t step, cudaStream_t stream) {
  if (num_rows == 0) return cudaSuccess;
  int blocks = 0;
  cudaError_t err;
  if (row_size > 0) {
    const auto rows_kernel = MovingAverageAllRowsKernel<T>;
    err = ResidentGridSize(rows_kernel, num_rows * row_size, &blocks);
    if (err != cudaSuccess) return err;
    rows_kernel<<<blocks, kThreadsPerBlock, 0, stream>>>(
        average, last_step, var, num_rows, row_size, momentum, step);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  err = ResidentGridSize(FillKernel<int64_t>, num_rows, &blocks);
  if (err != cudaSuccess) return err;
  FillKernel<int64_t>
      <<<blocks, kThreadsPerBlock, 0, stream>>>(last_step, num_rows, step);
  return cudaGetLastError();
}

}  // namespace gpu
}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_MOVING_AVERAGE_GPU_CUH_
