// Tests of the TF-free kernel headers: the conversions, the grouping of
// duplicate indices (including paths the ops cannot reach with real tables),
// the sparse update against a scalar reference, every instruction-set
// variant against the baseline, the GPU multi-tensor table on a simulated
// grid, and rowwise Adagrad against a scalar reference and across variants.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/adagrad_cpu.h"
#include "kernels/half_types.h"
#include "kernels/multi_tensor.h"
#include "kernels/row_grouping.h"
#include "kernels/rowwise_cpu.h"
#include "tests/cc/expect.h"

namespace {

using tf_adagrad_test::failures;

using tf_adagrad::AdagradDenseLoop;
using tf_adagrad::AdagradSparseRowsLoop;
using tf_adagrad::AdagradStep;
using tf_adagrad::EpsilonPlacement;
using tf_adagrad::RowGroups;
using tf_adagrad::RowwiseDenseRowsLoop;
using tf_adagrad::RowwiseSparseRowsLoop;
using tf_adagrad::RowwiseStep;
using tf_adagrad::RunCompiledFor;
using tf_adagrad::VectorIsa;

// Weights stored rounded to nearest, as the ops store them by default
// (Prepare is a no-op, so one mutable instance serves every call).
using Nearest = tf_adagrad::RoundToNearest<tf_adagrad::Arithmetic>;
const Nearest kNearest;
Nearest nearest;

// Every group lists exactly the positions holding its index, in order, and
// the groups come in increasing index order.
void ExpectValidGroups(const std::vector<int64_t>& indices,
                       const RowGroups& groups) {
  const int64_t nnz = indices.size();
  EXPECT(static_cast<int64_t>(groups.positions.size()) == nnz);
  EXPECT(groups.run_starts.front() == 0 && groups.run_starts.back() == nnz);
  std::vector<int> seen(nnz, 0);
  for (int64_t u = 0; u < groups.num_unique(); ++u) {
    const int64_t first = groups.run_starts[u], last = groups.run_starts[u + 1];
    EXPECT(first < last);
    const int64_t index = indices[groups.positions[first]];
    if (u > 0) {
      EXPECT(indices[groups.positions[groups.run_starts[u - 1]]] < index);
    }
    for (int64_t k = first; k < last; ++k) {
      EXPECT(indices[groups.positions[k]] == index);
      if (k > first) EXPECT(groups.positions[k - 1] < groups.positions[k]);
      ++seen[groups.positions[k]];
    }
  }
  for (int64_t i = 0; i < nnz; ++i) EXPECT(seen[i] == 1);
}

void TestGrouping() {
  std::mt19937_64 rng(0);
  struct Case {
    int64_t num_rows, nnz;
  };
  // Includes num_rows so large that (index, position) cannot share 64 bits.
  const Case cases[] = {{1, 0},
                        {1, 5},
                        {2, 1},
                        {7, 100},
                        {1 << 20, 8192},
                        {1000, 100000},
                        {int64_t{1} << 62, 1000},
                        {INT64_MAX, 50}};
  for (const Case& c : cases) {
    std::vector<int64_t> indices(c.nnz);
    for (auto& index : indices) {
      // Draw from a few values to force duplicates, spread over the range.
      index =
          static_cast<int64_t>((rng() % 17) * (c.num_rows / 17)) % c.num_rows;
    }
    ExpectValidGroups(indices, tf_adagrad::GroupRowsByIndex(indices.data(),
                                                            c.nnz, c.num_rows));
    std::vector<int32_t> narrow(indices.begin(), indices.end());
    if (c.num_rows <= INT32_MAX) {
      RowGroups g =
          tf_adagrad::GroupRowsByIndex(narrow.data(), c.nnz, c.num_rows);
      ExpectValidGroups(indices, g);
    }
  }
}

void TestHalfConversions() {
  // Every half round-trips through float (NaNs stay NaN).
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float f = tf_adagrad::HalfToFloat(static_cast<uint16_t>(bits));
    if (std::isnan(f)) {
      EXPECT(std::isnan(tf_adagrad::HalfToFloat(tf_adagrad::FloatToHalf(f))));
    } else {
      EXPECT(tf_adagrad::FloatToHalf(f) == bits);
    }
  }
  EXPECT(tf_adagrad::HalfToFloat(0x0001) == std::ldexp(1.0f, -24));
  EXPECT(tf_adagrad::HalfToFloat(0x7bff) == 65504.0f);
  EXPECT(tf_adagrad::FloatToHalf(65519.0f) == 0x7bff);
  EXPECT(tf_adagrad::FloatToHalf(65520.0f) == 0x7c00);
  EXPECT(tf_adagrad::FloatToHalf(std::ldexp(1.0f, -25)) == 0);  // tie -> even
  EXPECT(tf_adagrad::FloatToHalf(std::ldexp(1.5f, -25)) ==
         0x0001);  // above tie
  EXPECT(tf_adagrad::FloatToHalf(std::ldexp(3.0f, -25)) ==
         0x0002);  // tie -> even
  EXPECT(tf_adagrad::FloatToHalf(-0.0f) == 0x8000);
}

void TestBFloat16Conversions() {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float f = tf_adagrad::BFloat16ToFloat(static_cast<uint16_t>(bits));
    if (!std::isnan(f)) EXPECT(tf_adagrad::FloatToBFloat16(f) == bits);
  }
  // 1 + 2^-8 is halfway between two bfloat16 values: ties go to even.
  EXPECT(tf_adagrad::FloatToBFloat16(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);
  EXPECT(tf_adagrad::FloatToBFloat16(1.0f + std::ldexp(3.0f, -8)) == 0x3f82);
  EXPECT(std::isnan(
      tf_adagrad::BFloat16ToFloat(tf_adagrad::FloatToBFloat16(NAN))));
}

// The reference is written out here, not taken from the kernel headers.
template <EpsilonPlacement kPlacement>
void TestSparseUpdateMatchesScalarReference() {
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  const int64_t num_rows = 50, row_size = 3, nnz = 200;
  std::vector<float> var(num_rows * row_size), accum(num_rows * row_size, 0.1f);
  for (auto& v : var) v = uniform(rng);
  std::vector<float> grad(nnz * row_size);
  for (auto& g : grad) g = uniform(rng);
  std::vector<int64_t> indices(nnz);
  for (auto& i : indices) i = rng() % 20;
  // Reference: densify in position order, then update touched rows.
  std::vector<float> dense(num_rows * row_size, 0.0f);
  std::vector<bool> touched(num_rows, false);
  for (int64_t k = 0; k < nnz; ++k) {
    touched[indices[k]] = true;
    for (int64_t j = 0; j < row_size; ++j) {
      dense[indices[k] * row_size + j] += grad[k * row_size + j];
    }
  }
  std::vector<float> want_var = var, want_accum = accum;
  for (int64_t r = 0; r < num_rows; ++r) {
    if (!touched[r]) continue;
    for (int64_t j = 0; j < row_size; ++j) {
      const int64_t e = r * row_size + j;
      want_accum[e] += dense[e] * dense[e];
      const float denominator = kPlacement == EpsilonPlacement::kInsideSqrt
                                    ? std::sqrt(want_accum[e] + 1e-7f)
                                    : std::sqrt(want_accum[e]) + 1e-7f;
      want_var[e] -= 0.1f * dense[e] / denominator;
    }
  }
  const RowGroups groups =
      tf_adagrad::GroupRowsByIndex(indices.data(), nnz, num_rows);
  std::vector<float> scratch(row_size);
  const AdagradStep<float, kPlacement> step{0.1f, 1e-7f};
  tf_adagrad::AdagradSparseRows(var.data(), accum.data(), grad.data(),
                                indices.data(), groups, row_size, step, nearest,
                                0, groups.num_unique(), scratch.data());
  for (size_t e = 0; e < var.size(); ++e) {
    EXPECT(var[e] == want_var[e]);
    EXPECT(accum[e] == want_accum[e]);
  }
}

// Rowwise Adagrad against a reference written out here: per row, 32 lanes
// of squares (lane l takes elements l, l + 32, ...), the lanes added
// pairwise from the top half down, the mean, one multiplier per row.
// Duplicate sparse rows are summed in position order first.
template <typename C>
void RowwiseReferenceRow(C* var, C* accum, const C* grad, int64_t row_size,
                         C lr, C epsilon) {
  C lanes[32] = {};
  for (int64_t j = 0; j < row_size; ++j) lanes[j % 32] += grad[j] * grad[j];
  for (int half = 16; half >= 1; half /= 2) {
    for (int l = 0; l < half; ++l) lanes[l] = lanes[l] + lanes[l + half];
  }
  *accum = *accum + lanes[0] / static_cast<C>(row_size);
  const C multiplier = lr / (std::sqrt(*accum) + epsilon);
  for (int64_t j = 0; j < row_size; ++j) var[j] = var[j] - multiplier * grad[j];
}

template <typename C>
void TestRowwiseMatchesScalarReference() {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<C> uniform(-1, 1);
  for (const int64_t row_size : {1, 5, 32, 33, 100, 199}) {
    const int64_t num_rows = 40, nnz = 90;
    std::vector<C> var(num_rows * row_size), accum(num_rows);
    std::vector<C> grad(num_rows * row_size), sparse_grad(nnz * row_size);
    for (auto& v : var) v = uniform(rng);
    for (auto& a : accum) a = uniform(rng) + 1;
    for (auto& g : grad) g = uniform(rng);
    for (auto& g : sparse_grad) g = uniform(rng);
    std::vector<int64_t> indices(nnz);
    for (auto& i : indices) i = rng() % 25;  // duplicates; rows 25.. untouched
    const RowwiseStep<C> step{static_cast<C>(0.1), static_cast<C>(1e-8)};

    std::vector<C> want_var = var, want_accum = accum;
    for (int64_t r = 0; r < num_rows; ++r) {
      RowwiseReferenceRow(&want_var[r * row_size], &want_accum[r],
                          &grad[r * row_size], row_size, step.lr, step.epsilon);
    }
    std::vector<C> v = var, a = accum;
    tf_adagrad::RowwiseDenseRows(v.data(), a.data(), grad.data(), row_size,
                                 step, nearest, 0, num_rows);
    EXPECT(v == want_var);
    EXPECT(a == want_accum);

    std::vector<C> summed(num_rows * row_size, C(0));
    std::vector<bool> touched(num_rows, false);
    for (int64_t k = 0; k < nnz; ++k) {
      const int64_t r = indices[k];
      for (int64_t j = 0; j < row_size; ++j) {
        C& s = summed[r * row_size + j];
        s = touched[r] ? s + sparse_grad[k * row_size + j]
                       : sparse_grad[k * row_size + j];
      }
      touched[r] = true;
    }
    want_var = var, want_accum = accum;
    for (int64_t r = 0; r < num_rows; ++r) {
      if (!touched[r]) continue;
      RowwiseReferenceRow(&want_var[r * row_size], &want_accum[r],
                          &summed[r * row_size], row_size, step.lr,
                          step.epsilon);
    }
    const RowGroups groups =
        tf_adagrad::GroupRowsByIndex(indices.data(), nnz, num_rows);
    std::vector<C> scratch(row_size);
    v = var, a = accum;
    tf_adagrad::RowwiseSparseRows(
        v.data(), a.data(), sparse_grad.data(), indices.data(), groups,
        row_size, step, nearest, 0, groups.num_unique(), scratch.data());
    EXPECT(v == want_var);
    EXPECT(a == want_accum);
  }
}

// The vectorized float16 path (F16C, where the CPU has it) must give the
// scalar path's bits, across the whole range: subnormals, overflow, ties.
template <EpsilonPlacement kPlacement>
void TestHalfDenseVectorPathMatchesScalar() {
  std::mt19937_64 rng(2);
  const int64_t n = 4099;  // not a multiple of the vector width
  std::vector<tf_adagrad::Float16> var(n), accum(n), grad(n);
  for (int64_t i = 0; i < n; ++i) {
    var[i].bits = static_cast<uint16_t>(rng());
    accum[i].bits = static_cast<uint16_t>(rng() & 0x7fff);  // non-negative
    grad[i].bits = static_cast<uint16_t>(rng());
  }
  for (float lr : {1e-3f, 1.0f, 3e4f}) {
    std::vector<tf_adagrad::Float16> v1 = var, a1 = accum, v2 = var, a2 = accum;
    const AdagradStep<float, kPlacement> step{lr, 1e-3f};
    tf_adagrad::AdagradDenseRange(v1.data(), a1.data(), grad.data(), step,
                                  nearest, int64_t{0}, 0, n);
    RunCompiledFor<VectorIsa::kBaseline>(AdagradDenseLoop(), v2.data(),
                                         a2.data(), grad.data(), step, kNearest,
                                         int64_t{0}, 0, n);
    for (int64_t i = 0; i < n; ++i) {
      const float x1 = tf_adagrad::HalfToFloat(v1[i].bits);
      const float x2 = tf_adagrad::HalfToFloat(v2[i].bits);
      EXPECT(v1[i].bits == v2[i].bits || (std::isnan(x1) && std::isnan(x2)));
      EXPECT(a1[i].bits == a2[i].bits ||
             (std::isnan(tf_adagrad::HalfToFloat(a1[i].bits)) &&
              std::isnan(tf_adagrad::HalfToFloat(a2[i].bits))));
    }
  }
}

#ifdef TF_ADAGRAD_X86
// Random bits of every kind (subnormals, infinities, NaN) for T's elements;
// accumulators non-negative.
template <typename T>
T RandomElement(std::mt19937_64& rng, bool non_negative) {
  T x;
  uint64_t bits = rng();
  if (non_negative) bits &= ~(uint64_t{1} << (8 * sizeof(T) - 1));
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

template <typename T>
bool SameBits(T a, T b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

bool IsNanBits(float x) { return std::isnan(x); }
bool IsNanBits(double x) { return std::isnan(x); }
bool IsNanBits(tf_adagrad::Float16 x) {
  return std::isnan(tf_adagrad::HalfToFloat(x.bits));
}
bool IsNanBits(tf_adagrad::BFloat16 x) {
  return std::isnan(tf_adagrad::BFloat16ToFloat(x.bits));
}

// Each instruction-set variant this CPU runs (AVX2, AVX-512), dense and
// sparse, gives the baseline build's bits (NaN payloads aside).
template <typename T, EpsilonPlacement kPlacement>
void TestVectorVariantsMatchBaseline() {
  using C = tf_adagrad::ComputeType<T>;
  std::mt19937_64 rng(3);
  const int64_t n = 4099, rows = 64, row_size = n / rows, nnz = 200;
  std::vector<T> var(n), accum(n), grad(n), sparse_grad(nnz * row_size);
  for (int64_t i = 0; i < n; ++i) {
    var[i] = RandomElement<T>(rng, false);
    accum[i] = RandomElement<T>(rng, true);
    grad[i] = RandomElement<T>(rng, false);
  }
  for (auto& g : sparse_grad) g = RandomElement<T>(rng, false);
  std::vector<int64_t> indices(nnz);
  for (auto& index : indices)
    index = static_cast<int64_t>(rng() % 16);  // duplicates
  const tf_adagrad::RowGroups groups =
      tf_adagrad::GroupRowsByIndex(indices.data(), nnz, rows);
  std::vector<C> scratch(row_size);
  const AdagradStep<C, kPlacement> step{static_cast<C>(0.01),
                                        static_cast<C>(1e-7)};

  std::vector<T> want_var = var, want_accum = accum;
  RunCompiledFor<VectorIsa::kBaseline>(AdagradDenseLoop(), want_var.data(),
                                       want_accum.data(), grad.data(), step,
                                       kNearest, int64_t{0}, 0, n);
  std::vector<T> want_sparse_var = var, want_sparse_accum = accum;
  RunCompiledFor<VectorIsa::kBaseline>(
      AdagradSparseRowsLoop(), want_sparse_var.data(), want_sparse_accum.data(),
      sparse_grad.data(), indices.data(), groups, row_size, step, &nearest, 0,
      groups.num_unique(), scratch.data());
  const auto expect_same = [](const std::vector<T>& got,
                              const std::vector<T>& want) {
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT(SameBits(got[i], want[i]) ||
             (IsNanBits(got[i]) && IsNanBits(want[i])));
    }
  };
  const bool has_avx2 = __builtin_cpu_supports("avx2");
  const bool has_avx512 =
      tf_adagrad::CpuVectorIsa() == tf_adagrad::VectorIsa::kAvx512;
  if (has_avx2) {
    std::vector<T> v = var, a = accum;
    RunCompiledFor<VectorIsa::kAvx2>(AdagradDenseLoop(), v.data(), a.data(),
                                     grad.data(), step, kNearest, int64_t{0}, 0,
                                     n);
    expect_same(v, want_var);
    expect_same(a, want_accum);
    v = var, a = accum;
    RunCompiledFor<VectorIsa::kAvx2>(
        AdagradSparseRowsLoop(), v.data(), a.data(), sparse_grad.data(),
        indices.data(), groups, row_size, step, &nearest, 0,
        groups.num_unique(), scratch.data());
    expect_same(v, want_sparse_var);
    expect_same(a, want_sparse_accum);
  }
  if (has_avx512) {
    std::vector<T> v = var, a = accum;
    RunCompiledFor<VectorIsa::kAvx512>(AdagradDenseLoop(), v.data(), a.data(),
                                       grad.data(), step, kNearest, int64_t{0},
                                       0, n);
    expect_same(v, want_var);
    expect_same(a, want_accum);
    v = var, a = accum;
    RunCompiledFor<VectorIsa::kAvx512>(
        AdagradSparseRowsLoop(), v.data(), a.data(), sparse_grad.data(),
        indices.data(), groups, row_size, step, &nearest, 0,
        groups.num_unique(), scratch.data());
    expect_same(v, want_sparse_var);
    expect_same(a, want_sparse_accum);
  }
  std::printf("vector variants checked: avx2 %s, avx512 %s\n",
              has_avx2 ? "yes" : "no (CPU lacks it)",
              has_avx512 ? "yes" : "no (CPU lacks it)");
}

// Each instruction-set variant of the rowwise loops gives the baseline's
// bits on random bit patterns (NaN payloads aside).
template <typename T>
void TestRowwiseVariantsMatchBaseline() {
  using C = tf_adagrad::ComputeType<T>;
  std::mt19937_64 rng(8);
  const int64_t num_rows = 64, row_size = 77, nnz = 150;
  std::vector<T> var(num_rows * row_size), grad(num_rows * row_size);
  std::vector<T> sparse_grad(nnz * row_size);
  std::vector<C> accum(num_rows);
  for (auto& v : var) v = RandomElement<T>(rng, false);
  for (auto& g : grad) g = RandomElement<T>(rng, false);
  for (auto& g : sparse_grad) g = RandomElement<T>(rng, false);
  for (auto& a : accum) a = RandomElement<C>(rng, true);
  std::vector<int64_t> indices(nnz);
  for (auto& index : indices) index = static_cast<int64_t>(rng() % 40);
  const RowGroups groups =
      tf_adagrad::GroupRowsByIndex(indices.data(), nnz, num_rows);
  std::vector<C> scratch(row_size);
  const RowwiseStep<C> step{static_cast<C>(0.01), static_cast<C>(1e-8)};
  const auto run = [&](auto isa, std::vector<T>& v, std::vector<C>& a,
                       bool sparse) {
    constexpr VectorIsa kIsa = decltype(isa)::value;
    v = var, a = accum;
    if (sparse) {
      RunCompiledFor<kIsa>(RowwiseSparseRowsLoop(), v.data(), a.data(),
                           sparse_grad.data(), indices.data(), groups, row_size,
                           step, &nearest, 0, groups.num_unique(),
                           scratch.data());
    } else {
      RunCompiledFor<kIsa>(RowwiseDenseRowsLoop(), v.data(), a.data(),
                           grad.data(), row_size, step, &nearest, 0, num_rows);
    }
  };
  const auto expect_same = [](const auto& got, const auto& want) {
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT(SameBits(got[i], want[i]) ||
             (IsNanBits(got[i]) && IsNanBits(want[i])));
    }
  };
  using Baseline = std::integral_constant<VectorIsa, VectorIsa::kBaseline>;
  using Avx2 = std::integral_constant<VectorIsa, VectorIsa::kAvx2>;
  using Avx512 = std::integral_constant<VectorIsa, VectorIsa::kAvx512>;
  for (const bool sparse : {false, true}) {
    std::vector<T> want_v, v;
    std::vector<C> want_a, a;
    run(Baseline(), want_v, want_a, sparse);
    if (__builtin_cpu_supports("avx2")) {
      run(Avx2(), v, a, sparse);
      expect_same(v, want_v);
      expect_same(a, want_a);
    }
    if (tf_adagrad::CpuVectorIsa() == VectorIsa::kAvx512) {
      run(Avx512(), v, a, sparse);
      expect_same(v, want_v);
      expect_same(a, want_a);
    }
  }
}
#endif  // TF_ADAGRAD_X86

// The sort split into chunks (as the op splits it across threads for large
// nnz) gives exactly the serial sort's groups.
void TestChunkedGroupingEqualsSerial() {
  std::mt19937_64 rng(4);
  for (int64_t nnz :
       {int64_t{0}, int64_t{1}, tf_adagrad::kMinKeysPerSortChunk * 3 + 17,
        tf_adagrad::kMinKeysPerSortChunk * 8}) {
    for (int64_t num_rows :
         {int64_t{1}, int64_t{1000}, int64_t{1} << 30, INT64_MAX}) {
      std::vector<int64_t> indices(nnz);
      for (auto& index : indices)
        index = static_cast<int64_t>(rng() % num_rows);
      const RowGroups serial =
          tf_adagrad::GroupRowsByIndex(indices.data(), nnz, num_rows);
      for (int64_t chunks : {2, 3, 8, 64}) {
        int64_t tasks_run = 0;
        const auto count_tasks = [&tasks_run](int64_t n, const auto& task) {
          for (int64_t c = 0; c < n; ++c, ++tasks_run) task(c);
        };
        const RowGroups chunked = tf_adagrad::GroupRowsByIndex(
            indices.data(), nnz, num_rows, chunks, count_tasks);
        EXPECT(chunked.positions == serial.positions);
        EXPECT(chunked.run_starts == serial.run_starts);
        ExpectValidGroups(indices, chunked);
        EXPECT(tasks_run > 0);
      }
    }
  }
}

// The GPU multi-tensor kernel's work on a simulated grid: the tables of
// ForEachMultiTensorTable, read block by block through ChunkOfBlock and
// ChunkIsVectorAligned as the kernel reads them. Every element of every
// tensor must be covered exactly once, each chunk within its tensor, the
// 16-byte path chosen exactly when a chunk's three pointers are aligned,
// tables launched only when full, and empty tensors never listed. The
// tensors are never dereferenced, so their addresses are made up: huge
// tensors cost nothing, and misalignment is chosen per tensor.
template <typename T>
void CheckMultiTensorTables(const std::vector<int64_t>& sizes,
                            const std::vector<int>& misalignments) {
  constexpr int kVectorBytes = 16;
  const int64_t n = static_cast<int64_t>(sizes.size());
  std::vector<tf_adagrad::DenseTensors<T>> tensors(n);
  // Tensor t lives at 2^40 * (t + 1) (var), + 2^39 (accum), + 2^39 + 2^38
  // (grad), each shifted by its misalignment in elements; whether it is
  // 16-byte aligned is then known without looking at the addresses.
  std::vector<bool> want_aligned(n);
  for (int64_t t = 0; t < n; ++t) {
    const int m = misalignments[t % misalignments.size()];
    const uintptr_t base = (uintptr_t{1} << 40) * (t + 1);
    const int var_shift = m & 1 ? 1 : 0, accum_shift = m & 2 ? 1 : 0,
              grad_shift = m & 4 ? 1 : 0;
    tensors[t].var = reinterpret_cast<T*>(base) + var_shift;
    tensors[t].accum =
        reinterpret_cast<T*>(base + (uintptr_t{1} << 39)) + accum_shift;
    tensors[t].grad =
        reinterpret_cast<const T*>(base + (uintptr_t{3} << 38)) + grad_shift;
    tensors[t].size = sizes[t];
    want_aligned[t] = var_shift + accum_shift + grad_shift == 0;
  }
  const auto tensor_of = [&](const T* var) {
    return static_cast<int64_t>(reinterpret_cast<uintptr_t>(var) >> 40) - 1;
  };
  // Covered intervals per tensor, and per table its fill.
  std::vector<std::vector<std::pair<int64_t, int64_t>>> covered(n);
  struct Fill {
    int tensors, blocks;
  };
  std::vector<Fill> fills;
  int64_t vector_blocks = 0;
  const bool ok = tf_adagrad::ForEachMultiTensorTable(
      tensors.data(), n, [&](const tf_adagrad::MultiTensorTable<T>& table) {
        EXPECT(table.num_blocks >= 1 &&
               table.num_blocks <= tf_adagrad::kMaxBlocksPerTable);
        EXPECT(table.num_tensors >= 1 &&
               table.num_tensors <= tf_adagrad::kMaxTensorsPerTable);
        fills.push_back({table.num_tensors, table.num_blocks});
        std::vector<int> blocks_of_slot(table.num_tensors, 0);
        for (int b = 0; b < table.num_blocks; ++b) {
          const tf_adagrad::BlockChunk chunk =
              tf_adagrad::ChunkOfBlock(table, b);
          EXPECT(chunk.tensor >= 0 && chunk.tensor < table.num_tensors);
          if (chunk.tensor < 0 || chunk.tensor >= table.num_tensors) continue;
          ++blocks_of_slot[chunk.tensor];
          const int64_t t = tensor_of(table.var[chunk.tensor]);
          EXPECT(t >= 0 && t < n);
          if (t < 0 || t >= n) continue;
          EXPECT(table.var[chunk.tensor] == tensors[t].var);
          EXPECT(table.accum[chunk.tensor] == tensors[t].accum);
          EXPECT(table.grad[chunk.tensor] == tensors[t].grad);
          EXPECT(table.size[chunk.tensor] == sizes[t]);
          EXPECT(0 <= chunk.begin && chunk.begin < chunk.end &&
                 chunk.end <= sizes[t]);
          EXPECT(chunk.end - chunk.begin <= tf_adagrad::kChunkElements);
          const bool aligned =
              tf_adagrad::ChunkIsVectorAligned(table, chunk, kVectorBytes);
          EXPECT(aligned == want_aligned[t]);
          vector_blocks += aligned;
          covered[t].push_back({chunk.begin, chunk.end});
        }
        // Every listed tensor has a block (so no empty tensor is listed).
        for (int blocks : blocks_of_slot) EXPECT(blocks > 0);
        return true;
      });
  EXPECT(ok);
  for (int64_t t = 0; t < n; ++t) {
    std::sort(covered[t].begin(), covered[t].end());
    int64_t next = 0;
    for (const auto& [begin, end] : covered[t]) {
      EXPECT(begin == next);  // no gap, no overlap
      next = end;
    }
    EXPECT(next == sizes[t]);
  }
  // Only the last table may be launched before it is full.
  for (size_t k = 0; k + 1 < fills.size(); ++k) {
    EXPECT(fills[k].blocks == tf_adagrad::kMaxBlocksPerTable ||
           fills[k].tensors == tf_adagrad::kMaxTensorsPerTable);
  }
  int64_t want_blocks = 0, want_vector_blocks = 0;
  for (int64_t t = 0; t < n; ++t) {
    const int64_t chunks = (sizes[t] + tf_adagrad::kChunkElements - 1) /
                           tf_adagrad::kChunkElements;
    want_blocks += chunks;
    if (want_aligned[t]) want_vector_blocks += chunks;
  }
  int64_t blocks = 0;
  for (const Fill& fill : fills) blocks += fill.blocks;
  EXPECT(blocks == want_blocks);
  EXPECT(vector_blocks == want_vector_blocks);
  EXPECT(
      fills.size() >=
      static_cast<size_t>((want_blocks + tf_adagrad::kMaxBlocksPerTable - 1) /
                          tf_adagrad::kMaxBlocksPerTable));
}

template <typename T>
void TestMultiTensorTables() {
  const int64_t chunk = tf_adagrad::kChunkElements;
  const int64_t table_blocks = tf_adagrad::kMaxBlocksPerTable;
  // Bit k of a misalignment shifts var, accum or grad by one element.
  const std::vector<int> aligned = {0}, mixed = {0, 1, 0, 2, 4, 7};
  // Empty tensors only, one element, sizes around a chunk, odd sizes.
  CheckMultiTensorTables<T>({0, 0, 0}, aligned);
  CheckMultiTensorTables<T>({1}, mixed);
  CheckMultiTensorTables<T>({0, chunk - 1, chunk, chunk + 1, 0, 7, 4097},
                            mixed);
  // One tensor spread over several tables (a table of blocks fills), and
  // one that fills a table exactly.
  CheckMultiTensorTables<T>({table_blocks * chunk * 2 + 3}, mixed);
  CheckMultiTensorTables<T>({table_blocks * chunk, 5}, mixed);
  // More tensors than a table holds, some empty; then a table filled by
  // tensors and by blocks at once.
  std::vector<int64_t> many(3 * tf_adagrad::kMaxTensorsPerTable + 5);
  for (size_t t = 0; t < many.size(); ++t) many[t] = (t * 7919) % 3001;
  CheckMultiTensorTables<T>(many, mixed);
  many[many.size() / 2] = 100 * chunk + 1;
  CheckMultiTensorTables<T>(many, mixed);
  std::vector<int64_t> exact(
      tf_adagrad::kMaxTensorsPerTable,
      table_blocks / tf_adagrad::kMaxTensorsPerTable * chunk);
  CheckMultiTensorTables<T>(exact, aligned);
  // A launch that fails stops the tables there.
  std::vector<tf_adagrad::DenseTensors<T>> tensors(
      1, {reinterpret_cast<T*>(64), reinterpret_cast<T*>(128),
          reinterpret_cast<const T*>(256), 3 * table_blocks * chunk});
  int launches = 0;
  EXPECT(!tf_adagrad::ForEachMultiTensorTable(
      tensors.data(), 1, [&launches](const tf_adagrad::MultiTensorTable<T>&) {
        return ++launches < 2;
      }));
  EXPECT(launches == 2);
}

// The multi-tensor kernel's code (UpdateChunkOfBlock) run on the host over
// real tensors, table by table, block by block and thread by thread, with
// the CPU's conversions: every variable must then equal the CPU update's
// bits (an element updated twice, or not at all, would differ). Tensors sit
// `offset` elements into their buffers (offsets of 1 and 3 break the 16-byte
// alignment, so their chunks take the one-element path).
template <typename T, EpsilonPlacement kPlacement>
void SimulateMultiTensorGrid(const std::vector<int64_t>& sizes,
                             const std::vector<int>& offsets,
                             int threads_per_block, std::mt19937_64& rng) {
  using A = tf_adagrad::Arithmetic<T>;
  using C = tf_adagrad::ComputeType<T>;
  const AdagradStep<C, kPlacement> step{C(0.01), C(1e-7)};
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  const size_t n = sizes.size();
  // Buffers of 16-byte-aligned doubles, so that offsets are all that
  // misaligns.
  std::vector<std::vector<double>> buffers(3 * n);
  std::vector<tf_adagrad::DenseTensors<T>> tensors(n);
  std::vector<std::vector<T>> want_var(n), want_accum(n);
  for (size_t t = 0; t < n; ++t) {
    T* arrays[3];
    for (int k = 0; k < 3; ++k) {
      const int offset = offsets[(3 * t + k) % offsets.size()];
      std::vector<double>& buffer = buffers[3 * t + k];
      buffer.resize((sizes[t] + offset) * sizeof(T) / sizeof(double) + 2);
      arrays[k] = reinterpret_cast<T*>(buffer.data()) + offset;
      for (int64_t i = 0; i < sizes[t]; ++i) {
        const float x = uniform(rng);
        arrays[k][i] = A::Store(static_cast<C>(k == 1 ? x * x : x));
      }
    }
    tensors[t] = {arrays[0], arrays[1], arrays[2], sizes[t]};
    want_var[t].assign(arrays[0], arrays[0] + sizes[t]);
    want_accum[t].assign(arrays[1], arrays[1] + sizes[t]);
    RunCompiledFor<VectorIsa::kBaseline>(AdagradDenseLoop(), want_var[t].data(),
                                         want_accum[t].data(), arrays[2], step,
                                         kNearest, int64_t{0}, 0, sizes[t]);
  }
  tf_adagrad::ForEachMultiTensorTable(
      tensors.data(), static_cast<int64_t>(n),
      [&](const tf_adagrad::MultiTensorTable<T>& table) {
        for (int block = 0; block < table.num_blocks; ++block) {
          for (int thread = 0; thread < threads_per_block; ++thread) {
            tf_adagrad::UpdateChunkOfBlock<tf_adagrad::Arithmetic>(
                table, block, thread, threads_per_block, step);
          }
        }
        return true;
      });
  for (size_t t = 0; t < n; ++t) {
    EXPECT(std::memcmp(tensors[t].var, want_var[t].data(),
                       sizes[t] * sizeof(T)) == 0);
    EXPECT(std::memcmp(tensors[t].accum, want_accum[t].data(),
                       sizes[t] * sizeof(T)) == 0);
  }
}

template <typename T, EpsilonPlacement kPlacement>
void TestMultiTensorGridSimulation() {
  std::mt19937_64 rng(5);
  const int64_t chunk = tf_adagrad::kChunkElements;
  const std::vector<int> aligned = {0}, mixed = {0, 1, 0, 0, 3, 8, 0, 0, 0};
  for (int threads : {256, 96}) {
    SimulateMultiTensorGrid<T, kPlacement>({0, 1, 0, 7, 8, 9, 4097, 0}, mixed,
                                           threads, rng);
    SimulateMultiTensorGrid<T, kPlacement>(
        {chunk - 1, chunk, chunk + 1, 2 * chunk + 7}, mixed, threads, rng);
    SimulateMultiTensorGrid<T, kPlacement>({chunk + 3}, aligned, threads, rng);
  }
  // More tensors than a table holds.
  std::vector<int64_t> many(2 * tf_adagrad::kMaxTensorsPerTable + 3);
  for (size_t t = 0; t < many.size(); ++t) many[t] = (t * 7919) % 301;
  SimulateMultiTensorGrid<T, kPlacement>(many, mixed, 256, rng);
}

template <EpsilonPlacement kPlacement>
void TestUpdatesOfPlacement() {
  TestSparseUpdateMatchesScalarReference<kPlacement>();
  TestHalfDenseVectorPathMatchesScalar<kPlacement>();
  TestMultiTensorGridSimulation<float, kPlacement>();
  TestMultiTensorGridSimulation<double, kPlacement>();
  TestMultiTensorGridSimulation<tf_adagrad::Float16, kPlacement>();
  TestMultiTensorGridSimulation<tf_adagrad::BFloat16, kPlacement>();
#ifdef TF_ADAGRAD_X86
  TestVectorVariantsMatchBaseline<float, kPlacement>();
  TestVectorVariantsMatchBaseline<double, kPlacement>();
  TestVectorVariantsMatchBaseline<tf_adagrad::BFloat16, kPlacement>();
#endif
}

}  // namespace

int main() {
  TestGrouping();
  TestChunkedGroupingEqualsSerial();
  TestHalfConversions();
  TestBFloat16Conversions();
  TestMultiTensorTables<float>();
  TestMultiTensorTables<double>();
  TestMultiTensorTables<tf_adagrad::Float16>();
  TestUpdatesOfPlacement<EpsilonPlacement::kInsideSqrt>();
  TestUpdatesOfPlacement<EpsilonPlacement::kOutsideSqrt>();
  TestRowwiseMatchesScalarReference<float>();
  TestRowwiseMatchesScalarReference<double>();
#ifdef TF_ADAGRAD_X86
  TestRowwiseVariantsMatchBaseline<float>();
  TestRowwiseVariantsMatchBaseline<double>();
  TestRowwiseVariantsMatchBaseline<tf_adagrad::Float16>();
  TestRowwiseVariantsMatchBaseline<tf_adagrad::BFloat16>();
#endif
  // More chunks than a table holds (float16 keeps the memory small).
  {
    std::mt19937_64 rng(6);
    SimulateMultiTensorGrid<tf_adagrad::Float16, EpsilonPlacement::kInsideSqrt>(
        {5, tf_adagrad::kMaxBlocksPerTable * tf_adagrad::kChunkElements + 4099},
        {0, 0, 0, 1}, 256, rng);
  }
  if (failures) {
    std::fprintf(stderr, "%d expectation(s) failed\n", failures);
    return 1;
  }
  std::printf("adagrad_math_test: all expectations held\n");
  return 0;
}
