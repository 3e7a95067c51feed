// The CPU updates (kernels/adagrad_cpu.h, kernels/rowwise_cpu.h) under
// AddressSanitizer and UndefinedBehaviorSanitizer (see BUILD): every input
// lives in a heap block that ends exactly where the data ends, so one element
// read or written past the end is reported, and data starts at offsets that
// break 16- and 32-byte alignment. Edge sizes around the vector widths, empty
// inputs, heavy duplicates, indices at the edges of their types, all storage
// and index types. The results are checked against the scalar update applied to
// the densified gradient. Also the random bits of stochastic rounding, filled
// into blocks of exactly their size, and sparse updates that round
// stochastically.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "kernels/adagrad_cpu.h"
#include "kernels/half_types.h"
#include "kernels/row_grouping.h"
#include "kernels/rowwise_cpu.h"
#include "kernels/stochastic_rounding.h"
#include "tests/cc/expect.h"

namespace {

using tf_adagrad_test::checks;
using tf_adagrad_test::failures;

using tf_adagrad::AdagradStep;
using tf_adagrad::Arithmetic;
using tf_adagrad::BFloat16;
using tf_adagrad::ComputeType;
using tf_adagrad::EpsilonPlacement;
using tf_adagrad::Float16;

// Weights stored rounded to nearest, as the ops store them by default
// (Prepare is a no-op, so one mutable instance serves every call).
using Nearest = tf_adagrad::RoundToNearest<tf_adagrad::Arithmetic>;
const Nearest kNearest;
Nearest nearest;

// `size` elements at `offset` elements into a heap block of exactly
// offset + size elements.
template <typename T>
class TightBuffer {
 public:
  TightBuffer(int64_t size, int64_t offset)
      : block_(new T[offset + size]),
        data_(block_.get() + offset),
        size_(size) {}
  T* data() { return data_; }
  T& operator[](int64_t i) { return data_[i]; }
  std::vector<T> copy() const { return std::vector<T>(data_, data_ + size_); }

 private:
  std::unique_ptr<T[]> block_;
  T* data_;
  int64_t size_;
};

template <typename T>
T FromFloat(float x) {
  return Arithmetic<T>::Store(static_cast<ComputeType<T>>(x));
}

template <typename T>
bool SameBits(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

template <typename T>
void Fill(TightBuffer<T>& buffer, int64_t size, std::mt19937_64& rng, float low,
          float high) {
  std::uniform_real_distribution<float> uniform(low, high);
  for (int64_t i = 0; i < size; ++i) buffer[i] = FromFloat<T>(uniform(rng));
}

template <typename T, EpsilonPlacement kPlacement>
void TestDense(std::mt19937_64& rng) {
  const AdagradStep<ComputeType<T>, kPlacement> step{0.1f, 1e-3f};
  const int64_t sizes[] = {0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 1000, 4099};
  for (int64_t size : sizes) {
    for (int64_t offset : {0, 1, 3}) {
      TightBuffer<T> var(size, offset), accum(size, offset), grad(size, offset);
      Fill(var, size, rng, -2.0f, 2.0f);
      Fill(accum, size, rng, 0.0f, 1.0f);
      Fill(grad, size, rng, -1.0f, 1.0f);
      std::vector<T> want_var = var.copy(), want_accum = accum.copy();
      tf_adagrad::RunCompiledFor<tf_adagrad::VectorIsa::kBaseline>(
          tf_adagrad::AdagradDenseLoop(), want_var.data(), want_accum.data(),
          grad.data(), step, kNearest, int64_t{0}, 0, size);
      tf_adagrad::AdagradDenseRange(var.data(), accum.data(), grad.data(), step,
                                    nearest, int64_t{0}, 0, size);
      for (int64_t i = 0; i < size; ++i) {
        EXPECT(SameBits(var[i], want_var[i]));
        EXPECT(SameBits(accum[i], want_accum[i]));
      }
    }
  }
}

template <typename Index>
void TestOutOfRange() {
  const Index max = std::numeric_limits<Index>::max();
  const Index min = std::numeric_limits<Index>::min();
  struct Case {
    std::vector<Index> indices;
    int64_t num_rows, want;
  };
  const Case cases[] = {
      {{}, 10, -1},
      {{0, 9, 3}, 10, -1},
      {{0, 10, 3}, 10, 1},
      {{2, -1}, 10, 1},
      {{min}, 10, 0},
      {{max}, 10, 0},
      {{max - 1, max}, static_cast<int64_t>(max), 1},
      {{5}, 0, 0},
  };
  for (const Case& c : cases) {
    TightBuffer<Index> indices(c.indices.size(), 1);
    for (size_t i = 0; i < c.indices.size(); ++i) indices[i] = c.indices[i];
    EXPECT(tf_adagrad::FindOutOfRangeIndex(indices.data(), c.indices.size(),
                                           c.num_rows) == c.want);
  }
}

template <typename T, typename Index, EpsilonPlacement kPlacement>
void TestSparse(std::mt19937_64& rng) {
  using C = ComputeType<T>;
  const AdagradStep<C, kPlacement> step{C(0.1f), C(1e-3f)};
  const int64_t row_sizes[] = {1, 3, 64, 1000};
  const int64_t nnzs[] = {0, 1, 5, 200};
  const int64_t num_rows_list[] = {1, 7, 50};
  for (int64_t row_size : row_sizes) {
    for (int64_t nnz : nnzs) {
      for (int64_t num_rows : num_rows_list) {
        if (row_size * nnz > 50000) continue;  // keeps the run short
        const int64_t offset = (row_size + nnz) % 3;
        const int64_t table = num_rows * row_size;
        TightBuffer<T> var(table, offset), accum(table, offset);
        TightBuffer<T> grad(nnz * row_size, offset);
        TightBuffer<Index> indices(nnz, offset);
        Fill(var, table, rng, -2.0f, 2.0f);
        Fill(accum, table, rng, 0.0f, 1.0f);
        Fill(grad, nnz * row_size, rng, -1.0f, 1.0f);
        // Heavy duplicates: indices drawn from the first few rows.
        const int64_t distinct = num_rows < 4 ? num_rows : num_rows / 4;
        for (int64_t k = 0; k < nnz; ++k)
          indices[k] = static_cast<Index>(rng() % distinct);
        EXPECT(tf_adagrad::FindOutOfRangeIndex(indices.data(), nnz, num_rows) ==
               -1);

        // Reference: densify in position order (compute type), then the
        // scalar dense update of each touched row.
        std::vector<C> dense(table, C(0));
        std::vector<bool> touched(num_rows, false);
        for (int64_t k = 0; k < nnz; ++k) {
          touched[indices[k]] = true;
          for (int64_t j = 0; j < row_size; ++j) {
            dense[indices[k] * row_size + j] +=
                Arithmetic<T>::Load(grad[k * row_size + j]);
          }
        }
        std::vector<T> want_var = var.copy(), want_accum = accum.copy();
        for (int64_t e = 0; e < table; ++e) {
          if (!touched[e / row_size]) continue;
          C v = Arithmetic<T>::Load(want_var[e]),
            a = Arithmetic<T>::Load(want_accum[e]);
          step.Apply(dense[e], &v, &a);
          want_var[e] = Arithmetic<T>::Store(v);
          want_accum[e] = Arithmetic<T>::Store(a);
        }

        const tf_adagrad::RowGroups groups =
            tf_adagrad::GroupRowsByIndex(indices.data(), nnz, num_rows);
        TightBuffer<C> scratch(row_size, 0);
        // Two halves, as two shards would run them.
        const int64_t middle = groups.num_unique() / 2;
        tf_adagrad::AdagradSparseRows(var.data(), accum.data(), grad.data(),
                                      indices.data(), groups, row_size, step,
                                      nearest, 0, middle, scratch.data());
        tf_adagrad::AdagradSparseRows(var.data(), accum.data(), grad.data(),
                                      indices.data(), groups, row_size, step,
                                      nearest, middle, groups.num_unique(),
                                      scratch.data());
        for (int64_t e = 0; e < table; ++e) {
          EXPECT(SameBits(var[e], want_var[e]));
          EXPECT(SameBits(accum[e], want_accum[e]));
        }
      }
    }
  }
}

// Rowwise Adagrad (kernels/rowwise_cpu.h): the dispatched dense loop against
// the baseline build, and the sparse loop, split in two halves, against the
// row update applied to each touched row's summed gradient. Rows around the
// 32 lanes of the sum.
template <typename T, typename Index>
void TestRowwise(std::mt19937_64& rng) {
  using C = ComputeType<T>;
  const tf_adagrad::RowwiseStep<C> step{C(0.1f), C(1e-3f)};
  for (int64_t row_size : {1, 3, 31, 32, 33, 100}) {
    for (int64_t num_rows : {0, 1, 7, 50}) {
      const int64_t offset = (row_size + num_rows) % 3;
      const int64_t table = num_rows * row_size;
      TightBuffer<T> var(table, offset), grad(table, offset);
      TightBuffer<C> accum(num_rows, offset);
      Fill(var, table, rng, -2.0f, 2.0f);
      Fill(accum, num_rows, rng, 0.0f, 1.0f);
      Fill(grad, table, rng, -1.0f, 1.0f);
      std::vector<T> want_var = var.copy();
      std::vector<C> want_accum = accum.copy();
      tf_adagrad::RunCompiledFor<tf_adagrad::VectorIsa::kBaseline>(
          tf_adagrad::RowwiseDenseRowsLoop(), want_var.data(),
          want_accum.data(), grad.data(), row_size, step, &nearest, 0,
          num_rows);
      tf_adagrad::RowwiseDenseRows(var.data(), accum.data(), grad.data(),
                                   row_size, step, nearest, 0, num_rows);
      for (int64_t e = 0; e < table; ++e) EXPECT(SameBits(var[e], want_var[e]));
      for (int64_t r = 0; r < num_rows; ++r) {
        EXPECT(SameBits(accum[r], want_accum[r]));
      }
      if (num_rows == 0) continue;

      for (int64_t nnz : {0, 1, 5, 200}) {
        TightBuffer<T> sparse_grad(nnz * row_size, offset);
        TightBuffer<Index> indices(nnz, offset);
        Fill(sparse_grad, nnz * row_size, rng, -1.0f, 1.0f);
        const int64_t distinct = num_rows < 4 ? num_rows : num_rows / 4;
        for (int64_t k = 0; k < nnz; ++k) {
          indices[k] = static_cast<Index>(rng() % distinct);
        }
        std::vector<C> summed(table, C(0));
        std::vector<bool> touched(num_rows, false);
        for (int64_t k = 0; k < nnz; ++k) {
          for (int64_t j = 0; j < row_size; ++j) {
            const C g = Arithmetic<T>::Load(sparse_grad[k * row_size + j]);
            C& sum = summed[indices[k] * row_size + j];
            sum = touched[indices[k]] ? sum + g : g;
          }
          touched[indices[k]] = true;
        }
        want_var = var.copy();
        want_accum = accum.copy();
        for (int64_t r = 0; r < num_rows; ++r) {
          if (!touched[r]) continue;
          tf_adagrad::RowwiseUpdateRow(
              want_var.data() + r * row_size, want_accum.data() + r,
              static_cast<const C*>(summed.data() + r * row_size), row_size,
              step, nearest, r * row_size);
        }
        const tf_adagrad::RowGroups groups =
            tf_adagrad::GroupRowsByIndex(indices.data(), nnz, num_rows);
        TightBuffer<C> scratch(row_size, 0);
        const int64_t middle = groups.num_unique() / 2;
        tf_adagrad::RowwiseSparseRows(
            var.data(), accum.data(), sparse_grad.data(), indices.data(),
            groups, row_size, step, nearest, 0, middle, scratch.data());
        tf_adagrad::RowwiseSparseRows(var.data(), accum.data(),
                                      sparse_grad.data(), indices.data(),
                                      groups, row_size, step, nearest, middle,
                                      groups.num_unique(), scratch.data());
        for (int64_t e = 0; e < table; ++e) {
          EXPECT(SameBits(var[e], want_var[e]));
        }
        for (int64_t r = 0; r < num_rows; ++r) {
          EXPECT(SameBits(accum[r], want_accum[r]));
        }
      }
    }
  }
}

// Tables too tall for (index, position) to share 64 bits take the unpacked
// sort; indices near the top of int64 must not overflow a shift.
void TestGroupingOfHugeIndices(std::mt19937_64& rng) {
  const int64_t nnz = 300;
  TightBuffer<int64_t> indices(nnz, 1);
  for (int64_t k = 0; k < nnz; ++k) {
    indices[k] = INT64_MAX - 1 - static_cast<int64_t>(rng() % 7);
  }
  const tf_adagrad::RowGroups groups =
      tf_adagrad::GroupRowsByIndex(indices.data(), nnz, INT64_MAX);
  EXPECT(groups.num_unique() <= 7);
  for (int64_t u = 0; u + 1 < groups.num_unique(); ++u) {
    EXPECT(indices[groups.positions[groups.run_starts[u]]] <
           indices[groups.positions[groups.run_starts[u + 1]]]);
  }
}

template <typename T, EpsilonPlacement kPlacement>
void TestAllIndexTypes(std::mt19937_64& rng) {
  TestDense<T, kPlacement>(rng);
  TestSparse<T, int32_t, kPlacement>(rng);
  TestSparse<T, int64_t, kPlacement>(rng);
}

template <EpsilonPlacement kPlacement>
void TestAllTypes(std::mt19937_64& rng) {
  TestAllIndexTypes<Float16, kPlacement>(rng);
  TestAllIndexTypes<BFloat16, kPlacement>(rng);
  TestAllIndexTypes<float, kPlacement>(rng);
  TestAllIndexTypes<double, kPlacement>(rng);
}

// ------------------------------------------------- stochastic rounding ---

// FillRandomBits into heap blocks of exactly `count` values: starts on and
// off block boundaries and below a block number's high word, every count up
// to past two AVX2 batches (64 positions each), and counts around a CPU
// stretch (the most one call fills).
void TestFillRandomBits() {
  const tf_adagrad::StochasticRoundingKey key{0x9e3779b97f4a7c15ull,
                                              0x100000003ull};
  std::vector<int64_t> counts;
  for (int64_t count = 0; count <= 150; ++count) counts.push_back(count);
  for (int64_t count : {255, 257, 511, 512}) counts.push_back(count);
  for (int64_t first :
       {int64_t{0}, int64_t{1}, int64_t{3}, int64_t{7}, int64_t{8}, int64_t{13},
        int64_t{517}, (int64_t{8} << 32) - 5}) {
    for (int64_t count : counts) {
      TightBuffer<uint16_t> bits(count, 0);
      tf_adagrad::FillRandomBits(key, first, count, bits.data());
      bool same = true;
      for (int64_t i = 0; i < count; ++i) {
        same = same && bits[i] == tf_adagrad::RandomBits(key, first + i);
      }
      EXPECT(same);
    }
  }
}

// The elementwise sparse update with stochastic rounding (the CPU's
// buffered bits, in a heap block of exactly its size) and accumulators of
// Acc (T, or float32): split in two halves, each with its own rounding,
// against the scalar update of the densified gradient whose weights are
// stored with RandomBits of their table position. Rows shorter and longer
// than a stretch (512).
template <typename T, typename Acc, typename Index, EpsilonPlacement kPlacement>
void TestStochasticSparse(std::mt19937_64& rng) {
  using C = ComputeType<T>;
  const AdagradStep<C, kPlacement> step{C(0.01f), C(1e-3f)};
  const tf_adagrad::StochasticRoundingKey key{rng(), rng()};
  for (int64_t row_size : {1, 3, 64, 513, 1000}) {
    for (int64_t nnz : {0, 1, 5, 60}) {
      for (int64_t num_rows : {1, 7, 50}) {
        const int64_t offset = (row_size + nnz) % 3;
        const int64_t table = num_rows * row_size;
        TightBuffer<T> var(table, offset), grad(nnz * row_size, offset);
        TightBuffer<Acc> accum(table, offset);
        TightBuffer<Index> indices(nnz, offset);
        Fill(var, table, rng, -2.0f, 2.0f);
        Fill(accum, table, rng, 0.0f, 1.0f);
        Fill(grad, nnz * row_size, rng, -1.0f, 1.0f);
        const int64_t distinct = num_rows < 4 ? num_rows : num_rows / 4;
        for (int64_t k = 0; k < nnz; ++k) {
          indices[k] = static_cast<Index>(rng() % distinct);
        }
        std::vector<C> dense(table, C(0));
        std::vector<bool> touched(num_rows, false);
        for (int64_t k = 0; k < nnz; ++k) {
          for (int64_t j = 0; j < row_size; ++j) {
            C& sum = dense[indices[k] * row_size + j];
            const C g = Arithmetic<T>::Load(grad[k * row_size + j]);
            sum = touched[indices[k]] ? sum + g : g;
          }
          touched[indices[k]] = true;
        }
        std::vector<T> want_var = var.copy();
        std::vector<Acc> want_accum = accum.copy();
        for (int64_t e = 0; e < table; ++e) {
          if (!touched[e / row_size]) continue;
          C v = Arithmetic<T>::Load(want_var[e]),
            a = Arithmetic<Acc>::Load(want_accum[e]);
          step.Apply(dense[e], &v, &a);
          want_var[e] =
              tf_adagrad::StochasticRound<T>(v, tf_adagrad::RandomBits(key, e));
          want_accum[e] = Arithmetic<Acc>::Store(a);
        }

        const tf_adagrad::RowGroups groups =
            tf_adagrad::GroupRowsByIndex(indices.data(), nnz, num_rows);
        TightBuffer<C> scratch(row_size, 0);
        const int64_t middle = groups.num_unique() / 2;
        // On the heap, so that a read past its random bits is reported.
        const auto first_half =
            std::make_unique<tf_adagrad::StochasticRoundingBuffered>(key);
        const auto second_half =
            std::make_unique<tf_adagrad::StochasticRoundingBuffered>(key);
        tf_adagrad::AdagradSparseRows(var.data(), accum.data(), grad.data(),
                                      indices.data(), groups, row_size, step,
                                      *first_half, 0, middle, scratch.data());
        tf_adagrad::AdagradSparseRows(var.data(), accum.data(), grad.data(),
                                      indices.data(), groups, row_size, step,
                                      *second_half, middle, groups.num_unique(),
                                      scratch.data());
        for (int64_t e = 0; e < table; ++e) {
          EXPECT(SameBits(var[e], want_var[e]));
          EXPECT(SameBits(accum[e], want_accum[e]));
        }
      }
    }
  }
}

// The rowwise sparse update with stochastic rounding, likewise, against
// RowwiseUpdateRow with the per-element StochasticRounding (each element's
// bits drawn alone, as the GPU draws them).
template <typename T, typename Index>
void TestStochasticRowwiseSparse(std::mt19937_64& rng) {
  using C = ComputeType<T>;
  const tf_adagrad::RowwiseStep<C> step{C(0.01f), C(1e-3f)};
  const tf_adagrad::StochasticRoundingKey key{rng(), rng()};
  for (int64_t row_size : {1, 33, 513}) {
    for (int64_t num_rows : {1, 7, 50}) {
      const int64_t nnz = 40, offset = (row_size + num_rows) % 3;
      const int64_t table = num_rows * row_size;
      TightBuffer<T> var(table, offset), grad(nnz * row_size, offset);
      TightBuffer<C> accum(num_rows, offset);
      TightBuffer<Index> indices(nnz, offset);
      Fill(var, table, rng, -2.0f, 2.0f);
      Fill(accum, num_rows, rng, 0.0f, 1.0f);
      Fill(grad, nnz * row_size, rng, -1.0f, 1.0f);
      const int64_t distinct = num_rows < 4 ? num_rows : num_rows / 4;
      for (int64_t k = 0; k < nnz; ++k) {
        indices[k] = static_cast<Index>(rng() % distinct);
      }
      std::vector<C> summed(table, C(0));
      std::vector<bool> touched(num_rows, false);
      for (int64_t k = 0; k < nnz; ++k) {
        for (int64_t j = 0; j < row_size; ++j) {
          const C g = Arithmetic<T>::Load(grad[k * row_size + j]);
          C& sum = summed[indices[k] * row_size + j];
          sum = touched[indices[k]] ? sum + g : g;
        }
        touched[indices[k]] = true;
      }
      std::vector<T> want_var = var.copy();
      std::vector<C> want_accum = accum.copy();
      tf_adagrad::StochasticRounding per_element{key};
      for (int64_t r = 0; r < num_rows; ++r) {
        if (!touched[r]) continue;
        tf_adagrad::RowwiseUpdateRow(
            want_var.data() + r * row_size, want_accum.data() + r,
            static_cast<const C*>(summed.data() + r * row_size), row_size, step,
            per_element, r * row_size);
      }
      const tf_adagrad::RowGroups groups =
          tf_adagrad::GroupRowsByIndex(indices.data(), nnz, num_rows);
      TightBuffer<C> scratch(row_size, 0);
      const auto rounding =
          std::make_unique<tf_adagrad::StochasticRoundingBuffered>(key);
      tf_adagrad::RowwiseSparseRows(
          var.data(), accum.data(), grad.data(), indices.data(), groups,
          row_size, step, *rounding, 0, groups.num_unique(), scratch.data());
      for (int64_t e = 0; e < table; ++e) {
        EXPECT(SameBits(var[e], want_var[e]));
      }
      for (int64_t r = 0; r < num_rows; ++r) {
        EXPECT(SameBits(accum[r], want_accum[r]));
      }
    }
  }
}

template <EpsilonPlacement kPlacement>
void TestStochastic(std::mt19937_64& rng) {
  TestStochasticSparse<Float16, Float16, int32_t, kPlacement>(rng);
  TestStochasticSparse<Float16, float, int64_t, kPlacement>(rng);
  TestStochasticSparse<BFloat16, BFloat16, int64_t, kPlacement>(rng);
  TestStochasticSparse<BFloat16, float, int32_t, kPlacement>(rng);
}

// Deliberate bugs, so the test can prove the sanitizers are active.
int PlantedBug(const char* which) {
  volatile int64_t four = 4;  // sizes the compiler cannot see through
  if (std::strcmp(which, "--plant-overflow") == 0) {
    TightBuffer<float> buffer(four, 1);
    return static_cast<int>(buffer[four]);
  }
  if (std::strcmp(which, "--plant-signed-overflow") == 0) {
    const int64_t big = INT64_MAX - 3 + four;
    std::printf("%lld\n", static_cast<long long>(big));
    return 0;
  }
  std::fprintf(stderr, "unknown argument %s\n", which);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) return PlantedBug(argv[1]);
  std::mt19937_64 rng(7);
  TestAllTypes<EpsilonPlacement::kInsideSqrt>(rng);
  TestAllTypes<EpsilonPlacement::kOutsideSqrt>(rng);
  TestRowwise<Float16, int32_t>(rng);
  TestRowwise<BFloat16, int64_t>(rng);
  TestRowwise<float, int32_t>(rng);
  TestRowwise<double, int64_t>(rng);
  TestOutOfRange<int32_t>();
  TestOutOfRange<int64_t>();
  TestGroupingOfHugeIndices(rng);
  TestFillRandomBits();
  TestStochastic<EpsilonPlacement::kInsideSqrt>(rng);
  TestStochastic<EpsilonPlacement::kOutsideSqrt>(rng);
  TestStochasticRowwiseSparse<Float16, int32_t>(rng);
  TestStochasticRowwiseSparse<BFloat16, int64_t>(rng);
  if (failures) {
    std::fprintf(stderr, "%d of %lld expectation(s) failed\n", failures,
                 static_cast<long long>(checks));
    return 1;
  }
  std::printf("adagrad_math_sanitize_test: %lld expectations held\n",
              static_cast<long long>(checks));
  return 0;
}
