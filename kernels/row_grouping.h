// Grouping a sparse gradient's rows by index, so that duplicate indices can
// be summed and each row updated once: a stable radix sort, optionally split
// across threads. Plain C++, no TensorFlow.
#ifndef TF_ADAGRAD_KERNELS_ROW_GROUPING_H_
#define TF_ADAGRAD_KERNELS_ROW_GROUPING_H_

#include <algorithm>
#include <cstdint>
#include <vector>

namespace tf_adagrad {

// Duplicate indices grouped for a dense-equivalent sparse update.
// Unique row u owns positions[run_starts[u] .. run_starts[u + 1]): the
// gradient rows with that index, in their original order. Unique rows come
// in increasing index order.
struct RowGroups {
  std::vector<int64_t> positions;
  std::vector<int64_t> run_starts;  // size num_unique + 1
  int64_t num_unique() const {
    return static_cast<int64_t>(run_starts.size()) - 1;
  }
};

// Runs task(c) for every c in [0, num_tasks): the serial runner. The op
// passes one that runs the tasks on its threads.
struct SerialTasks {
  template <typename Task>
  void operator()(int64_t num_tasks, const Task& task) const {
    for (int64_t c = 0; c < num_tasks; ++c) task(c);
  }
};

// Below this many keys per chunk, splitting the sort across threads costs
// more in synchronization than it saves.
constexpr int64_t kMinKeysPerSortChunk = 1 << 15;

// Groups the gradient rows by index with a stable LSD radix sort: O(nnz)
// per pass, and only as many passes as num_rows needs bits (two for a
// million rows). Each key packs (index, position) into 64 bits when they fit
// (they nearly always do), so one array moves per pass. Stability keeps
// duplicates in position order, so the sums that follow are the same
// whatever the thread count. Every index must be in [0, num_rows).
//
// With `num_chunks` > 1 (and enough keys), every pass is split into that
// many contiguous chunks run by `run_tasks`: each chunk counts its digits,
// and then scatters its keys after those of the chunks before it, which
// keeps the sort stable and its result independent of the chunk count.
template <typename Index, typename RunTasks = SerialTasks>
RowGroups GroupRowsByIndex(const Index* indices, int64_t nnz, int64_t num_rows,
                           int64_t num_chunks = 1,
                           const RunTasks& run_tasks = RunTasks()) {
  RowGroups groups;
  groups.positions.resize(nnz);
  const auto bits_for = [](int64_t n) {  // bits to hold values in [0, n)
    return n > 1 ? 64 - __builtin_clzll(static_cast<uint64_t>(n - 1)) : 0;
  };
  const int index_bits = bits_for(num_rows);
  const int position_bits = bits_for(nnz);
  const bool packed = index_bits + position_bits <= 64;
  // Packed: key = index << position_bits | position. Otherwise the key is the
  // index and the positions travel in a second array.
  const int index_shift = packed ? position_bits : 0;
  num_chunks =
      std::max<int64_t>(1, std::min(num_chunks, nnz / kMinKeysPerSortChunk));
  const auto chunk_begin = [nnz, num_chunks](int64_t c) {
    return nnz / num_chunks * c + std::min(c, nnz % num_chunks);
  };

  std::vector<uint64_t> keys(nnz);
  run_tasks(num_chunks, [&](int64_t c) {
    for (int64_t i = chunk_begin(c); i < chunk_begin(c + 1); ++i) {
      keys[i] = (static_cast<uint64_t>(indices[i]) << index_shift) |
                (packed ? static_cast<uint64_t>(i) : 0);
      if (!packed) groups.positions[i] = i;
    }
  });
  constexpr int kMaxDigitBits = 11;  // 2048 buckets: counts fit in L1
  const int passes = (index_bits + kMaxDigitBits - 1) / kMaxDigitBits;
  if (passes > 0 && nnz > 1) {
    const int digit_bits = (index_bits + passes - 1) / passes;
    const int64_t num_buckets = int64_t{1} << digit_bits;
    const uint64_t digit_mask = static_cast<uint64_t>(num_buckets - 1);
    std::vector<uint64_t> keys_out(nnz);
    std::vector<int64_t> positions_out(packed ? 0 : nnz);
    // Chunk c's cursor for bucket b is at [c * num_buckets + b].
    std::vector<int64_t> cursors(num_chunks * num_buckets);
    for (int pass = 0; pass < passes; ++pass) {
      const int shift = index_shift + pass * digit_bits;
      run_tasks(num_chunks, [&](int64_t c) {
        int64_t* count = cursors.data() + c * num_buckets;
        std::fill(count, count + num_buckets, 0);
        for (int64_t i = chunk_begin(c); i < chunk_begin(c + 1); ++i) {
          ++count[(keys[i] >> shift) & digit_mask];
        }
      });
      // Bucket-major, chunk-minor exclusive prefix sum: the cursors.
      int64_t total = 0;
      for (int64_t b = 0; b < num_buckets; ++b) {
        for (int64_t c = 0; c < num_chunks; ++c) {
          const int64_t count = cursors[c * num_buckets + b];
          cursors[c * num_buckets + b] = total;
          total += count;
        }
      }
      run_tasks(num_chunks, [&](int64_t c) {
        int64_t* cursor = cursors.data() + c * num_buckets;
        for (int64_t i = chunk_begin(c); i < chunk_begin(c + 1); ++i) {
          const int64_t to = cursor[(keys[i] >> shift) & digit_mask]++;
          keys_out[to] = keys[i];
          if (!packed) positions_out[to] = groups.positions[i];
        }
      });
      keys.swap(keys_out);
      if (!packed) groups.positions.swap(positions_out);
    }
  }
  const uint64_t position_mask =
      packed ? (uint64_t{1} << position_bits) - 1 : 0;
  if (packed) {
    run_tasks(num_chunks, [&](int64_t c) {
      for (int64_t i = chunk_begin(c); i < chunk_begin(c + 1); ++i) {
        groups.positions[i] = static_cast<int64_t>(keys[i] & position_mask);
      }
    });
  }
  groups.run_starts.reserve(nnz + 1);
  for (int64_t i = 0; i < nnz; ++i) {
    if (i == 0 || (keys[i] >> index_shift) != (keys[i - 1] >> index_shift)) {
      groups.run_starts.push_back(i);
    }
  }
  groups.run_starts.push_back(nnz);
  return groups;
}

// Index of the first entry of `indices` outside [0, num_rows), or -1.
template <typename Index>
int64_t FindOutOfRangeIndex(const Index* indices, int64_t nnz,
                            int64_t num_rows) {
  for (int64_t i = 0; i < nnz; ++i) {
    const int64_t index = static_cast<int64_t>(indices[i]);
    if (index < 0 || index >= num_rows) return i;
  }
  return -1;
}

// How many unique rows ahead the CPU sparse loops (elementwise and rowwise)
// prefetch a row's var and accumulator: rows are scattered over a table far
// larger than the caches, so each would otherwise stall on memory, and a
// loop whose rows draw random bits (stochastic rounding) runs too many
// instructions per row for the CPU to look ahead by itself. A row's first
// kSparsePrefetchBytes are prefetched; the hardware prefetcher follows a
// longer row.
constexpr int64_t kSparsePrefetchDistance = 8;
constexpr int64_t kSparsePrefetchBytes = 512;

// Asks for the cache lines of the first min(bytes, kSparsePrefetchBytes)
// bytes at p, to be written.
inline __attribute__((always_inline)) void PrefetchRowForWrite(const void* p,
                                                               int64_t bytes) {
  const int64_t stop =
      bytes < kSparsePrefetchBytes ? bytes : kSparsePrefetchBytes;
  for (int64_t b = 0; b < stop; b += 64) {
    __builtin_prefetch(static_cast<const char*>(p) + b, 1);
  }
}

}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_ROW_GROUPING_H_
