// How a multi-tensor dense update (TfAdagrad>MultiApplyDense) splits its
// work. Plain C++, no TensorFlow; the GPU kernel and the tests share it.
//
// On the CPU, the tensors are one concatenated range of elements, cut into
// shards by elements (AdagradDenseMultiRange in adagrad_cpu.h). On the GPU,
// each tensor is cut into chunks of kChunkElements, and a table passed by
// value in the kernel's arguments maps each block of a launch to one
// (tensor, chunk); when the table is full it is launched and a new one
// begun. A block works on one tensor only, so it may use 16-byte accesses
// whenever its chunk is aligned.
#ifndef TF_ADAGRAD_KERNELS_MULTI_TENSOR_H_
#define TF_ADAGRAD_KERNELS_MULTI_TENSOR_H_

#include <cstdint>

#include "kernels/half_types.h"
#include "kernels/host_device.h"
#include "kernels/strided_update.h"

namespace tf_adagrad {

// One variable of a multi-tensor dense update: var, accum and grad of `size`
// elements each.
template <typename T>
struct DenseTensors {
  T* var;
  T* accum;
  const T* grad;
  int64_t size;
};

// Elements one GPU block updates, when its tensor has that many left. A
// multiple of every vector width, so every chunk of a tensor is aligned
// when the tensor is.
constexpr int64_t kChunkElements = 65536;
// A table's capacity, sized to fit the kernel's 4 KiB of arguments.
constexpr int kMaxTensorsPerTable = 64;
constexpr int kMaxBlocksPerTable = 320;
constexpr int kMaxKernelArgumentBytes = 4096;

// The argument of one multi-tensor launch: block b of the grid updates
// chunk block_chunk[b] of tensor block_tensor[b].
template <typename T>
struct MultiTensorTable {
  T* var[kMaxTensorsPerTable];
  T* accum[kMaxTensorsPerTable];
  const T* grad[kMaxTensorsPerTable];
  int64_t size[kMaxTensorsPerTable];
  int32_t block_chunk[kMaxBlocksPerTable];
  uint8_t block_tensor[kMaxBlocksPerTable];
  int num_tensors;
  int num_blocks;
};
static_assert(kMaxTensorsPerTable <= 256, "block_tensor is one byte");
// The table travels with an AdagradStep (two doubles at most).
static_assert(sizeof(MultiTensorTable<double>) + 2 * sizeof(double) <=
                  kMaxKernelArgumentBytes,
              "the table must fit the kernel's arguments");

// The elements [begin, end) of tensor `tensor` of a table that one block
// updates.
struct BlockChunk {
  int tensor;
  int64_t begin;
  int64_t end;
};

template <typename T>
TF_ADAGRAD_HOST_DEVICE inline BlockChunk ChunkOfBlock(
    const MultiTensorTable<T>& table, int block) {
  BlockChunk chunk;
  chunk.tensor = table.block_tensor[block];
  chunk.begin = static_cast<int64_t>(table.block_chunk[block]) * kChunkElements;
  const int64_t left = table.size[chunk.tensor] - chunk.begin;
  chunk.end = chunk.begin + (left < kChunkElements ? left : kChunkElements);
  return chunk;
}

// Whether the chunk's var, accum and grad all start on a `vector_bytes`
// boundary, so that the block may move them `vector_bytes` at a time.
template <typename T>
TF_ADAGRAD_HOST_DEVICE inline bool ChunkIsVectorAligned(
    const MultiTensorTable<T>& table, const BlockChunk& chunk,
    int vector_bytes) {
  const int t = chunk.tensor;
  const uintptr_t addresses =
      reinterpret_cast<uintptr_t>(table.var[t] + chunk.begin) |
      reinterpret_cast<uintptr_t>(table.accum[t] + chunk.begin) |
      reinterpret_cast<uintptr_t>(table.grad[t] + chunk.begin);
  return addresses % vector_bytes == 0;
}

// What thread `thread` of block `block` (of `num_threads` threads) does: its
// share of the block's chunk, 16 bytes per access when the chunk is
// aligned. `Arith` is how elements are read and written (an Arithmetic),
// `Step` an AdagradStep; weights round to nearest.
template <template <typename> class Arith, typename T, typename Step>
TF_ADAGRAD_HOST_DEVICE TF_ADAGRAD_FORCE_INLINE void UpdateChunkOfBlock(
    const MultiTensorTable<T>& table, int block, int64_t thread,
    int64_t num_threads, const Step& step) {
  static_assert(kChunkElements % kVectorWidth<T> == 0,
                "chunks must keep a tensor's vector alignment");
  const BlockChunk chunk = ChunkOfBlock(table, block);
  T* var = table.var[chunk.tensor] + chunk.begin;
  T* accum = table.accum[chunk.tensor] + chunk.begin;
  const T* grad = table.grad[chunk.tensor] + chunk.begin;
  const int64_t size = chunk.end - chunk.begin;
  if (ChunkIsVectorAligned(table, chunk, kVectorBytes)) {
    UpdateStrided<Arith, kVectorWidth<T>>(var, accum, grad, step, size, thread,
                                          num_threads, RoundToNearest<Arith>(),
                                          0);
  } else {
    UpdateStrided<Arith, 1>(var, accum, grad, step, size, thread, num_threads,
                            RoundToNearest<Arith>(), 0);
  }
}

// Puts every chunk of every nonempty tensor, in order, into tables, and
// calls launch(table) (which returns whether it succeeded) for each table
// that fills up and for the last one. A tensor whose chunks do not all fit
// goes on in the next table. Returns false at the first failed launch.
template <typename T, typename Launch>
bool ForEachMultiTensorTable(const DenseTensors<T>* tensors,
                             int64_t num_tensors, const Launch& launch) {
  MultiTensorTable<T> table;
  table.num_tensors = 0;
  table.num_blocks = 0;
  const auto flush = [&table, &launch] {
    const bool ok = launch(static_cast<const MultiTensorTable<T>&>(table));
    table.num_tensors = 0;
    table.num_blocks = 0;
    return ok;
  };
  for (int64_t t = 0; t < num_tensors; ++t) {
    const DenseTensors<T>& tensor = tensors[t];
    const int64_t num_chunks =
        (tensor.size + kChunkElements - 1) / kChunkElements;
    for (int64_t chunk = 0; chunk < num_chunks; ++chunk) {
      // The tensor enters the table with its first chunk, and again after
      // the table it was in was launched.
      if (chunk == 0 || table.num_blocks == 0) {
        if (table.num_tensors == kMaxTensorsPerTable && !flush()) return false;
        const int slot = table.num_tensors++;
        table.var[slot] = tensor.var;
        table.accum[slot] = tensor.accum;
        table.grad[slot] = tensor.grad;
        table.size[slot] = tensor.size;
      }
      table.block_tensor[table.num_blocks] =
          static_cast<uint8_t>(table.num_tensors - 1);
      table.block_chunk[table.num_blocks] = static_cast<int32_t>(chunk);
      if (++table.num_blocks == kMaxBlocksPerTable && !flush()) return false;
    }
  }
  return table.num_blocks == 0 || flush();
}

}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_MULTI_TENSOR_H_
