// Rowwise Adagrad on the GPU: CUDA kernels on raw pointers and a stream, no
// TensorFlow, so that tests/cuda can run them on their own. One warp per
// row: each lane sums the squares of its columns in rowwise_math.h's order,
// the warp adds the lanes with a shuffle-down tree (the same order), and
// every lane updates its columns with the row's multiplier. The results are
// the CPU path's bit for bit.
//
// The sparse update reuses the elementwise one's index check, sort and
// search for each row's run (adagrad_gpu.cuh). Every function returns the
// first CUDA error it meets.
#ifndef TF_ADAGRAD_KERNELS_ROWWISE_GPU_CUH_
#define TF_ADAGRAD_KERNELS_ROWWISE_GPU_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/adagrad_gpu.cuh"
#include "kernels/half_types.h"
#include "kernels/rowwise_math.h"

namespace tf_adagrad {
namespace gpu {

static_assert(kRowwiseLanes == kWarpSize, "a warp's lanes are the sum's lanes");

// The row's new accumulator and multiplier, from each lane's partial sum of
// squares; lane 0 writes the accumulator. Every lane of the warp calls it.
template <typename C>
__device__ __forceinline__ C RowwiseMultiplier(C partial, C* accum,
                                               int64_t row_size,
                                               const RowwiseStep<C>& step) {
  for (int s = kWarpSize / 2; s > 0; s /= 2) {
    partial += __shfl_down_sync(kAllLanes, partial, s);
  }
  const int lane = threadIdx.x % kWarpSize;
  C a = 0;
  if (lane == 0) {
    a = step.NewAccumulator(*accum, partial, row_size);
    *accum = a;
  }
  return step.Multiplier(__shfl_sync(kAllLanes, a, 0));
}

// Dense: warp w updates rows w, w + warps, ... (grid-stride).
template <typename T, typename C, typename Rounding>
__global__ void __launch_bounds__(kThreadsPerBlock)
    RowwiseDenseKernel(T* __restrict__ var, C* __restrict__ accum,
                       const T* __restrict__ grad, int64_t num_rows,
                       int64_t row_size, RowwiseStep<C> step,
                       Rounding rounding) {
  using A = GpuArithmetic<T>;
  const int64_t thread =
      static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t num_warps =
      static_cast<int64_t>(gridDim.x) * blockDim.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  for (int64_t row = thread / kWarpSize; row < num_rows; row += num_warps) {
    T* var_row = var + row * row_size;
    const T* grad_row = grad + row * row_size;
    C partial = 0;
    for (int64_t j = lane; j < row_size; j += kWarpSize) {
      const C g = A::Load(grad_row[j]);
      partial += g * g;
    }
    const C multiplier =
        RowwiseMultiplier(partial, accum + row, row_size, step);
    for (int64_t j = lane; j < row_size; j += kWarpSize) {
      var_row[j] = rounding.template Store<T>(
          A::Load(var_row[j]) - multiplier * A::Load(grad_row[j]),
          row * row_size + j);
    }
  }
}

// Updates num_rows rows of `row_size` (> 0) elements, on `stream`, storing
// the new weights as `rounding` says.
template <typename T, typename C>
cudaError_t LaunchRowwiseDense(T* var, C* accum, const T* grad,
                               int64_t num_rows, int64_t row_size,
                               const RowwiseStep<C>& step,
                               const WeightRounding& rounding,
                               cudaStream_t stream) {
  if (num_rows == 0 || row_size == 0) return cudaSuccess;
  return WithGpuRounding<T>(rounding, [&](const auto& store) {
    const auto kernel = RowwiseDenseKernel<T, C, std::decay_t<decltype(store)>>;
    int blocks = 0;
    const cudaError_t err =
        ResidentGridSize(kernel, num_rows * kWarpSize, &blocks);
    if (err != cudaSuccess) return err;
    kernel<<<blocks, kThreadsPerBlock, 0, stream>>>(var, accum, grad, num_rows,
                                                    row_size, step, store);
    return cudaGetLastError();
  });
}

// Column `column` of a run's summed gradient rows: -0 + x == x for every x,
// so the sum starts exactly as the CPU's, which starts from the first row.
template <typename T, typename C>
__device__ __forceinline__ C SummedGradient(const T* __restrict__ grad,
                                            const int64_t* sorted_positions,
                                            int64_t run_start, int64_t run_end,
                                            int64_t row_size, int64_t column) {
  C sum = C(-0.0);
  for (int64_t k = run_start; k < run_end; ++k) {
    sum +=
        GpuArithmetic<T>::Load(grad[sorted_positions[k] * row_size + column]);
  }
  return sum;
}

// One warp per sorted position; the warp at the start of each run of equal
// indices owns that row: it sums the run's gradient rows column by column
// (in position order, as the CPU does), reduces the squares, then sums again
// to update. No two warps write the same row.
template <typename T, typename C, typename Key, typename Rounding>
__global__ void __launch_bounds__(kThreadsPerBlock)
    RowwiseSparseKernel(T* __restrict__ var, C* __restrict__ accum,
                        const T* __restrict__ grad,
                        const Key* __restrict__ sorted_indices,
                        const int64_t* __restrict__ sorted_positions,
                        int64_t nnz, int64_t row_size, RowwiseStep<C> step,
                        Rounding rounding) {
  using A = GpuArithmetic<T>;
  const int64_t run_start =
      (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  Key row;
  int64_t run_end;
  if (!OwnsRun(sorted_indices, nnz, run_start, &row, &run_end)) return;
  C partial = 0;
  for (int64_t j = lane; j < row_size; j += kWarpSize) {
    const C g = SummedGradient<T, C>(grad, sorted_positions, run_start, run_end,
                                     row_size, j);
    partial += g * g;
  }
  const C multiplier = RowwiseMultiplier(
      partial, accum + static_cast<int64_t>(row), row_size, step);
  T* var_row = var + static_cast<int64_t>(row) * row_size;
  for (int64_t j = lane; j < row_size; j += kWarpSize) {
    const C g = SummedGradient<T, C>(grad, sorted_positions, run_start, run_end,
                                     row_size, j);
    var_row[j] =
        rounding.template Store<T>(A::Load(var_row[j]) - multiplier * g,
                                   static_cast<int64_t>(row) * row_size + j);
  }
}

// Updates the rows of var ([num_rows, row_size]) and accum ([num_rows])
// named by the nnz indices, with grad [nnz, row_size]; duplicate indices are
// summed first, and the new weights stored as `rounding` says. Every index
// must be in [0, num_rows) (see
// FindFirstOutOfRangeIndex); `workspace` holds plan.total_bytes of device
// memory (PlanSparseWorkspace).
template <typename T, typename C, typename Index>
cudaError_t LaunchRowwiseSparse(T* var, C* accum, const T* grad,
                                const Index* indices, int64_t nnz,
                                int64_t row_size, const RowwiseStep<C>& step,
                                const WeightRounding& rounding,
                                const SparseWorkspace& plan, void* workspace,
                                cudaStream_t stream) {
  if (nnz == 0 || row_size == 0) return cudaSuccess;
  cudaError_t err = SortIndices(indices, nnz, plan, workspace, stream);
  if (err != cudaSuccess) return err;
  const SparseBuffers<Index> buffers = Buffers<Index>(plan, workspace);
  const int64_t blocks = (nnz + kWarpsPerBlock - 1) / kWarpsPerBlock;
  return WithGpuRounding<T>(rounding, [&](const auto& store) {
    RowwiseSparseKernel<T, C, SortKey<Index>, std::decay_t<decltype(store)>>
        <<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream>>>(
            var, accum, grad, buffers.sorted_indices, buffers.sorted_positions,
            nnz, row_size, step, store);
    return cudaGetLastError();
  });
}

}  // namespace gpu
}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_ROWWISE_GPU_CUH_
