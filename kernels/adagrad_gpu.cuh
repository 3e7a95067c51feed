// The Adagrad update on the GPU: CUDA kernels on raw pointers and a stream,
// no TensorFlow, so that tests/cuda can run them on their own. The element
// math is adagrad_math.h's (float16 converts with the GPU's instructions,
// which round the same way), so a build without FMA contraction gives the
// CPU path's results bit for bit.
//
// Every function returns the first CUDA error it meets; each launch is
// checked right after it is queued. (Faults inside a running kernel surface
// later, at the next synchronizing call on the stream, as CUDA reports them.)
#ifndef TF_ADAGRAD_KERNELS_ADAGRAD_GPU_CUH_
#define TF_ADAGRAD_KERNELS_ADAGRAD_GPU_CUH_

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>
#include <type_traits>

#include "kernels/adagrad_math.h"
#include "kernels/half_types.h"
#include "kernels/multi_tensor.h"
#include "kernels/stochastic_rounding.h"
#include "kernels/strided_update.h"

namespace tf_adagrad {
namespace gpu {

// Eight warps: a multiple of the warp size that divides the threads-per-
// multiprocessor limit of every target (sm_70 to sm_90), so full occupancy
// stays reachable.
constexpr int kThreadsPerBlock = 256;
constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = kThreadsPerBlock / kWarpSize;
// The lanes of a whole warp, for the *_sync intrinsics.
constexpr unsigned kAllLanes = 0xffffffffu;

// Blocks for a grid-stride kernel over `work_items` items (one per thread):
// as many as the current device keeps resident at once, or fewer if the work
// needs fewer.
template <typename Kernel>
cudaError_t ResidentGridSize(Kernel kernel, int64_t work_items, int* blocks) {
  int device = 0, multiprocessors = 0, blocks_per_multiprocessor = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount,
                               device);
  if (err != cudaSuccess) return err;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &blocks_per_multiprocessor, kernel, kThreadsPerBlock, 0);
  if (err != cudaSuccess) return err;
  const int64_t needed = (work_items + kThreadsPerBlock - 1) / kThreadsPerBlock;
  *blocks = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(needed, static_cast<int64_t>(multiprocessors) *
                                       blocks_per_multiprocessor)));
  return cudaSuccess;
}

// How the kernels read and write each type: as adagrad_math.h does, except
// that float16 uses the GPU's conversion instructions, which give the same
// bits as HalfToFloat and FloatToHalf (exact widening; rounding to nearest
// even, gradual underflow, overflow to inf) for every value but NaN, whose
// payload they may change, and are many times cheaper than the integer code.
// (Host code, which only the host-compiled copies of the shared device
// functions reach, converts as adagrad_math.h does.)
template <typename T>
struct GpuArithmetic : Arithmetic<T> {};

template <>
struct GpuArithmetic<Float16> {
  using Compute = float;
  TF_ADAGRAD_HOST_DEVICE static float Load(Float16 x) {
#ifdef __CUDA_ARCH__
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
#else
    return Arithmetic<Float16>::Load(x);
#endif
  }
  TF_ADAGRAD_HOST_DEVICE static Float16 Store(float f) {
#ifdef __CUDA_ARCH__
    Float16 x;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(x.bits) : "f"(f));
    return x;
#else
    return Arithmetic<Float16>::Store(f);
#endif
  }
};

// ---------------------------------------------------------------- dense ---

// Calls fn(rounding) with the kernels' Rounding (stochastic_rounding.h)
// that `rounding` asks for; only 16-bit T round stochastically.
template <typename T, typename Fn>
decltype(auto) WithGpuRounding(const WeightRounding& rounding, const Fn& fn) {
  if constexpr (kIsHalfType<T>) {
    if (rounding.stochastic) return fn(StochasticRounding{rounding.key});
  }
  return fn(RoundToNearest<GpuArithmetic>());
}

// One pass over var, accum and grad, grid-stride. `Step` (here and below)
// is an AdagradStep of T's compute type, passed by value; accum holds Acc
// (T, or float32 for a 16-bit T), `Rounding` stores the new weights.
template <typename T, typename Acc, int kWidth, typename Step,
          typename Rounding>
__global__ void __launch_bounds__(kThreadsPerBlock)
    AdagradDenseKernel(T* __restrict__ var, Acc* __restrict__ accum,
                       const T* __restrict__ grad, Step step, Rounding rounding,
                       int64_t size) {
  UpdateStrided<GpuArithmetic, kWidth>(
      var, accum, grad, step, size,
      static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
      static_cast<int64_t>(gridDim.x) * blockDim.x, rounding, 0);
}

template <typename T, typename Acc, int kWidth, typename Step,
          typename Rounding>
cudaError_t LaunchDenseKernel(T* var, Acc* accum, const T* grad,
                              const Step& step, const Rounding& rounding,
                              int64_t size, cudaStream_t stream) {
  const auto kernel = AdagradDenseKernel<T, Acc, kWidth, Step, Rounding>;
  int blocks = 0;
  const cudaError_t err =
      ResidentGridSize(kernel, (size + kWidth - 1) / kWidth, &blocks);
  if (err != cudaSuccess) return err;
  kernel<<<blocks, kThreadsPerBlock, 0, stream>>>(var, accum, grad, step,
                                                  rounding, size);
  return cudaGetLastError();
}

// Updates `size` elements of var and accum in place, on `stream`, storing
// the new weights as `rounding` says.
template <typename T, typename Acc, typename Step>
cudaError_t LaunchAdagradDense(T* var, Acc* accum, const T* grad,
                               const Step& step, const WeightRounding& rounding,
                               int64_t size, cudaStream_t stream) {
  if (size == 0) return cudaSuccess;
  // A pack of kVectorWidth<T> elements: 16 bytes of var and grad, and of
  // accum as many elements, 16 or 32 bytes.
  constexpr size_t kAccumPackBytes = kVectorWidth<T> * sizeof(Acc);
  const bool aligned =
      ((reinterpret_cast<uintptr_t>(var) | reinterpret_cast<uintptr_t>(grad)) %
           kVectorBytes ==
       0) &&
      reinterpret_cast<uintptr_t>(accum) % kAccumPackBytes == 0;
  return WithGpuRounding<T>(rounding, [&](const auto& store) {
    if (aligned) {
      return LaunchDenseKernel<T, Acc, kVectorWidth<T>>(var, accum, grad, step,
                                                        store, size, stream);
    }
    return LaunchDenseKernel<T, Acc, 1>(var, accum, grad, step, store, size,
                                        stream);
  });
}

// --------------------------------------------------------- multi-tensor ---

// One block per entry of the table (multi_tensor.h).
template <typename T, typename Step>
__global__ void __launch_bounds__(kThreadsPerBlock)
    AdagradDenseMultiKernel(const MultiTensorTable<T> table, Step step) {
  UpdateChunkOfBlock<GpuArithmetic>(table, blockIdx.x, threadIdx.x, blockDim.x,
                                    step);
}

// Updates every variable of `tensors` in place, on `stream`: one launch per
// table of chunks.
template <typename T, typename Step>
cudaError_t LaunchAdagradDenseMulti(const DenseTensors<T>* tensors,
                                    int64_t num_tensors, const Step& step,
                                    cudaStream_t stream) {
  cudaError_t err = cudaSuccess;
  ForEachMultiTensorTable(
      tensors, num_tensors, [&](const MultiTensorTable<T>& table) {
        AdagradDenseMultiKernel<T, Step>
            <<<table.num_blocks, kThreadsPerBlock, 0, stream>>>(table, step);
        err = cudaGetLastError();
        return err == cudaSuccess;
      });
  return err;
}

// --------------------------------------------------------------- sparse ---

// Lowers *first_bad to the smallest position whose index is outside
// [0, num_rows).
template <typename Index>
__global__ void __launch_bounds__(kThreadsPerBlock)
    FindOutOfRangeKernel(const Index* __restrict__ indices, int64_t nnz,
                         int64_t num_rows,
                         unsigned long long* __restrict__ first_bad) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < nnz; i += stride) {
    const int64_t index = static_cast<int64_t>(indices[i]);
    if (index < 0 || index >= num_rows) {
      atomicMin(first_bad, static_cast<unsigned long long>(i));
      return;  // this thread's later positions are larger
    }
  }
}

// Finds the first position of `indices` whose value is outside
// [0, num_rows): sets *position to it and *index to its value, or *position
// to -1. `scratch` is one device word. Waits for the stream: the caller
// decides on the host whether the update may run.
template <typename Index>
cudaError_t FindFirstOutOfRangeIndex(const Index* indices, int64_t nnz,
                                     int64_t num_rows,
                                     unsigned long long* scratch,
                                     int64_t* position, int64_t* index,
                                     cudaStream_t stream) {
  *position = -1;
  if (nnz == 0) return cudaSuccess;
  const auto kernel = FindOutOfRangeKernel<Index>;
  int blocks = 0;
  cudaError_t err = ResidentGridSize(kernel, nnz, &blocks);
  if (err != cudaSuccess) return err;
  // All ones: larger than any position.
  err = cudaMemsetAsync(scratch, 0xff, sizeof(*scratch), stream);
  if (err != cudaSuccess) return err;
  kernel<<<blocks, kThreadsPerBlock, 0, stream>>>(indices, nnz, num_rows,
                                                  scratch);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  unsigned long long first_bad = 0;
  err = cudaMemcpyAsync(&first_bad, scratch, sizeof(first_bad),
                        cudaMemcpyDeviceToHost, stream);
  if (err != cudaSuccess) return err;
  err = cudaStreamSynchronize(stream);
  if (err != cudaSuccess || first_bad >= static_cast<uint64_t>(nnz)) return err;
  Index bad_index;
  err = cudaMemcpyAsync(&bad_index, indices + first_bad, sizeof(bad_index),
                        cudaMemcpyDeviceToHost, stream);
  if (err != cudaSuccess) return err;
  err = cudaStreamSynchronize(stream);
  if (err != cudaSuccess) return err;
  *position = static_cast<int64_t>(first_bad);
  *index = static_cast<int64_t>(bad_index);
  return cudaSuccess;
}

// Where the sparse update's temporary arrays sit in one device allocation.
struct SparseWorkspace {
  int sort_end_bit = 0;         // indices fit in this many low bits
  size_t sorted_indices = 0;    // nnz indices, ascending
  size_t positions = 0;         // nnz positions 0, 1, ..., nnz - 1
  size_t sorted_positions = 0;  // nnz positions, in sorted-index order
  size_t sort_storage = 0;
  size_t sort_storage_bytes = 0;
  size_t total_bytes = 0;
};

// The sort key: indices are known to be in [0, num_rows) by now, so their
// unsigned bits order them the same way.
template <typename Index>
using SortKey = std::make_unsigned_t<Index>;

// Plans the workspace of LaunchAdagradSparse for nnz > 0 indices, all in
// [0, num_rows).
template <typename Index>
cudaError_t PlanSparseWorkspace(int64_t nnz, int64_t num_rows,
                                SparseWorkspace* plan) {
  using Key = SortKey<Index>;
  int index_bits = 0;
  while (index_bits < 63 && (int64_t{1} << index_bits) < num_rows) ++index_bits;
  // A radix sort needs at least one bit, even when every index is 0.
  plan->sort_end_bit = std::max(index_bits, 1);
  const cudaError_t err = cub::DeviceRadixSort::SortPairs(
      nullptr, plan->sort_storage_bytes, static_cast<const Key*>(nullptr),
      static_cast<Key*>(nullptr), static_cast<const int64_t*>(nullptr),
      static_cast<int64_t*>(nullptr), nnz, 0, plan->sort_end_bit);
  if (err != cudaSuccess) return err;
  constexpr size_t kAlignment = 256;  // cudaMalloc's own alignment
  size_t offset = 0;
  const auto place = [&offset](size_t bytes) {
    const size_t at = offset;
    offset += (bytes + kAlignment - 1) / kAlignment * kAlignment;
    return at;
  };
  plan->sorted_indices = place(nnz * sizeof(Key));
  plan->positions = place(nnz * sizeof(int64_t));
  plan->sorted_positions = place(nnz * sizeof(int64_t));
  plan->sort_storage = place(plan->sort_storage_bytes);
  plan->total_bytes = offset;
  return cudaSuccess;
}

// A template, so that every file including this header may instantiate it.
template <typename Value>
__global__ void __launch_bounds__(kThreadsPerBlock)
    IotaKernel(Value* __restrict__ values, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < n; i += stride) {
    values[i] = i;
  }
}

// Whether the warp of sorted position `run_start` owns a row: it does when
// run_start < nnz is the first position of a run of equal indices (the
// warps of the run's other positions return), and then gets the row and
// run_end (one past the run's last position). Every lane of the warp calls
// it with the same run_start.
template <typename Key>
__device__ __forceinline__ bool OwnsRun(const Key* __restrict__ sorted_indices,
                                        int64_t nnz, int64_t run_start,
                                        Key* row, int64_t* run_end) {
  if (run_start >= nnz) return false;
  const Key index = sorted_indices[run_start];
  if (run_start > 0 && sorted_indices[run_start - 1] == index) return false;
  *row = index;
  // The run ends at the first different index. Most runs are short: the
  // warp checks the next kWarpSize positions at once, and bisects the rest.
  const int lane = threadIdx.x % kWarpSize;
  const int64_t next = run_start + 1 + lane;
  const unsigned different =
      __ballot_sync(kAllLanes, next >= nnz || sorted_indices[next] != index);
  if (different != 0) {
    *run_end = run_start + __ffs(different);
    return true;
  }
  int64_t low = run_start + kWarpSize + 1,
          high = nnz;  // sorted[low - 1] == index
  while (low < high) {
    const int64_t middle = low + (high - low) / 2;
    if (sorted_indices[middle] == index) {
      low = middle + 1;
    } else {
      high = middle;
    }
  }
  *run_end = low;
  return true;
}

// Columns of a row that one warp sums and updates: one per lane.
constexpr int64_t kTileColumns = kWarpSize;

// One warp per (sorted position, tile of kTileColumns columns). The warps at
// the start of each run of equal indices own that row: each sums its columns
// of the run's gradient rows in position order (the order the CPU sums them
// in), then updates them once; the other warps return. No two warps write
// the same element, so there are no atomics and the result does not depend
// on scheduling.
//
// A long run (a hot row) is a chain of additions; its loads are not, so the
// warp reads the positions kWarpSize at a time and issues the gradient loads
// of all of them before it adds.
template <typename T, typename Acc, typename Key, typename Step,
          typename Rounding>
__global__ void __launch_bounds__(kThreadsPerBlock)
    AdagradSparseRowsKernel(T* __restrict__ var, Acc* __restrict__ accum,
                            const T* __restrict__ grad,
                            const Key* __restrict__ sorted_indices,
                            const int64_t* __restrict__ sorted_positions,
                            int64_t nnz, int64_t row_size, int64_t num_tiles,
                            Step step, Rounding rounding) {
  using A = GpuArithmetic<T>;
  using AccA = GpuArithmetic<Acc>;
  using C = ComputeType<T>;
  const int64_t warp =
      (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t run_start = warp / num_tiles;
  const int64_t column = warp % num_tiles * kTileColumns + lane;
  Key row;
  int64_t run_end;
  if (!OwnsRun(sorted_indices, nnz, run_start, &row, &run_end)) return;
  const bool in_row = column < row_size;
  // -0 + x == x for every x, so the sum starts exactly as the CPU's, which
  // starts from the first row itself; -0 also pads the last chunk.
  C sum = C(-0.0);
  // Each lane holds one position of the chunk; the next chunk's are read
  // before this chunk's gradients.
  int64_t lane_position =
      run_start + lane < run_end ? sorted_positions[run_start + lane] : 0;
  for (int64_t chunk = run_start; chunk < run_end; chunk += kWarpSize) {
    const int64_t count = min(static_cast<int64_t>(kWarpSize), run_end - chunk);
    const int64_t next_chunk = chunk + kWarpSize + lane;
    const int64_t next_lane_position =
        next_chunk < run_end ? sorted_positions[next_chunk] : 0;
    C values[kWarpSize];
#pragma unroll
    for (int t = 0; t < kWarpSize; ++t) {
      const int64_t position = __shfl_sync(kAllLanes, lane_position, t);
      values[t] = t < count && in_row
                      ? A::Load(grad[position * row_size + column])
                      : C(-0.0);
    }
#pragma unroll
    for (int t = 0; t < kWarpSize; ++t) sum += values[t];
    lane_position = next_lane_position;
  }
  if (!in_row) return;
  const int64_t position = static_cast<int64_t>(row) * row_size + column;
  C v = A::Load(var[position]);
  C a = AccA::Load(accum[position]);
  step.Apply(sum, &v, &a);
  accum[position] = AccA::Store(a);
  var[position] = rounding.template Store<T>(v, position);
}

template <typename Index>
struct SparseBuffers {
  SortKey<Index>* sorted_indices;
  int64_t* positions;
  int64_t* sorted_positions;
  void* sort_storage;
};

template <typename Index>
SparseBuffers<Index> Buffers(const SparseWorkspace& plan, void* workspace) {
  char* base = static_cast<char*>(workspace);
  return {reinterpret_cast<SortKey<Index>*>(base + plan.sorted_indices),
          reinterpret_cast<int64_t*>(base + plan.positions),
          reinterpret_cast<int64_t*>(base + plan.sorted_positions),
          base + plan.sort_storage};
}

// First half of LaunchAdagradSparse: sorts (index, position) pairs by index
// into the workspace. Radix sort is stable, so equal indices keep their
// positions in increasing order.
template <typename Index>
cudaError_t SortIndices(const Index* indices, int64_t nnz,
                        const SparseWorkspace& plan, void* workspace,
                        cudaStream_t stream) {
  const SparseBuffers<Index> buffers = Buffers<Index>(plan, workspace);
  int blocks = 0;
  cudaError_t err = ResidentGridSize(IotaKernel<int64_t>, nnz, &blocks);
  if (err != cudaSuccess) return err;
  IotaKernel<int64_t>
      <<<blocks, kThreadsPerBlock, 0, stream>>>(buffers.positions, nnz);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  size_t sort_storage_bytes = plan.sort_storage_bytes;
  return cub::DeviceRadixSort::SortPairs(
      buffers.sort_storage, sort_storage_bytes,
      reinterpret_cast<const SortKey<Index>*>(indices), buffers.sorted_indices,
      buffers.positions, buffers.sorted_positions, nnz, 0, plan.sort_end_bit,
      stream);
}

// Second half of LaunchAdagradSparse: the update from the sorted pairs.
template <typename T, typename Acc, typename Index, typename Step>
cudaError_t UpdateSortedRows(T* var, Acc* accum, const T* grad, int64_t nnz,
                             int64_t row_size, const Step& step,
                             const WeightRounding& rounding,
                             const SparseWorkspace& plan, void* workspace,
                             cudaStream_t stream) {
  const SparseBuffers<Index> buffers = Buffers<Index>(plan, workspace);
  const int64_t num_tiles = (row_size + kTileColumns - 1) / kTileColumns;
  const int64_t blocks =
      (nnz * num_tiles + kWarpsPerBlock - 1) / kWarpsPerBlock;
  return WithGpuRounding<T>(rounding, [&](const auto& store) {
    AdagradSparseRowsKernel<T, Acc, SortKey<Index>, Step,
                            std::decay_t<decltype(store)>>
        <<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream>>>(
            var, accum, grad, buffers.sorted_indices, buffers.sorted_positions,
            nnz, row_size, num_tiles, step, store);
    return cudaGetLastError();
  });
}

// Updates the rows of var and accum ([num_rows, row_size]) named by the nnz
// indices, with grad [nnz, row_size]; duplicate indices are summed first,
// and the new weights stored as `rounding` says. Every index must be in
// [0, num_rows) (see FindFirstOutOfRangeIndex). `workspace` holds
// plan.total_bytes of device memory.
template <typename T, typename Acc, typename Index, typename Step>
cudaError_t LaunchAdagradSparse(T* var, Acc* accum, const T* grad,
                                const Index* indices, int64_t nnz,
                                int64_t row_size, const Step& step,
                                const WeightRounding& rounding,
                                const SparseWorkspace& plan, void* workspace,
                                cudaStream_t stream) {
  if (nnz == 0 || row_size == 0) return cudaSuccess;
  const cudaError_t err = SortIndices(indices, nnz, plan, workspace, stream);
  if (err != cudaSuccess) return err;
  return UpdateSortedRows<T, Acc, Index>(var, accum, grad, nnz, row_size, step,
                                         rounding, plan, workspace, stream);
}

}  // namespace gpu
}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_ADAGRAD_GPU_CUH_
