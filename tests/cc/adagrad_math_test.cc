// Tests of the TF-free kernel headers: the conversions, the grouping of
// duplicate indices (including paths the ops cannot reach with real tables),
// the sparse update against a scalar reference, every instruction-set
// variant against the baseline, the GPU multi-tensor table on a simulated
// grid, rowwise Adagrad against a scalar reference and across variants, and
// stochastic rounding: Philox4x32-10's known answers, the buffered random
// bits, the roundings' exact unbiasedness, and the CPU loops (and the GPU's
// dense loop on a simulated grid) against a per-position reference.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/adagrad_cpu.h"
#include "kernels/half_types.h"
#include "kernels/multi_tensor.h"
#include "kernels/row_grouping.h"
#include "kernels/rowwise_cpu.h"
#include "kernels/stochastic_rounding.h"
#include "kernels/strided_update.h"
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

// --------------------------------------------------- stochastic rounding ---
//
// Philox4x32-10 against Random123's known answers; FillRandomBits (scalar
// and AVX2) against RandomBits; the stochastic roundings exhaustively over
// their 65536 random inputs; the CPU loops with StochasticRoundingBuffered
// (and float32 accumulators of 16-bit weights) against a reference that
// stores StochasticRound<T>(value, RandomBits(key, position)); the GPU's
// strided dense loop, with the GPU's per-element StochasticRounding, on a
// simulated grid against the CPU's buffered one.

using tf_adagrad::BFloat16;
using tf_adagrad::Float16;
using tf_adagrad::StochasticRoundingKey;
using Buffered = tf_adagrad::StochasticRoundingBuffered;

// The random bits of a table position as stochastic_rounding.h documents
// them, written out from Philox4x32 alone: counter (block, step) with block
// = position / 8, key the seed; lane l = position % 8 takes half l % 2 of
// word l / 2.
uint16_t DocumentedRandomBits(const StochasticRoundingKey& key,
                              int64_t position) {
  const uint64_t block = static_cast<uint64_t>(position) / 8;
  const tf_adagrad::PhiloxBlock words = tf_adagrad::Philox4x32(
      static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
      static_cast<uint32_t>(key.step), static_cast<uint32_t>(key.step >> 32),
      static_cast<uint32_t>(key.seed), static_cast<uint32_t>(key.seed >> 32));
  const int lane = static_cast<int>(position % 8);
  return static_cast<uint16_t>(words.words[lane / 2] >> (16 * (lane % 2)));
}

// Random123's known-answer vectors for Philox4x32-10 (kat_vectors), through
// Philox4x32 itself, RandomBlock (counter = (block, step), key = seed),
// EightRandomBlocksAvx2's first lane where the CPU has AVX2, and, where the
// block is a table position's, RandomBits and FillRandomBits.
void TestPhiloxKnownAnswers() {
  struct Vector {
    uint32_t counter[4];
    uint32_t key[2];
    uint32_t want[4];
  };
  const Vector vectors[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Vector& v : vectors) {
    const tf_adagrad::PhiloxBlock got =
        tf_adagrad::Philox4x32(v.counter[0], v.counter[1], v.counter[2],
                               v.counter[3], v.key[0], v.key[1]);
    for (int w = 0; w < 4; ++w) EXPECT(got.words[w] == v.want[w]);
    const StochasticRoundingKey key{
        v.key[0] | static_cast<uint64_t>(v.key[1]) << 32,
        v.counter[2] | static_cast<uint64_t>(v.counter[3]) << 32};
    const uint64_t block = v.counter[0] | static_cast<uint64_t>(v.counter[1])
                                              << 32;
    const tf_adagrad::PhiloxBlock via_block =
        tf_adagrad::RandomBlock(key, block);
    for (int w = 0; w < 4; ++w) EXPECT(via_block.words[w] == v.want[w]);
    uint16_t want_bits[8];
    for (int lane = 0; lane < 8; ++lane) {
      want_bits[lane] =
          static_cast<uint16_t>(v.want[lane / 2] >> (16 * (lane % 2)));
    }
#ifdef TF_ADAGRAD_X86
    if (tf_adagrad::CpuHasAvx2()) {
      uint16_t eight[64];
      tf_adagrad::EightRandomBlocksAvx2(key, block, eight);
      for (int lane = 0; lane < 8; ++lane)
        EXPECT(eight[lane] == want_bits[lane]);
    }
#endif
    // Positions are int64: blocks below 2^60 only.
    if (block < (uint64_t{1} << 60)) {
      const int64_t first = static_cast<int64_t>(block * 8);
      uint16_t filled[8];
      tf_adagrad::FillRandomBits(key, first, 8, filled);
      for (int lane = 0; lane < 8; ++lane) {
        EXPECT(tf_adagrad::RandomBits(key, first + lane) == want_bits[lane]);
        EXPECT(filled[lane] == want_bits[lane]);
      }
    }
  }
}

// FillRandomBits equals RandomBits position by position, and RandomBits the
// documented mapping, for starts on and off block boundaries, counts 0 to
// 200 (the AVX2 path takes 64 positions at a time, so counts past 64 reach
// it where the CPU has it, and the scalar blocks and tail the rest), and
// positions whose block number has a nonzero high word or crosses 2^32
// inside one AVX2 batch. Nothing outside [0, count) is written.
void TestFillRandomBitsMatchesRandomBits() {
  std::mt19937_64 rng(11);
  const StochasticRoundingKey keys[] = {{0, 0},
                                        {~uint64_t{0}, ~uint64_t{0}},
                                        {rng(), rng()},
                                        {0x0123456789abcdefull, 7}};
  const int64_t block_2_32 = int64_t{8} << 32;  // first position of 2^32
  std::vector<int64_t> firsts;
  for (int64_t f = 0; f < 20; ++f) firsts.push_back(f);
  for (int64_t f : {61, 64, 67, 509, 512, 515}) firsts.push_back(f);
  for (int64_t d :
       {-203, -200, -67, -64, -63, -33, -9, -8, -7, -1, 0, 1, 5, 8, 13}) {
    firsts.push_back(block_2_32 + d);
  }
  for (int64_t f : {(int64_t{1} << 40) + 3, (int64_t{5} << 59) + 8,
                    INT64_MAX - 213, INT64_MAX - 200}) {
    firsts.push_back(f);
  }
  constexpr int64_t kMaxCount = 200, kGuard = 8;
  constexpr uint16_t kUntouched = 0xa5a5;
  std::vector<uint16_t> buffer(kGuard + kMaxCount + kGuard);
  bool reached_avx2 = false;
  for (const StochasticRoundingKey& key : keys) {
    for (const int64_t first : firsts) {
      for (int64_t p = first; p < first + 24; ++p) {
        EXPECT(tf_adagrad::RandomBits(key, p) == DocumentedRandomBits(key, p));
      }
      for (int64_t count = 0; count <= kMaxCount; ++count) {
        std::fill(buffer.begin(), buffer.end(), kUntouched);
        tf_adagrad::FillRandomBits(key, first, count, buffer.data() + kGuard);
        int64_t bad = -1;
        for (int64_t i = 0; i < count && bad < 0; ++i) {
          if (buffer[kGuard + i] != tf_adagrad::RandomBits(key, first + i)) {
            bad = i;
          }
        }
        bool guards_kept = true;
        for (int64_t i = 0; i < kGuard; ++i) {
          guards_kept = guards_kept && buffer[i] == kUntouched &&
                        buffer[kGuard + count + i] == kUntouched;
        }
        EXPECT(bad < 0);
        EXPECT(guards_kept);
        if (bad >= 0 || !guards_kept) {
          std::fprintf(stderr,
                       "  FillRandomBits(seed %#llx, step %#llx, first %lld, "
                       "count %lld): first wrong at %lld, guards %s\n",
                       static_cast<unsigned long long>(key.seed),
                       static_cast<unsigned long long>(key.step),
                       static_cast<long long>(first),
                       static_cast<long long>(count),
                       static_cast<long long>(bad),
                       guards_kept ? "kept" : "overwritten");
        }
        const int64_t to_boundary = (8 - first % 8) % 8;
        reached_avx2 = reached_avx2 || count - to_boundary >= 64;
      }
    }
  }
#ifdef TF_ADAGRAD_X86
  // The AVX2 batch itself against RandomBlock, where it crosses 2^32 and
  // where it wraps past 2^64 (blocks are uint64).
  const bool has_avx2 = tf_adagrad::CpuHasAvx2();
  if (has_avx2) {
    for (const StochasticRoundingKey& key : keys) {
      for (const uint64_t first_block :
           {uint64_t{0}, uint64_t{1}, (uint64_t{1} << 32) - 3,
            uint64_t{1} << 32, (uint64_t{3} << 32) - 8, ~uint64_t{0} - 3,
            rng()}) {
        uint16_t eight[64];
        tf_adagrad::EightRandomBlocksAvx2(key, first_block, eight);
        for (int b = 0; b < 8; ++b) {
          const tf_adagrad::PhiloxBlock want =
              tf_adagrad::RandomBlock(key, first_block + b);
          for (int w = 0; w < 4; ++w) {
            EXPECT(eight[8 * b + 2 * w] ==
                   static_cast<uint16_t>(want.words[w]));
            EXPECT(eight[8 * b + 2 * w + 1] ==
                   static_cast<uint16_t>(want.words[w] >> 16));
          }
        }
      }
    }
  }
#else
  const bool has_avx2 = false;
#endif
  std::printf("FillRandomBits checked: AVX2 path %s\n",
              has_avx2 && reached_avx2 ? "yes" : "no (CPU lacks it)");
}

// What the stochastic rounding tests need to know of a 16-bit type.
template <typename T>
struct HalfType;
template <>
struct HalfType<Float16> {
  static constexpr uint16_t kInfinity = 0x7c00;
  static constexpr uint16_t kQuietBit = 0x200;
  static float Value(uint16_t bits) { return tf_adagrad::HalfToFloat(bits); }
  static constexpr const char* kName = "float16";
};
template <>
struct HalfType<BFloat16> {
  static constexpr uint16_t kInfinity = 0x7f80;
  static constexpr uint16_t kQuietBit = 0x40;
  static float Value(uint16_t bits) {
    return tf_adagrad::BFloat16ToFloat(bits);
  }
  static constexpr const char* kName = "bfloat16";
};

uint32_t BitsOf(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

float FloatOfBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// The largest finite T magnitude (bits, sign clear) not above `magnitude`,
// a finite float: bisection over the ordered magnitudes, independent of the
// conversions under test.
template <typename T>
uint16_t MagnitudeBelow(float magnitude) {
  uint16_t low = 0, high = HalfType<T>::kInfinity;  // Value(high) > magnitude
  while (high - low > 1) {
    const uint16_t middle = static_cast<uint16_t>((low + high) / 2);
    if (HalfType<T>::Value(middle) <= magnitude) {
      low = middle;
    } else {
      high = middle;
    }
  }
  return low;
}

// Rounds f (finite, not above the largest finite T plus one spacing) with
// each of the 65536 random inputs: every result must be one of f's two
// neighbours, with f's sign (the upper one of the largest finite value is
// infinity), and the number of round-ups must be the chance of rounding up,
// (|f| - lower) / spacing, in 65536ths: exactly when `exact`, else that
// rounded down (16 random bits for more dropped bits). A value that T holds
// exactly has no round-up.
template <typename T>
void CheckStochasticCounts(float f, bool exact) {
  using H = HalfType<T>;
  const float magnitude = std::fabs(f);
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const uint16_t lower = MagnitudeBelow<T>(magnitude);
  const double lower_value = H::Value(lower);
  const uint16_t upper = static_cast<uint16_t>(lower + 1);
  // The spacing above the largest finite value is that below it.
  const double spacing = upper == H::kInfinity
                             ? lower_value - H::Value(lower - 1)
                             : H::Value(upper) - lower_value;
  // Exact in double: the difference has at most 24 significant bits, the
  // spacing is a power of two.
  const double want_ups = (magnitude - lower_value) / spacing * 65536.0;
  int64_t ups = 0, others = 0;
  for (uint32_t random = 0; random < 0x10000; ++random) {
    const uint16_t got =
        tf_adagrad::StochasticRound<T>(f, static_cast<uint16_t>(random)).bits;
    if (got == (sign | upper)) {
      ++ups;
    } else if (got != (sign | lower)) {
      ++others;
    }
  }
  const bool ok =
      others == 0 && (exact ? ups == want_ups : ups == std::floor(want_ups));
  EXPECT(ok);
  if (!ok) {
    std::fprintf(stderr,
                 "  %s stochastic rounding of %a (bits %#x): %lld round-ups, "
                 "want %.6f; %lld results neither neighbour\n",
                 H::kName, f, BitsOf(f), static_cast<long long>(ups), want_ups,
                 static_cast<long long>(others));
  }
}

// Every random input gives `want` (bits), or for a NaN a quiet NaN of f's
// sign.
template <typename T>
void CheckStochasticAlways(float f, uint16_t want) {
  using H = HalfType<T>;
  const bool nan = std::isnan(f);
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  int64_t wrong = 0;
  for (uint32_t random = 0; random < 0x10000; ++random) {
    const uint16_t got =
        tf_adagrad::StochasticRound<T>(f, static_cast<uint16_t>(random)).bits;
    const bool ok = nan ? (got & 0x8000) == sign && std::isnan(H::Value(got)) &&
                              (got & H::kQuietBit) != 0
                        : got == want;
    wrong += !ok;
  }
  EXPECT(wrong == 0);
  if (wrong != 0) {
    std::fprintf(stderr,
                 "  %s stochastic rounding of %a (bits %#x): %lld of 65536 "
                 "random inputs wrong\n",
                 H::kName, f, BitsOf(f), static_cast<long long>(wrong));
  }
}

// A float of random significand with the given biased exponent and sign.
float RandomFloat(uint32_t exponent, std::mt19937_64& rng) {
  return FloatOfBits(static_cast<uint32_t>(rng() & 0x807fffffu) | exponent
                                                                      << 23);
}

// Infinities, NaNs (quiet and signalling, a payload only in the bits that
// bfloat16 drops) and zeros, for every random input.
template <typename T>
void CheckStochasticSpecials() {
  using H = HalfType<T>;
  const float infinity = std::numeric_limits<float>::infinity();
  CheckStochasticAlways<T>(infinity, H::kInfinity);
  CheckStochasticAlways<T>(-infinity, 0x8000 | H::kInfinity);
  for (const uint32_t nan : {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u,
                             0x7f80ffffu, 0x7fffffffu, 0x7fa00000u}) {
    CheckStochasticAlways<T>(FloatOfBits(nan), 0);
  }
  CheckStochasticAlways<T>(0.0f, 0);
  CheckStochasticAlways<T>(-0.0f, 0x8000);
}

// bfloat16: the 16 random bits are added to the 16 dropped ones, so every
// finite value rounds up exactly (dropped bits) / 65536 of the time:
// checked exhaustively for every representable value (no round-up) with a
// sample of random inputs, and with all of them for every 61st; for random
// floats of every exponent, float32 subnormals included; above the largest
// finite bfloat16, where the upper neighbour is infinity.
void TestBFloat16StochasticRounding() {
  std::mt19937_64 rng(12);
  using H = HalfType<BFloat16>;
  int64_t inexact = 0;
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    if ((bits & 0x7fff) >= H::kInfinity) continue;  // inf, nan
    const float f = H::Value(static_cast<uint16_t>(bits));
    for (uint32_t random = 0; random < 0x10000; random += 251) {
      inexact += tf_adagrad::FloatToBFloat16Stochastic(
                     f, static_cast<uint16_t>(random)) != bits;
    }
    inexact += tf_adagrad::FloatToBFloat16Stochastic(f, 0xffff) != bits;
    if (bits % 61 == 0) CheckStochasticCounts<BFloat16>(f, true);
  }
  EXPECT(inexact == 0);
  for (int k = 0; k < 1500; ++k) {
    const uint32_t exponent = static_cast<uint32_t>(rng() % 255);  // finite
    CheckStochasticCounts<BFloat16>(RandomFloat(exponent, rng), true);
  }
  for (int k = 0; k < 100; ++k) {  // float32 subnormals
    CheckStochasticCounts<BFloat16>(RandomFloat(0, rng), true);
  }
  // Between the largest finite bfloat16 (0x7f7f) and infinity: FLT_MAX goes
  // to infinity 65535 times in 65536.
  for (const uint32_t bits : {0x7f7f0001u, 0x7f7f8000u, 0x7f7fffffu,
                              0xff7f0001u, 0xff7fffffu, 0x7f7effffu}) {
    CheckStochasticCounts<BFloat16>(FloatOfBits(bits), true);
  }
  CheckStochasticSpecials<BFloat16>();
}

// float16: normal values drop 13 bits, and the top 13 random bits decide:
// exact. Subnormal float16 values drop 14 to 16 bits of a float at or above
// 2^-17: exact; below 2^-17, 16 random bits decide to within one 65536th
// (rounded down). Above 65504 the upper neighbour is infinity; from 65536 on
// every value is infinity.
void TestHalfStochasticRounding() {
  std::mt19937_64 rng(13);
  using H = HalfType<Float16>;
  int64_t inexact = 0;
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    if ((bits & 0x7fff) >= H::kInfinity) continue;
    const float f = H::Value(static_cast<uint16_t>(bits));
    for (uint32_t random = 0; random < 0x10000; random += 251) {
      inexact += tf_adagrad::FloatToHalfStochastic(
                     f, static_cast<uint16_t>(random)) != bits;
    }
    inexact += tf_adagrad::FloatToHalfStochastic(f, 0xffff) != bits;
    if (bits % 61 == 0) CheckStochasticCounts<Float16>(f, true);
  }
  EXPECT(inexact == 0);
  // Normal: [2^-14, 65504], biased float exponents 113 to 142.
  for (int k = 0; k < 1500; ++k) {
    const uint32_t exponent = 113 + static_cast<uint32_t>(rng() % 30);
    CheckStochasticCounts<Float16>(RandomFloat(exponent, rng), true);
  }
  // Subnormal float16 from 2^-17 up: exponents 110 to 112, and the edges.
  for (int k = 0; k < 600; ++k) {
    const uint32_t exponent = 110 + static_cast<uint32_t>(rng() % 3);
    CheckStochasticCounts<Float16>(RandomFloat(exponent, rng), true);
  }
  for (const float f : {std::ldexp(1.0f, -17), std::ldexp(1023.5f, -24),
                        std::ldexp(1.0f, -14) - std::ldexp(1.0f, -40),
                        std::ldexp(1.5f, -24), -std::ldexp(3.25f, -24)}) {
    CheckStochasticCounts<Float16>(f, true);
  }
  // Below 2^-17: rounded-down chance (floats of exponents 80 to 109, and a
  // float32 subnormal, which never rounds up).
  for (int k = 0; k < 300; ++k) {
    const uint32_t exponent = 80 + static_cast<uint32_t>(rng() % 30);
    CheckStochasticCounts<Float16>(RandomFloat(exponent, rng), false);
  }
  CheckStochasticCounts<Float16>(std::ldexp(1.0f, -130), false);
  CheckStochasticCounts<Float16>(-std::ldexp(1.0f, -149), false);
  // Above the largest finite float16: to infinity by the chance of the
  // spacing (32) past 65504; from 65536 on always infinity.
  for (const float f : {65504.0f + 0.25f, 65519.0f, 65520.0f, 65535.0f,
                        -65535.99f, std::nextafter(65536.0f, 0.0f)}) {
    CheckStochasticCounts<Float16>(f, true);
  }
  for (const float f : {65536.0f, 1e5f, std::numeric_limits<float>::max()}) {
    CheckStochasticAlways<Float16>(f, H::kInfinity);
    CheckStochasticAlways<Float16>(-f, 0x8000 | H::kInfinity);
  }
  CheckStochasticSpecials<Float16>();
}

// Conversions of the types the loop tests store.
float AsFloat(float x) { return x; }
float AsFloat(Float16 x) { return tf_adagrad::HalfToFloat(x.bits); }
float AsFloat(BFloat16 x) { return tf_adagrad::BFloat16ToFloat(x.bits); }

// The first element of got that is not want's bits (NaN payloads aside:
// vector and scalar code may propagate different ones), or -1.
template <typename T>
int64_t FirstMismatch(const T* got, const T* want, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0 &&
        !(std::isnan(AsFloat(got[i])) && std::isnan(AsFloat(want[i])))) {
      return i;
    }
  }
  return -1;
}

template <typename T>
void ExpectSameElements(const std::vector<T>& got, const std::vector<T>& want,
                        const std::string& what) {
  const int64_t bad = got.size() == want.size()
                          ? FirstMismatch(got.data(), want.data(),
                                          static_cast<int64_t>(got.size()))
                          : 0;
  EXPECT(bad < 0);
  if (bad >= 0) {
    std::fprintf(stderr, "  %s: first difference at [%lld]\n", what.c_str(),
                 static_cast<long long>(bad));
  }
}

// How the reference stores a new weight: to nearest, or with the random
// bits of its table position when `key` is given.
template <typename T>
T ReferenceStore(float value, const StochasticRoundingKey* key,
                 int64_t position) {
  if (key == nullptr) return tf_adagrad::Arithmetic<T>::Store(value);
  return tf_adagrad::StochasticRound<T>(value,
                                        tf_adagrad::RandomBits(*key, position));
}

// The elementwise update of one element, written out: float32 arithmetic,
// the accumulator stored to nearest in its type.
template <typename T, typename Acc>
void ElementReference(T* var, Acc* accum, float grad, float lr, float epsilon,
                      EpsilonPlacement placement,
                      const StochasticRoundingKey* key, int64_t position) {
  float v = tf_adagrad::Arithmetic<T>::Load(*var);
  float a = tf_adagrad::Arithmetic<Acc>::Load(*accum);
  a = a + grad * grad;
  const float denominator = placement == EpsilonPlacement::kInsideSqrt
                                ? std::sqrt(a + epsilon)
                                : std::sqrt(a) + epsilon;
  v = v - lr * grad / denominator;
  *accum = tf_adagrad::Arithmetic<Acc>::Store(a);
  *var = ReferenceStore<T>(v, key, position);
}

// The Rounding a loop test runs with, and its name.
template <bool kStochastic>
struct LoopRounding {
  using type = Nearest;
  static Nearest Make(const StochasticRoundingKey&) { return Nearest(); }
  static constexpr const char* kName = "nearest";
};
template <>
struct LoopRounding<true> {
  using type = Buffered;
  static Buffered Make(const StochasticRoundingKey& key) {
    return Buffered(key);
  }
  static constexpr const char* kName = "stochastic";
};

// fn(isa) for the baseline and each wider variant this CPU runs.
template <typename Fn>
void ForEachIsa(const Fn& fn) {
  fn(std::integral_constant<VectorIsa, VectorIsa::kBaseline>());
#ifdef TF_ADAGRAD_X86
  if (__builtin_cpu_supports("avx2")) {
    fn(std::integral_constant<VectorIsa, VectorIsa::kAvx2>());
  }
  if (tf_adagrad::CpuVectorIsa() == VectorIsa::kAvx512) {
    fn(std::integral_constant<VectorIsa, VectorIsa::kAvx512>());
  }
#endif
}

const char* IsaName(VectorIsa isa) {
  return isa == VectorIsa::kAvx512 ? "avx512"
         : isa == VectorIsa::kAvx2 ? "avx2"
                                   : "baseline";
}

// The dense loop compiled for kIsa over [begin, end), a stretch of
// positions at a time as AdagradDenseRange runs it.
template <VectorIsa kIsa, typename T, typename Acc, typename Step,
          typename Rounding>
void DenseStretchesCompiledFor(T* var, Acc* accum, const T* grad,
                               const Step& step, Rounding& rounding,
                               int64_t first_position, int64_t begin,
                               int64_t end) {
  for (int64_t b = begin, e; b < end; b = e) {
    e = tf_adagrad::StretchEnd<Rounding>(b, end);
    rounding.Prepare(first_position + b, e - b);
    const Rounding& store = rounding;
    RunCompiledFor<kIsa>(AdagradDenseLoop(), var, accum, grad, step, store,
                         first_position, b, e);
  }
}

// Values of T in [low, high); with `specials`, about one in 64 replaced by
// a zero, an infinity, a NaN, a float32 subnormal or a huge value.
template <typename T>
std::vector<T> LoopTestValues(int64_t n, float low, float high, bool specials,
                              std::mt19937_64& rng) {
  std::uniform_real_distribution<float> uniform(low, high);
  const float edge[] = {0.0f, -0.0f,  std::numeric_limits<float>::infinity(),
                        NAN,  1e-40f, -3e38f};
  std::vector<T> values(n);
  for (auto& v : values) {
    const uint64_t pick = rng() % 64;
    const float x = specials && pick < 6 ? edge[pick] : uniform(rng);
    v = tf_adagrad::Arithmetic<T>::Store(x);
  }
  return values;
}

// The dense update of 16-bit weights, accumulators of Acc (T or float32),
// the weights rounded to nearest or stochastically (kStochastic), against
// ElementReference: whole, in two parts with their own roundings (two
// threads), and each instruction-set variant; tables that start off a block
// and off 2^32 blocks, sizes around blocks, AVX2 batches and stretches.
template <typename T, typename Acc, EpsilonPlacement kPlacement,
          bool kStochastic>
void TestDenseRoundingMatchesReference(std::mt19937_64& rng) {
  using R = LoopRounding<kStochastic>;
  const AdagradStep<float, kPlacement> step{0.01f, 1e-7f};
  const StochasticRoundingKey key{rng(), rng()};
  const StochasticRoundingKey* reference_key = kStochastic ? &key : nullptr;
  int64_t differ_from_nearest = 0, compared = 0;
  for (const int64_t size :
       {0, 1, 7, 8, 9, 63, 64, 65, 200, 511, 512, 513, 1025, 1537, 4099}) {
    for (const int64_t first_position :
         {int64_t{0}, int64_t{5}, (int64_t{8} << 32) - 203}) {
      const std::vector<T> var = LoopTestValues<T>(size, -2, 2, true, rng);
      const std::vector<Acc> accum =
          LoopTestValues<Acc>(size, 0, 1, false, rng);
      const std::vector<T> grad = LoopTestValues<T>(size, -1, 1, true, rng);
      std::vector<T> want_var = var, nearest_var = var;
      std::vector<Acc> want_accum = accum, nearest_accum = accum;
      for (int64_t i = 0; i < size; ++i) {
        const float g = tf_adagrad::Arithmetic<T>::Load(grad[i]);
        ElementReference(&want_var[i], &want_accum[i], g, step.lr, step.epsilon,
                         kPlacement, reference_key, first_position + i);
        ElementReference(&nearest_var[i], &nearest_accum[i], g, step.lr,
                         step.epsilon, kPlacement, nullptr, first_position + i);
        differ_from_nearest +=
            std::memcmp(&want_var[i], &nearest_var[i], sizeof(T)) != 0;
      }
      compared += size;
      char what[200];
      std::snprintf(what, sizeof what,
                    "dense %s, accumulators %s, %s, size %lld, first "
                    "position %lld",
                    HalfType<T>::kName,
                    std::is_same_v<Acc, float> ? "float32" : "of var", R::kName,
                    static_cast<long long>(size),
                    static_cast<long long>(first_position));
      std::vector<T> v = var;
      std::vector<Acc> a = accum;
      auto rounding = R::Make(key);
      tf_adagrad::AdagradDenseRange(v.data(), a.data(), grad.data(), step,
                                    rounding, first_position, 0, size);
      ExpectSameElements(v, want_var, std::string(what) + ": var");
      ExpectSameElements(a, want_accum, std::string(what) + ": accum");
      // Two parts, each with its own rounding, the split off any boundary.
      const int64_t split = size * 3 / 7;
      v = var, a = accum;
      auto first_half = R::Make(key), second_half = R::Make(key);
      tf_adagrad::AdagradDenseRange(v.data(), a.data(), grad.data(), step,
                                    first_half, first_position, 0, split);
      tf_adagrad::AdagradDenseRange(v.data(), a.data(), grad.data(), step,
                                    second_half, first_position, split, size);
      ExpectSameElements(v, want_var, std::string(what) + ", two parts: var");
      ExpectSameElements(a, want_accum,
                         std::string(what) + ", two parts: accum");
      ForEachIsa([&](auto isa) {
        constexpr VectorIsa kIsa = decltype(isa)::value;
        std::vector<T> vi = var;
        std::vector<Acc> ai = accum;
        auto r = R::Make(key);
        DenseStretchesCompiledFor<kIsa>(vi.data(), ai.data(), grad.data(), step,
                                        r, first_position, 0, size);
        const std::string variant = std::string(what) + ", " + IsaName(kIsa);
        ExpectSameElements(vi, want_var, variant + ": var");
        ExpectSameElements(ai, want_accum, variant + ": accum");
      });
    }
  }
  // Not vacuous: sub-spacing updates round up or down at random.
  if (kStochastic) EXPECT(differ_from_nearest > compared / 10);
}

// The sparse update likewise: rows at their table positions (row *
// row_size), duplicates summed first, in two parts and per variant; rows
// longer than a stretch.
template <typename T, typename Acc, typename Index, EpsilonPlacement kPlacement,
          bool kStochastic>
void TestSparseRoundingMatchesReference(std::mt19937_64& rng) {
  using R = LoopRounding<kStochastic>;
  const AdagradStep<float, kPlacement> step{0.01f, 1e-7f};
  const StochasticRoundingKey key{rng(), rng()};
  const StochasticRoundingKey* reference_key = kStochastic ? &key : nullptr;
  for (const int64_t row_size : {1, 3, 64, 513, 1000}) {
    for (const int64_t nnz : {0, 1, 5, 200}) {
      for (const int64_t num_rows : {1, 7, 50}) {
        if (row_size * nnz > 60000) continue;
        const int64_t table = num_rows * row_size;
        const std::vector<T> var = LoopTestValues<T>(table, -2, 2, true, rng);
        const std::vector<Acc> accum =
            LoopTestValues<Acc>(table, 0, 1, false, rng);
        const std::vector<T> grad =
            LoopTestValues<T>(nnz * row_size, -1, 1, true, rng);
        const int64_t distinct = num_rows < 4 ? num_rows : num_rows / 4;
        std::vector<Index> indices(nnz);
        for (auto& index : indices) {
          index = static_cast<Index>(rng() % distinct);
        }
        // Reference: each touched row's gradient summed in position order,
        // from its first row, then ElementReference.
        std::vector<float> summed(table, 0.0f);
        std::vector<bool> touched(num_rows, false);
        for (int64_t k = 0; k < nnz; ++k) {
          const int64_t r = indices[k];
          for (int64_t j = 0; j < row_size; ++j) {
            const float g =
                tf_adagrad::Arithmetic<T>::Load(grad[k * row_size + j]);
            float& sum = summed[r * row_size + j];
            sum = touched[r] ? sum + g : g;
          }
          touched[r] = true;
        }
        std::vector<T> want_var = var;
        std::vector<Acc> want_accum = accum;
        for (int64_t e = 0; e < table; ++e) {
          if (!touched[e / row_size]) continue;
          ElementReference(&want_var[e], &want_accum[e], summed[e], step.lr,
                           step.epsilon, kPlacement, reference_key, e);
        }
        const RowGroups groups =
            tf_adagrad::GroupRowsByIndex(indices.data(), nnz, num_rows);
        std::vector<float> scratch(row_size);
        char what[200];
        std::snprintf(what, sizeof what,
                      "sparse %s, accumulators %s, %s, %lldx%lld, %lld "
                      "indices",
                      HalfType<T>::kName,
                      std::is_same_v<Acc, float> ? "float32" : "of var",
                      R::kName, static_cast<long long>(num_rows),
                      static_cast<long long>(row_size),
                      static_cast<long long>(nnz));
        std::vector<T> v = var;
        std::vector<Acc> a = accum;
        auto rounding = R::Make(key);
        tf_adagrad::AdagradSparseRows(
            v.data(), a.data(), grad.data(), indices.data(), groups, row_size,
            step, rounding, 0, groups.num_unique(), scratch.data());
        ExpectSameElements(v, want_var, std::string(what) + ": var");
        ExpectSameElements(a, want_accum, std::string(what) + ": accum");
        const int64_t middle = groups.num_unique() / 2;
        v = var, a = accum;
        auto first_half = R::Make(key), second_half = R::Make(key);
        tf_adagrad::AdagradSparseRows(v.data(), a.data(), grad.data(),
                                      indices.data(), groups, row_size, step,
                                      first_half, 0, middle, scratch.data());
        tf_adagrad::AdagradSparseRows(
            v.data(), a.data(), grad.data(), indices.data(), groups, row_size,
            step, second_half, middle, groups.num_unique(), scratch.data());
        ExpectSameElements(v, want_var, std::string(what) + ", two parts: var");
        ExpectSameElements(a, want_accum,
                           std::string(what) + ", two parts: accum");
        ForEachIsa([&](auto isa) {
          constexpr VectorIsa kIsa = decltype(isa)::value;
          std::vector<T> vi = var;
          std::vector<Acc> ai = accum;
          auto r = R::Make(key);
          RunCompiledFor<kIsa>(AdagradSparseRowsLoop(), vi.data(), ai.data(),
                               grad.data(), indices.data(), groups, row_size,
                               step, &r, int64_t{0}, groups.num_unique(),
                               scratch.data());
          const std::string variant = std::string(what) + ", " + IsaName(kIsa);
          ExpectSameElements(vi, want_var, variant + ": var");
          ExpectSameElements(ai, want_accum, variant + ": accum");
        });
      }
    }
  }
}

// Rowwise reference for 16-bit weights: float32 row arithmetic in
// rowwise_math.h's order, the new weights stored by ReferenceStore at
// positions row_position + j. G is T (a gradient row as given) or float (a
// summed one).
template <typename T, typename G>
void RowwiseReferenceRowStored(T* var, float* accum, const G* grad,
                               int64_t row_size, float lr, float epsilon,
                               const StochasticRoundingKey* key,
                               int64_t row_position) {
  float lanes[32] = {};
  for (int64_t j = 0; j < row_size; ++j) {
    const float g = tf_adagrad::Arithmetic<G>::Load(grad[j]);
    lanes[j % 32] += g * g;
  }
  for (int half = 16; half >= 1; half /= 2) {
    for (int l = 0; l < half; ++l) lanes[l] = lanes[l] + lanes[l + half];
  }
  *accum = *accum + lanes[0] / static_cast<float>(row_size);
  const float multiplier = lr / (std::sqrt(*accum) + epsilon);
  for (int64_t j = 0; j < row_size; ++j) {
    const float v = tf_adagrad::Arithmetic<T>::Load(var[j]) -
                    multiplier * tf_adagrad::Arithmetic<G>::Load(grad[j]);
    var[j] = ReferenceStore<T>(v, key, row_position + j);
  }
}

// Rowwise dense and sparse updates of 16-bit weights, rounded to nearest or
// stochastically, against RowwiseReferenceRowStored: whole, in two parts
// and per variant; rows longer than a stretch.
template <typename T, bool kStochastic>
void TestRowwiseRoundingMatchesReference(std::mt19937_64& rng) {
  using R = LoopRounding<kStochastic>;
  const RowwiseStep<float> step{0.01f, 1e-8f};
  const StochasticRoundingKey key{rng(), rng()};
  const StochasticRoundingKey* reference_key = kStochastic ? &key : nullptr;
  for (const int64_t row_size : {1, 5, 32, 33, 100, 513, 1100}) {
    const int64_t num_rows = 40, nnz = 90;
    const std::vector<T> var =
        LoopTestValues<T>(num_rows * row_size, -2, 2, false, rng);
    const std::vector<float> accum =
        LoopTestValues<float>(num_rows, 0, 1, false, rng);
    const std::vector<T> grad =
        LoopTestValues<T>(num_rows * row_size, -1, 1, false, rng);
    const std::vector<T> sparse_grad =
        LoopTestValues<T>(nnz * row_size, -1, 1, false, rng);
    std::vector<int64_t> indices(nnz);
    for (auto& i : indices) i = static_cast<int64_t>(rng() % 25);
    char what[160];
    std::snprintf(what, sizeof what, "rowwise %s, %s, rows of %lld",
                  HalfType<T>::kName, R::kName,
                  static_cast<long long>(row_size));

    std::vector<T> want_var = var;
    std::vector<float> want_accum = accum;
    for (int64_t r = 0; r < num_rows; ++r) {
      RowwiseReferenceRowStored(&want_var[r * row_size], &want_accum[r],
                                &grad[r * row_size], row_size, step.lr,
                                step.epsilon, reference_key, r * row_size);
    }
    const std::string dense = std::string(what) + ", dense";
    std::vector<T> v = var;
    std::vector<float> a = accum;
    auto rounding = R::Make(key);
    tf_adagrad::RowwiseDenseRows(v.data(), a.data(), grad.data(), row_size,
                                 step, rounding, 0, num_rows);
    ExpectSameElements(v, want_var, dense + ": var");
    ExpectSameElements(a, want_accum, dense + ": accum");
    v = var, a = accum;
    auto first_half = R::Make(key), second_half = R::Make(key);
    tf_adagrad::RowwiseDenseRows(v.data(), a.data(), grad.data(), row_size,
                                 step, first_half, 0, 17);
    tf_adagrad::RowwiseDenseRows(v.data(), a.data(), grad.data(), row_size,
                                 step, second_half, 17, num_rows);
    ExpectSameElements(v, want_var, dense + ", two parts: var");
    ForEachIsa([&](auto isa) {
      constexpr VectorIsa kIsa = decltype(isa)::value;
      std::vector<T> vi = var;
      std::vector<float> ai = accum;
      auto r = R::Make(key);
      RunCompiledFor<kIsa>(RowwiseDenseRowsLoop(), vi.data(), ai.data(),
                           grad.data(), row_size, step, &r, int64_t{0},
                           num_rows);
      ExpectSameElements(vi, want_var, dense + ", " + IsaName(kIsa) + ": var");
      ExpectSameElements(ai, want_accum,
                         dense + ", " + IsaName(kIsa) + ": accum");
    });

    std::vector<float> summed(num_rows * row_size, 0.0f);
    std::vector<bool> touched(num_rows, false);
    for (int64_t k = 0; k < nnz; ++k) {
      const int64_t r = indices[k];
      for (int64_t j = 0; j < row_size; ++j) {
        const float g =
            tf_adagrad::Arithmetic<T>::Load(sparse_grad[k * row_size + j]);
        float& sum = summed[r * row_size + j];
        sum = touched[r] ? sum + g : g;
      }
      touched[r] = true;
    }
    want_var = var, want_accum = accum;
    for (int64_t r = 0; r < num_rows; ++r) {
      if (!touched[r]) continue;
      RowwiseReferenceRowStored(&want_var[r * row_size], &want_accum[r],
                                &summed[r * row_size], row_size, step.lr,
                                step.epsilon, reference_key, r * row_size);
    }
    const RowGroups groups =
        tf_adagrad::GroupRowsByIndex(indices.data(), nnz, num_rows);
    std::vector<float> scratch(row_size);
    const std::string sparse = std::string(what) + ", sparse";
    v = var, a = accum;
    auto sparse_rounding = R::Make(key);
    tf_adagrad::RowwiseSparseRows(v.data(), a.data(), sparse_grad.data(),
                                  indices.data(), groups, row_size, step,
                                  sparse_rounding, 0, groups.num_unique(),
                                  scratch.data());
    ExpectSameElements(v, want_var, sparse + ": var");
    ExpectSameElements(a, want_accum, sparse + ": accum");
    const int64_t middle = groups.num_unique() / 2;
    v = var, a = accum;
    auto sparse_first = R::Make(key), sparse_second = R::Make(key);
    tf_adagrad::RowwiseSparseRows(v.data(), a.data(), sparse_grad.data(),
                                  indices.data(), groups, row_size, step,
                                  sparse_first, 0, middle, scratch.data());
    tf_adagrad::RowwiseSparseRows(v.data(), a.data(), sparse_grad.data(),
                                  indices.data(), groups, row_size, step,
                                  sparse_second, middle, groups.num_unique(),
                                  scratch.data());
    ExpectSameElements(v, want_var, sparse + ", two parts: var");
    ExpectSameElements(a, want_accum, sparse + ", two parts: accum");
    ForEachIsa([&](auto isa) {
      constexpr VectorIsa kIsa = decltype(isa)::value;
      std::vector<T> vi = var;
      std::vector<float> ai = accum;
      auto r = R::Make(key);
      RunCompiledFor<kIsa>(RowwiseSparseRowsLoop(), vi.data(), ai.data(),
                           sparse_grad.data(), indices.data(), groups, row_size,
                           step, &r, int64_t{0}, groups.num_unique(),
                           scratch.data());
      ExpectSameElements(vi, want_var, sparse + ", " + IsaName(kIsa) + ": var");
      ExpectSameElements(ai, want_accum,
                         sparse + ", " + IsaName(kIsa) + ": accum");
    });
  }
}

// `n` elements of T in a block aligned to 64 bytes (the GPU kernels' packs
// are aligned to their size, up to 32 bytes for eight float32
// accumulators).
template <typename T>
class AlignedArray {
 public:
  explicit AlignedArray(const std::vector<T>& values)
      : data_(static_cast<T*>(std::aligned_alloc(
            64, (values.size() * sizeof(T) + 64) / 64 * 64))),
        size_(values.size()) {
    if (!values.empty()) {
      std::memcpy(data_, values.data(), values.size() * sizeof(T));
    }
  }
  ~AlignedArray() { std::free(data_); }
  AlignedArray(const AlignedArray&) = delete;
  AlignedArray& operator=(const AlignedArray&) = delete;
  T* data() { return data_; }
  std::vector<T> copy() const { return std::vector<T>(data_, data_ + size_); }

 private:
  T* data_;
  size_t size_;
};

// The GPU's dense kernel (UpdateStrided with its per-element
// StochasticRounding) run on the host, thread by thread of a simulated grid,
// packs of 8 (the 16-byte path) and of 1: the same bits as the CPU's
// AdagradDenseRange with StochasticRoundingBuffered, the same key.
template <typename T, typename Acc, EpsilonPlacement kPlacement>
void TestStridedStochasticMatchesCpu(std::mt19937_64& rng) {
  const AdagradStep<float, kPlacement> step{0.01f, 1e-7f};
  const StochasticRoundingKey key{rng(), rng()};
  const tf_adagrad::StochasticRounding per_element{key};
  for (const int64_t size : {1, 7, 8, 9, 100, 513, 4099}) {
    const std::vector<T> var = LoopTestValues<T>(size, -2, 2, true, rng);
    const std::vector<Acc> accum = LoopTestValues<Acc>(size, 0, 1, false, rng);
    const std::vector<T> grad = LoopTestValues<T>(size, -1, 1, true, rng);
    std::vector<T> want_var = var;
    std::vector<Acc> want_accum = accum;
    Buffered buffered(key);
    tf_adagrad::AdagradDenseRange(want_var.data(), want_accum.data(),
                                  grad.data(), step, buffered, int64_t{0}, 0,
                                  size);
    // At least kWidth - 1 threads, as every GPU grid has: the first threads
    // take the elements past the last whole pack, one each.
    for (const int threads : {256, 96, 7}) {
      for (const bool packs_of_8 : {true, false}) {
        AlignedArray<T> v(var), g(grad);
        AlignedArray<Acc> a(accum);
        for (int t = 0; t < threads; ++t) {
          if (packs_of_8) {
            tf_adagrad::UpdateStrided<tf_adagrad::Arithmetic, 8>(
                v.data(), a.data(), g.data(), step, size, t, threads,
                per_element, int64_t{0});
          } else {
            tf_adagrad::UpdateStrided<tf_adagrad::Arithmetic, 1>(
                v.data(), a.data(), g.data(), step, size, t, threads,
                per_element, int64_t{0});
          }
        }
        char what[160];
        std::snprintf(what, sizeof what,
                      "simulated GPU grid, %s, accumulators %s, size %lld, "
                      "%d threads, packs of %d",
                      HalfType<T>::kName,
                      std::is_same_v<Acc, float> ? "float32" : "of var",
                      static_cast<long long>(size), threads,
                      packs_of_8 ? 8 : 1);
        ExpectSameElements(v.copy(), want_var, std::string(what) + ": var");
        ExpectSameElements(a.copy(), want_accum, std::string(what) + ": accum");
      }
    }
  }
}

template <typename T, EpsilonPlacement kPlacement>
void TestRoundingOfType(std::mt19937_64& rng) {
  TestDenseRoundingMatchesReference<T, T, kPlacement, true>(rng);
  TestDenseRoundingMatchesReference<T, float, kPlacement, true>(rng);
  TestDenseRoundingMatchesReference<T, float, kPlacement, false>(rng);
  TestSparseRoundingMatchesReference<T, T, int64_t, kPlacement, true>(rng);
  TestSparseRoundingMatchesReference<T, float, int32_t, kPlacement, true>(rng);
  TestSparseRoundingMatchesReference<T, float, int64_t, kPlacement, false>(rng);
  TestStridedStochasticMatchesCpu<T, T, kPlacement>(rng);
  TestStridedStochasticMatchesCpu<T, float, kPlacement>(rng);
}

void TestStochasticRounding() {
  TestPhiloxKnownAnswers();
  TestFillRandomBitsMatchesRandomBits();
  TestBFloat16StochasticRounding();
  TestHalfStochasticRounding();
  std::mt19937_64 rng(14);
  TestRoundingOfType<Float16, EpsilonPlacement::kInsideSqrt>(rng);
  TestRoundingOfType<Float16, EpsilonPlacement::kOutsideSqrt>(rng);
  TestRoundingOfType<BFloat16, EpsilonPlacement::kInsideSqrt>(rng);
  TestRoundingOfType<BFloat16, EpsilonPlacement::kOutsideSqrt>(rng);
  TestRowwiseRoundingMatchesReference<Float16, true>(rng);
  TestRowwiseRoundingMatchesReference<Float16, false>(rng);
  TestRowwiseRoundingMatchesReference<BFloat16, true>(rng);
  TestRowwiseRoundingMatchesReference<BFloat16, false>(rng);
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
  TestStochasticRounding();
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
