// Tests of kernels/adagrad_math.h without TensorFlow: the conversions, the
// grouping of duplicate indices (including paths the ops cannot reach with
// real tables), and the sparse update against a scalar reference.
#include "kernels/adagrad_math.h"
#include "tests/cc/expect.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace {

using tf_adagrad_test::failures;

using tf_adagrad::RowGroups;

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
  const Case cases[] = {{1, 0},       {1, 5},          {2, 1},
                        {7, 100},     {1 << 20, 8192}, {1000, 100000},
                        {int64_t{1} << 62, 1000},
                        {INT64_MAX, 50}};
  for (const Case& c : cases) {
    std::vector<int64_t> indices(c.nnz);
    for (auto& index : indices) {
      // Draw from a few values to force duplicates, spread over the range.
      index = static_cast<int64_t>((rng() % 17) * (c.num_rows / 17)) % c.num_rows;
    }
    ExpectValidGroups(indices, tf_adagrad::GroupRowsByIndex(
                                   indices.data(), c.nnz, c.num_rows));
    std::vector<int32_t> narrow(indices.begin(), indices.end());
    if (c.num_rows <= INT32_MAX) {
      RowGroups g = tf_adagrad::GroupRowsByIndex(narrow.data(), c.nnz, c.num_rows);
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
  EXPECT(tf_adagrad::FloatToHalf(std::ldexp(1.0f, -25)) == 0);       // tie -> even
  EXPECT(tf_adagrad::FloatToHalf(std::ldexp(1.5f, -25)) == 0x0001);  // above tie
  EXPECT(tf_adagrad::FloatToHalf(std::ldexp(3.0f, -25)) == 0x0002);  // tie -> even
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
  EXPECT(std::isnan(tf_adagrad::BFloat16ToFloat(tf_adagrad::FloatToBFloat16(NAN))));
}

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
      want_var[e] -= 0.1f * dense[e] / std::sqrt(want_accum[e] + 1e-7f);
    }
  }
  const RowGroups groups = tf_adagrad::GroupRowsByIndex(indices.data(), nnz, num_rows);
  std::vector<float> scratch(row_size);
  tf_adagrad::AdagradSparseRows(var.data(), accum.data(), grad.data(), indices.data(),
                                groups, row_size, 0.1f, 1e-7f, 0, groups.num_unique(),
                                scratch.data());
  for (size_t e = 0; e < var.size(); ++e) {
    EXPECT(var[e] == want_var[e]);
    EXPECT(accum[e] == want_accum[e]);
  }
}

// The vectorized float16 path (F16C, where the CPU has it) must give the
// scalar path's bits, across the whole range: subnormals, overflow, ties.
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
    tf_adagrad::AdagradDenseRange(v1.data(), a1.data(), grad.data(), lr, 1e-3f, 0, n);
    tf_adagrad::AdagradDenseRangeScalar(v2.data(), a2.data(), grad.data(), lr, 1e-3f, 0, n);
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
bool IsNanBits(tf_adagrad::BFloat16 x) {
  return std::isnan(tf_adagrad::BFloat16ToFloat(x.bits));
}

// Each instruction-set variant this CPU runs (AVX2, AVX-512), dense and
// sparse, gives the baseline build's bits (NaN payloads aside).
template <typename T>
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
  for (auto& index : indices) index = static_cast<int64_t>(rng() % 16);  // duplicates
  const tf_adagrad::RowGroups groups =
      tf_adagrad::GroupRowsByIndex(indices.data(), nnz, rows);
  std::vector<C> scratch(row_size);
  const C lr = static_cast<C>(0.01), epsilon = static_cast<C>(1e-7);

  std::vector<T> want_var = var, want_accum = accum;
  tf_adagrad::AdagradDenseRangeScalar(want_var.data(), want_accum.data(), grad.data(), lr,
                                      epsilon, 0, n);
  std::vector<T> want_sparse_var = var, want_sparse_accum = accum;
  tf_adagrad::AdagradSparseRowsScalar(want_sparse_var.data(), want_sparse_accum.data(),
                                      sparse_grad.data(), indices.data(), groups, row_size,
                                      lr, epsilon, 0, groups.num_unique(), scratch.data());
  const auto expect_same = [](const std::vector<T>& got, const std::vector<T>& want) {
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT(SameBits(got[i], want[i]) || (IsNanBits(got[i]) && IsNanBits(want[i])));
    }
  };
  const bool has_avx2 = __builtin_cpu_supports("avx2");
  const bool has_avx512 = tf_adagrad::CpuVectorIsa() == tf_adagrad::VectorIsa::kAvx512;
  if (has_avx2) {
    std::vector<T> v = var, a = accum;
    tf_adagrad::AdagradDenseRangeAvx2(v.data(), a.data(), grad.data(), lr, epsilon, 0, n);
    expect_same(v, want_var);
    expect_same(a, want_accum);
    v = var, a = accum;
    tf_adagrad::AdagradSparseRowsAvx2(v.data(), a.data(), sparse_grad.data(), indices.data(),
                                      groups, row_size, lr, epsilon, 0, groups.num_unique(),
                                      scratch.data());
    expect_same(v, want_sparse_var);
    expect_same(a, want_sparse_accum);
  }
  if (has_avx512) {
    std::vector<T> v = var, a = accum;
    tf_adagrad::AdagradDenseRangeAvx512(v.data(), a.data(), grad.data(), lr, epsilon, 0, n);
    expect_same(v, want_var);
    expect_same(a, want_accum);
    v = var, a = accum;
    tf_adagrad::AdagradSparseRowsAvx512(v.data(), a.data(), sparse_grad.data(), indices.data(),
                                        groups, row_size, lr, epsilon, 0, groups.num_unique(),
                                        scratch.data());
    expect_same(v, want_sparse_var);
    expect_same(a, want_sparse_accum);
  }
  std::printf("vector variants checked: avx2 %s, avx512 %s\n", has_avx2 ? "yes" : "no (CPU lacks it)",
              has_avx512 ? "yes" : "no (CPU lacks it)");
}
#endif  // TF_ADAGRAD_X86

// The sort split into chunks (as the op splits it across threads for large
// nnz) gives exactly the serial sort's groups.
void TestChunkedGroupingEqualsSerial() {
  std::mt19937_64 rng(4);
  for (int64_t nnz : {int64_t{0}, int64_t{1}, tf_adagrad::kMinKeysPerSortChunk * 3 + 17,
                      tf_adagrad::kMinKeysPerSortChunk * 8}) {
    for (int64_t num_rows : {int64_t{1}, int64_t{1000}, int64_t{1} << 30, INT64_MAX}) {
      std::vector<int64_t> indices(nnz);
      for (auto& index : indices) index = static_cast<int64_t>(rng() % num_rows);
      const RowGroups serial = tf_adagrad::GroupRowsByIndex(indices.data(), nnz, num_rows);
      for (int64_t chunks : {2, 3, 8, 64}) {
        int64_t tasks_run = 0;
        const auto count_tasks = [&tasks_run](int64_t n, const auto& task) {
          for (int64_t c = 0; c < n; ++c, ++tasks_run) task(c);
        };
        const RowGroups chunked =
            tf_adagrad::GroupRowsByIndex(indices.data(), nnz, num_rows, chunks, count_tasks);
        EXPECT(chunked.positions == serial.positions);
        EXPECT(chunked.run_starts == serial.run_starts);
        ExpectValidGroups(indices, chunked);
        EXPECT(tasks_run > 0);
      }
    }
  }
}

}  // namespace

int main() {
  TestGrouping();
  TestChunkedGroupingEqualsSerial();
  TestHalfConversions();
  TestBFloat16Conversions();
  TestSparseUpdateMatchesScalarReference();
  TestHalfDenseVectorPathMatchesScalar();
#ifdef TF_ADAGRAD_X86
  TestVectorVariantsMatchBaseline<float>();
  TestVectorVariantsMatchBaseline<double>();
  TestVectorVariantsMatchBaseline<tf_adagrad::BFloat16>();
#endif
  if (failures) {
    std::fprintf(stderr, "%d expectation(s) failed\n", failures);
    return 1;
  }
  std::printf("adagrad_math_test: all expectations held\n");
  return 0;
}
