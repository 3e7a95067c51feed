// Standalone test of the CUDA kernels in kernels/adagrad_gpu.cuh,
// kernels/rowwise_gpu.cuh, kernels/weight_decay_gpu.cuh and
// kernels/moving_average_gpu.cuh, without TensorFlow. Runs the dense,
// multi-tensor dense and sparse updates on random shapes and data, with
// epsilon inside and outside the square root in turn, the rowwise dense and
// sparse updates, weight decay of every element and of rows, the lazy
// moving average of rows, and float16 and bfloat16 weights with float32
// accumulators or stochastic rounding (the same key on both devices),
// against the CPU paths of kernels/adagrad_cpu.h,
// kernels/rowwise_cpu.h, kernels/weight_decay_cpu.h and
// kernels/moving_average_cpu.h (the references), requires the
// results to be bit-identical to it and from one run to the next, checks the
// index validation, then times the dense kernel against a device-to-device copy
// and the sparse update on a 1M x 64 table.
//
// Usage: adagrad_cuda_test [seed]
// Exit status: 0 every check passed; 1 a check failed; 77 no CUDA device.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/adagrad_cpu.h"
#include "kernels/adagrad_gpu.cuh"
#include "kernels/half_types.h"
#include "kernels/moving_average_cpu.h"
#include "kernels/moving_average_gpu.cuh"
#include "kernels/multi_tensor.h"
#include "kernels/row_grouping.h"
#include "kernels/rowwise_cpu.h"
#include "kernels/rowwise_gpu.cuh"
#include "kernels/stochastic_rounding.h"
#include "kernels/weight_decay_cpu.h"
#include "kernels/weight_decay_gpu.cuh"

namespace {

using tf_adagrad::Arithmetic;
using tf_adagrad::BFloat16;
using tf_adagrad::ComputeType;
using tf_adagrad::EpsilonPlacement;
using tf_adagrad::Float16;

#define CUDA_CHECK(call)                                                 \
  do {                                                                   \
    const cudaError_t cuda_check_error = (call);                         \
    if (cuda_check_error != cudaSuccess) {                               \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, \
                   #call, cudaGetErrorString(cuda_check_error));         \
      std::exit(1);                                                      \
    }                                                                    \
  } while (0)

int checks_passed = 0;
int checks_failed = 0;

void Record(bool ok, const std::string& what) {
  if (ok) {
    ++checks_passed;
  } else {
    ++checks_failed;
    std::printf("FAILED: %s\n", what.c_str());
  }
}

template <typename T>
struct TypeName;
template <>
struct TypeName<Float16> {
  static constexpr const char* value = "float16";
};
template <>
struct TypeName<BFloat16> {
  static constexpr const char* value = "bfloat16";
};
template <>
struct TypeName<float> {
  static constexpr const char* value = "float32";
};
template <>
struct TypeName<double> {
  static constexpr const char* value = "float64";
};
template <>
struct TypeName<int32_t> {
  static constexpr const char* value = "int32";
};
template <>
struct TypeName<int64_t> {
  static constexpr const char* value = "int64";
};

// Device memory for n elements, freed on scope exit.
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t n) : size_(n) {
    if (n > 0) CUDA_CHECK(cudaMalloc(&data_, n * sizeof(T)));
  }
  ~DeviceArray() { cudaFree(data_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  T* data() const { return data_; }
  void CopyFrom(const std::vector<T>& host, size_t offset = 0) const {
    if (!host.empty()) {
      CUDA_CHECK(cudaMemcpy(data_ + offset, host.data(),
                            host.size() * sizeof(T), cudaMemcpyHostToDevice));
    }
  }
  std::vector<T> CopyOut(size_t n, size_t offset = 0) const {
    std::vector<T> host(n);
    if (n > 0) {
      CUDA_CHECK(cudaMemcpy(host.data(), data_ + offset, n * sizeof(T),
                            cudaMemcpyDeviceToHost));
    }
    return host;
  }

 private:
  T* data_ = nullptr;
  size_t size_;
};

template <typename T>
T FromDouble(double x) {
  return Arithmetic<T>::Store(static_cast<ComputeType<T>>(x));
}

template <typename T>
bool IsNaN(T x) {
  return std::isnan(Arithmetic<T>::Load(x));
}

// Same bits, or NaN on both sides: a GPU writes the canonical NaN where x86
// propagates an operand's payload, and NaN payloads carry no meaning here.
template <typename T>
bool SameValue(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0 || (IsNaN(a) && IsNaN(b));
}

template <typename T>
int64_t FirstDifference(const std::vector<T>& got, const std::vector<T>& want) {
  for (size_t i = 0; i < got.size(); ++i) {
    if (!SameValue(got[i], want[i])) return static_cast<int64_t>(i);
  }
  return -1;
}

template <typename T>
bool Identical(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() &&
         (a.empty() ||
          std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// Records that the first run equals the CPU reference (naming the first
// differing element otherwise) and that the second run equals the first.
template <typename T, typename Acc>
void RecordResults(const std::string& name, const std::vector<T>& var1,
                   const std::vector<Acc>& accum1, const std::vector<T>& var2,
                   const std::vector<Acc>& accum2,
                   const std::vector<T>& want_var,
                   const std::vector<Acc>& want_accum) {
  const int64_t bad_var = FirstDifference(var1, want_var);
  const int64_t bad_accum = FirstDifference(accum1, want_accum);
  Record(bad_var < 0 && bad_accum < 0,
         name + ": differs from the CPU reference at var[" +
             std::to_string(bad_var) + "] / accum[" +
             std::to_string(bad_accum) + "]");
  Record(Identical(var1, var2) && Identical(accum1, accum2),
         name + ": two runs differ");
}

// Random values in [low, high), with a few gradients replaced by values that
// exercise the edges of the math: zeros, infinities, NaN, subnormals, huge.
template <typename T>
std::vector<T> RandomValues(size_t n, double low, double high, bool specials,
                            std::mt19937_64& rng) {
  std::uniform_real_distribution<double> uniform(low, high);
  std::uniform_int_distribution<int> special_pick(0, 127);
  const double infinity = std::numeric_limits<double>::infinity();
  const double edge[] = {0.0,          -0.0,  infinity, -infinity,
                         std::nan(""), 1e-40, -3e-42,   1e30};
  std::vector<T> values(n);
  for (auto& v : values) {
    const int pick = specials ? special_pick(rng) : 127;
    v = FromDouble<T>(pick < 8 ? edge[pick] : uniform(rng));
  }
  return values;
}

// lr and epsilon pass through T, as the ops receive them.
template <typename T>
struct Hyperparameters {
  ComputeType<T> lr, epsilon;
  EpsilonPlacement placement;

  // fn(step) with this case's AdagradStep, as the ops' functors call it.
  template <typename Fn>
  decltype(auto) WithStep(const Fn& fn) const {
    return tf_adagrad::WithAdagradStep(placement, lr, epsilon, fn);
  }
  const char* PlacementName() const {
    return placement == EpsilonPlacement::kInsideSqrt ? ", epsilon inside"
                                                      : ", epsilon outside";
  }
};

// Cases alternate between the two placements, so every kind of case runs
// with both.
template <typename T>
Hyperparameters<T> RandomHyperparameters(std::mt19937_64& rng) {
  static int cases = 0;
  std::uniform_real_distribution<double> lr(1e-3, 1.0);
  const double epsilons[] = {1e-7, 1e-3, 0.1};
  const double epsilon =
      epsilons[std::uniform_int_distribution<int>(0, 2)(rng)];
  return {Arithmetic<T>::Load(FromDouble<T>(lr(rng))),
          Arithmetic<T>::Load(FromDouble<T>(epsilon)),
          cases++ % 2 == 0 ? EpsilonPlacement::kInsideSqrt
                           : EpsilonPlacement::kOutsideSqrt};
}

// How a case stores its new weights: to nearest (the default), or
// stochastically with a random key (seed and step with both halves
// nonzero), the same on both devices.
tf_adagrad::WeightRounding Nearest() { return tf_adagrad::WeightRounding{}; }

tf_adagrad::WeightRounding RandomStochasticRounding(std::mt19937_64& rng) {
  tf_adagrad::WeightRounding rounding;
  rounding.stochastic = true;
  rounding.key = {rng(), rng()};
  return rounding;
}

std::string RoundingName(const tf_adagrad::WeightRounding& rounding) {
  if (!rounding.stochastic) return "";
  char key[80];
  std::snprintf(key, sizeof key,
                ", stochastic rounding (seed %#" PRIx64 ", step %#" PRIx64 ")",
                rounding.key.seed, rounding.key.step);
  return key;
}

// ", float32 accumulators" where a 16-bit variable has them.
template <typename T, typename Acc>
std::string AccumulatorName() {
  return std::is_same_v<T, Acc>
             ? ""
             : std::string(", ") + TypeName<Acc>::value + " accumulators";
}

// fn(rounding) with the CPU loops' Rounding for `rounding`, as the ops'
// CPU functors choose it: StochasticRoundingBuffered (the CPU's random bits,
// a stretch at a time) or RoundToNearest.
template <typename T, typename Fn>
void WithCpuRounding(const tf_adagrad::WeightRounding& rounding, const Fn& fn) {
  if constexpr (tf_adagrad::kIsHalfType<T>) {
    if (rounding.stochastic) {
      tf_adagrad::StochasticRoundingBuffered stochastic(rounding.key);
      return fn(stochastic);
    }
  }
  tf_adagrad::RoundToNearest<tf_adagrad::Arithmetic> nearest;
  fn(nearest);
}

// The CPU's baseline build of the dense update, a stretch of positions at a
// time as AdagradDenseRange runs it: the reference. Element i is table
// position i, as in the GPU kernel.
template <typename T, typename Acc>
void DenseReference(T* var, Acc* accum, const T* grad, Hyperparameters<T> h,
                    int64_t begin, int64_t end,
                    const tf_adagrad::WeightRounding& rounding = Nearest()) {
  h.WithStep([&](const auto& step) {
    WithCpuRounding<T>(rounding, [&](auto& store) {
      using Rounding = std::decay_t<decltype(store)>;
      for (int64_t b = begin, e; b < end; b = e) {
        e = tf_adagrad::StretchEnd<Rounding>(b, end);
        store.Prepare(b, e - b);
        const Rounding& prepared = store;
        tf_adagrad::RunCompiledFor<tf_adagrad::VectorIsa::kBaseline>(
            tf_adagrad::AdagradDenseLoop(), var, accum, grad, step, prepared,
            int64_t{0}, b, e);
      }
    });
  });
}

// ---------------------------------------------------------------- dense ---

// One dense update of `size` elements on the GPU; `offset` elements into
// each allocation (`accum_offset` into the accumulator's), so that offset 1
// misaligns the 16-byte vector accesses.
template <typename T, typename Acc>
void RunDense(const std::vector<T>& var, const std::vector<Acc>& accum,
              const std::vector<T>& grad, Hyperparameters<T> h, size_t offset,
              size_t accum_offset, const tf_adagrad::WeightRounding& rounding,
              std::vector<T>* var_out, std::vector<Acc>* accum_out) {
  const size_t size = var.size();
  DeviceArray<T> d_var(size + offset), d_grad(size + offset);
  DeviceArray<Acc> d_accum(size + accum_offset);
  d_var.CopyFrom(var, offset);
  d_accum.CopyFrom(accum, accum_offset);
  d_grad.CopyFrom(grad, offset);
  CUDA_CHECK(h.WithStep([&](const auto& step) {
    return tf_adagrad::gpu::LaunchAdagradDense(
        d_var.data() + offset, d_accum.data() + accum_offset,
        d_grad.data() + offset, step, rounding, static_cast<int64_t>(size),
        cudaStream_t{0});
  }));
  CUDA_CHECK(cudaDeviceSynchronize());
  *var_out = d_var.CopyOut(size, offset);
  *accum_out = d_accum.CopyOut(size, accum_offset);
}

// Accumulators of Acc (T, or float32 for a 16-bit T); the new weights
// stored as `rounding` says, on both devices.
template <typename T, typename Acc = T>
void CheckDense(size_t size, size_t offset, std::mt19937_64& rng,
                const tf_adagrad::WeightRounding& rounding = Nearest(),
                size_t accum_offset = SIZE_MAX) {
  if (accum_offset == SIZE_MAX) accum_offset = offset;
  const std::vector<T> var = RandomValues<T>(size, -1.0, 1.0, true, rng);
  const std::vector<Acc> accum = RandomValues<Acc>(size, 0.0, 4.0, false, rng);
  const std::vector<T> grad = RandomValues<T>(size, -2.0, 2.0, true, rng);
  const Hyperparameters<T> h = RandomHyperparameters<T>(rng);

  std::vector<T> want_var = var;
  std::vector<Acc> want_accum = accum;
  DenseReference(want_var.data(), want_accum.data(), grad.data(), h, 0,
                 static_cast<int64_t>(size), rounding);
  std::vector<T> var1, var2;
  std::vector<Acc> accum1, accum2;
  RunDense(var, accum, grad, h, offset, accum_offset, rounding, &var1, &accum1);
  RunDense(var, accum, grad, h, offset, accum_offset, rounding, &var2, &accum2);

  const bool misaligned = offset != 0 || accum_offset != 0;
  const std::string name =
      std::string("dense ") + TypeName<T>::value + " size " +
      std::to_string(size) +
      (misaligned ? " misaligned (offsets " + std::to_string(offset) + ", " +
                        std::to_string(accum_offset) + ")"
                  : " aligned") +
      AccumulatorName<T, Acc>() + RoundingName(rounding) + h.PlacementName();
  RecordResults(name, var1, accum1, var2, accum2, want_var, want_accum);
}

// --------------------------------------------------------- multi-tensor ---

// One multi-tensor update of variables of the given sizes (more than one
// launch's worth when they need more than one table of kMaxTensorsPerTable
// tensors and kMaxBlocksPerTable chunks). Array k (var, accum, grad) of
// variable t sits `offsets[(3 * t + k) % offsets.size()]` elements into its
// own allocation, so that chunks take the 16-byte path or not, variable by
// variable. Every variable must equal the CPU reference, and two runs must
// agree.
template <typename T>
void CheckDenseMulti(const std::vector<size_t>& sizes,
                     const std::vector<size_t>& offsets, std::mt19937_64& rng) {
  const Hyperparameters<T> h = RandomHyperparameters<T>(rng);
  const size_t n = sizes.size();
  std::vector<std::vector<T>> var(n), accum(n), grad(n);
  for (size_t t = 0; t < n; ++t) {
    var[t] = RandomValues<T>(sizes[t], -1.0, 1.0, true, rng);
    accum[t] = RandomValues<T>(sizes[t], 0.0, 4.0, false, rng);
    grad[t] = RandomValues<T>(sizes[t], -2.0, 2.0, true, rng);
  }
  const auto offset_of = [&offsets](size_t t, int k) {
    return offsets[(3 * t + k) % offsets.size()];
  };
  bool any_misaligned = false;
  std::vector<std::vector<T>> got_var[2], got_accum[2];
  for (int run = 0; run < 2; ++run) {
    std::vector<std::unique_ptr<DeviceArray<T>>> arrays;
    std::vector<tf_adagrad::DenseTensors<T>> tensors;
    for (size_t t = 0; t < n; ++t) {
      T* pointers[3];
      const std::vector<T>* host[3] = {&var[t], &accum[t], &grad[t]};
      for (int k = 0; k < 3; ++k) {
        const size_t offset = offset_of(t, k);
        any_misaligned =
            any_misaligned || (sizes[t] > 0 && offset * sizeof(T) % 16 != 0);
        arrays.push_back(std::make_unique<DeviceArray<T>>(sizes[t] + offset));
        arrays.back()->CopyFrom(*host[k], offset);
        pointers[k] =
            arrays.back()->data() + (sizes[t] + offset > 0 ? offset : 0);
      }
      tensors.push_back({pointers[0], pointers[1], pointers[2],
                         static_cast<int64_t>(sizes[t])});
    }
    CUDA_CHECK(h.WithStep([&](const auto& step) {
      return tf_adagrad::gpu::LaunchAdagradDenseMulti(
          tensors.data(), static_cast<int64_t>(n), step, cudaStream_t{0});
    }));
    CUDA_CHECK(cudaDeviceSynchronize());
    for (size_t t = 0; t < n; ++t) {
      got_var[run].push_back(arrays[3 * t]->CopyOut(sizes[t], offset_of(t, 0)));
      got_accum[run].push_back(
          arrays[3 * t + 1]->CopyOut(sizes[t], offset_of(t, 1)));
    }
  }
  const std::string name =
      std::string("dense multi-tensor ") + TypeName<T>::value + ", " +
      std::to_string(n) + " variables" +
      (any_misaligned ? " (some misaligned)" : "") + h.PlacementName();
  bool same_as_reference = true, runs_agree = true;
  std::string first_bad;
  for (size_t t = 0; t < n; ++t) {
    std::vector<T> want_var = var[t], want_accum = accum[t];
    DenseReference(want_var.data(), want_accum.data(), grad[t].data(), h, 0,
                   static_cast<int64_t>(sizes[t]));
    const int64_t bad_var = FirstDifference(got_var[0][t], want_var);
    const int64_t bad_accum = FirstDifference(got_accum[0][t], want_accum);
    if ((bad_var >= 0 || bad_accum >= 0) && same_as_reference) {
      same_as_reference = false;
      first_bad = "variable " + std::to_string(t) + " (size " +
                  std::to_string(sizes[t]) + ") at var[" +
                  std::to_string(bad_var) + "] / accum[" +
                  std::to_string(bad_accum) + "]";
    }
    runs_agree = runs_agree && Identical(got_var[0][t], got_var[1][t]) &&
                 Identical(got_accum[0][t], got_accum[1][t]);
  }
  Record(same_as_reference,
         name + ": differs from the CPU reference in " + first_bad);
  Record(runs_agree, name + ": two runs differ");
}

template <typename T>
void CheckDenseMultiShapes(std::mt19937_64& rng) {
  std::uniform_int_distribution<size_t> small(0, 5000), large(100000, 600000);
  const size_t chunk = tf_adagrad::kChunkElements;
  const std::vector<size_t> aligned = {0}, misaligned = {1},
                            mixed = {0, 1, 0, 0, 3, 8, 0, 0, 0, 2};
  // Empty variables among others, sizes around the vector widths and the
  // chunk, one variable, and more than one table's worth of variables.
  CheckDenseMulti<T>({0, 1, 0, 7, 8, 9, 4097, 0}, aligned, rng);
  CheckDenseMulti<T>({0, 1, 0, 7, 8, 9, 4097, 0}, mixed, rng);
  CheckDenseMulti<T>({chunk - 1, chunk, chunk + 1, 2 * chunk + 7}, mixed, rng);
  CheckDenseMulti<T>({large(rng)}, misaligned, rng);
  CheckDenseMulti<T>({0}, aligned, rng);
  for (const size_t count : {size_t{64}, size_t{65}, size_t{150}}) {
    std::vector<size_t> sizes(count);
    for (auto& size : sizes) size = small(rng);
    sizes[count / 2] = large(rng);
    CheckDenseMulti<T>(sizes, count % 2 ? mixed : aligned, rng);
  }
  // More chunks than a table holds: one variable over two tables, its last
  // chunk odd, beside small ones.
  CheckDenseMulti<T>({5, tf_adagrad::kMaxBlocksPerTable * chunk + 4099, 3},
                     mixed, rng);
}

// --------------------------------------------------------------- sparse ---

enum class IndexPattern { kUniform, kFewRows, kZipf };

// Zipf(1.1) over [0, num_rows): row r drawn with weight 1 / (r + 1)^1.1.
class ZipfRows {
 public:
  explicit ZipfRows(int64_t num_rows) : cdf_(num_rows) {
    double total = 0;
    for (int64_t r = 0; r < num_rows; ++r) {
      total += std::pow(static_cast<double>(r + 1), -1.1);
      cdf_[r] = total;
    }
    for (double& c : cdf_) c /= total;
  }
  int64_t operator()(std::mt19937_64& rng) const {
    const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
    const auto it = std::lower_bound(cdf_.begin(), cdf_.end(), u);
    return std::min<int64_t>(it - cdf_.begin(), cdf_.size() - 1);
  }

 private:
  std::vector<double> cdf_;
};

template <typename Index>
std::vector<Index> RandomIndices(int64_t nnz, int64_t num_rows,
                                 IndexPattern pattern, std::mt19937_64& rng) {
  std::vector<Index> indices(nnz);
  if (pattern == IndexPattern::kZipf) {
    const ZipfRows zipf(num_rows);
    for (auto& i : indices) i = static_cast<Index>(zipf(rng));
    return indices;
  }
  // kFewRows: every index among the first 4 rows, so runs are long.
  const int64_t high = pattern == IndexPattern::kFewRows
                           ? std::min<int64_t>(num_rows, 4)
                           : num_rows;
  std::uniform_int_distribution<int64_t> row(0, high - 1);
  for (auto& i : indices) i = static_cast<Index>(row(rng));
  return indices;
}

// One sparse update on the GPU, as the op runs it: validate the indices,
// then sort and update.
template <typename T, typename Acc, typename Index>
bool RunSparse(const std::vector<T>& var, const std::vector<Acc>& accum,
               const std::vector<T>& grad, const std::vector<Index>& indices,
               int64_t num_rows, int64_t row_size, Hyperparameters<T> h,
               const tf_adagrad::WeightRounding& rounding,
               std::vector<T>* var_out, std::vector<Acc>* accum_out) {
  const int64_t nnz = static_cast<int64_t>(indices.size());
  DeviceArray<T> d_var(var.size()), d_grad(grad.size());
  DeviceArray<Acc> d_accum(accum.size());
  DeviceArray<Index> d_indices(indices.size());
  DeviceArray<unsigned long long> d_scratch(1);
  d_var.CopyFrom(var);
  d_accum.CopyFrom(accum);
  d_grad.CopyFrom(grad);
  d_indices.CopyFrom(indices);
  int64_t bad_position = -1, bad_index = 0;
  CUDA_CHECK(tf_adagrad::gpu::FindFirstOutOfRangeIndex(
      d_indices.data(), nnz, num_rows, d_scratch.data(), &bad_position,
      &bad_index, cudaStream_t{0}));
  if (bad_position >= 0) return false;
  if (nnz > 0) {
    tf_adagrad::gpu::SparseWorkspace plan;
    CUDA_CHECK(
        tf_adagrad::gpu::PlanSparseWorkspace<Index>(nnz, num_rows, &plan));
    DeviceArray<char> workspace(plan.total_bytes);
    CUDA_CHECK(h.WithStep([&](const auto& step) {
      return tf_adagrad::gpu::LaunchAdagradSparse(
          d_var.data(), d_accum.data(), d_grad.data(), d_indices.data(), nnz,
          row_size, step, rounding, plan, workspace.data(), cudaStream_t{0});
    }));
    CUDA_CHECK(cudaDeviceSynchronize());
  }
  *var_out = d_var.CopyOut(var.size());
  *accum_out = d_accum.CopyOut(accum.size());
  return true;
}

const char* PatternName(IndexPattern pattern) {
  switch (pattern) {
    case IndexPattern::kUniform:
      return "uniform";
    case IndexPattern::kFewRows:
      return "4 rows";
    case IndexPattern::kZipf:
      return "zipf";
  }
  return "?";
}

// Accumulators of Acc and the weights' rounding as in CheckDense.
template <typename T, typename Index, typename Acc = T>
void CheckSparse(int64_t num_rows, int64_t row_size, int64_t nnz,
                 IndexPattern pattern, std::mt19937_64& rng,
                 const tf_adagrad::WeightRounding& rounding = Nearest()) {
  const std::vector<T> var =
      RandomValues<T>(num_rows * row_size, -1.0, 1.0, true, rng);
  const std::vector<Acc> accum =
      RandomValues<Acc>(num_rows * row_size, 0.0, 4.0, false, rng);
  const std::vector<T> grad =
      RandomValues<T>(nnz * row_size, -2.0, 2.0, true, rng);
  const std::vector<Index> indices =
      RandomIndices<Index>(nnz, num_rows, pattern, rng);
  const Hyperparameters<T> h = RandomHyperparameters<T>(rng);

  std::vector<T> want_var = var;
  std::vector<Acc> want_accum = accum;
  if (nnz > 0 && row_size > 0) {
    const tf_adagrad::RowGroups groups =
        tf_adagrad::GroupRowsByIndex(indices.data(), nnz, num_rows);
    std::vector<ComputeType<T>> scratch(row_size);
    h.WithStep([&](const auto& step) {
      WithCpuRounding<T>(rounding, [&](auto& store) {
        tf_adagrad::AdagradSparseRows(want_var.data(), want_accum.data(),
                                      grad.data(), indices.data(), groups,
                                      row_size, step, store, 0,
                                      groups.num_unique(), scratch.data());
      });
    });
  }
  std::vector<T> var1, var2;
  std::vector<Acc> accum1, accum2;
  const std::string name =
      std::string("sparse ") + TypeName<T>::value + "/" +
      TypeName<Index>::value + " " + std::to_string(num_rows) + "x" +
      std::to_string(row_size) + ", " + std::to_string(nnz) + " " +
      PatternName(pattern) + " indices" + AccumulatorName<T, Acc>() +
      RoundingName(rounding) + h.PlacementName();
  const bool ran = RunSparse(var, accum, grad, indices, num_rows, row_size, h,
                             rounding, &var1, &accum1) &&
                   RunSparse(var, accum, grad, indices, num_rows, row_size, h,
                             rounding, &var2, &accum2);
  Record(ran, name + ": valid indices were rejected");
  if (!ran) return;
  RecordResults(name, var1, accum1, var2, accum2, want_var, want_accum);
}

// Plants out-of-range values among valid indices; the GPU must name the same
// first position and value as the CPU's FindOutOfRangeIndex.
template <typename Index>
void CheckOutOfRange(int64_t num_rows, int64_t nnz, int planted,
                     std::mt19937_64& rng) {
  // With no rows, the zeros are out of range too.
  std::vector<Index> indices =
      num_rows > 0
          ? RandomIndices<Index>(nnz, num_rows, IndexPattern::kUniform, rng)
          : std::vector<Index>(nnz, 0);
  const Index bad_values[] = {Index{-1}, static_cast<Index>(num_rows),
                              std::numeric_limits<Index>::min(),
                              std::numeric_limits<Index>::max(),
                              static_cast<Index>(num_rows + 12345)};
  std::uniform_int_distribution<int64_t> position(0, nnz - 1);
  std::uniform_int_distribution<int> value(0, 4);
  for (int p = 0; p < planted; ++p)
    indices[position(rng)] = bad_values[value(rng)];
  const int64_t want_position =
      tf_adagrad::FindOutOfRangeIndex(indices.data(), nnz, num_rows);
  const int64_t want_index =
      want_position >= 0 ? static_cast<int64_t>(indices[want_position]) : 0;

  DeviceArray<Index> d_indices(nnz);
  DeviceArray<unsigned long long> d_scratch(1);
  d_indices.CopyFrom(indices);
  int64_t got_position = -1, got_index = 0;
  CUDA_CHECK(tf_adagrad::gpu::FindFirstOutOfRangeIndex(
      d_indices.data(), nnz, num_rows, d_scratch.data(), &got_position,
      &got_index, cudaStream_t{0}));
  const bool ok = got_position == want_position &&
                  (want_position < 0 || got_index == want_index);
  Record(ok, std::string("out-of-range ") + TypeName<Index>::value + " " +
                 std::to_string(nnz) + " indices, " + std::to_string(planted) +
                 " planted: got position " + std::to_string(got_position) +
                 " value " + std::to_string(got_index) + ", want " +
                 std::to_string(want_position) + " value " +
                 std::to_string(want_index));
}

template <typename T, typename Index>
void CheckSparseShapes(std::mt19937_64& rng) {
  std::uniform_int_distribution<int64_t> small_odd(50, 499);
  for (const int64_t row_size : {1, 3, 64, 1000}) {
    // About 4M gradient elements in the large cases.
    const int64_t large = (int64_t{1} << 22) / row_size | 1;
    CheckSparse<T, Index>(10, row_size, 0, IndexPattern::kUniform, rng);
    CheckSparse<T, Index>(1, row_size, 1, IndexPattern::kUniform, rng);
    CheckSparse<T, Index>(5, row_size, 7, IndexPattern::kFewRows, rng);
    CheckSparse<T, Index>(3000, row_size, small_odd(rng) * 2 + 1,
                          IndexPattern::kUniform, rng);
    CheckSparse<T, Index>(std::max<int64_t>(large / 4, 1), row_size, large,
                          IndexPattern::kZipf, rng);
    CheckSparse<T, Index>(64, row_size, large / 2 | 1, IndexPattern::kFewRows,
                          rng);
    // One row: a single run, on both sides of a warp's worth of positions.
    for (const int64_t nnz : {31, 32, 33, 64, 65, 1000}) {
      CheckSparse<T, Index>(1, row_size, nnz, IndexPattern::kUniform, rng);
    }
  }
}

template <typename T>
void CheckType(std::mt19937_64& rng) {
  std::uniform_int_distribution<size_t> odd(50000, 500000);
  for (const size_t size :
       {size_t{0}, size_t{1}, size_t{2}, size_t{3}, size_t{7}, size_t{8},
        size_t{9}, size_t{15}, size_t{17}, size_t{1000}, size_t{4097},
        odd(rng) * 2 + 1, (size_t{1} << 22) + 5}) {
    for (const size_t offset : {size_t{0}, size_t{1}}) {
      CheckDense<T>(size, offset, rng);
    }
  }
  CheckDenseMultiShapes<T>(rng);
  CheckSparseShapes<T, int32_t>(rng);
  CheckSparseShapes<T, int64_t>(rng);
}

// -------------------------------------------------------------- rowwise ---

// The rowwise hyperparameters, in the accumulator's type.
template <typename T>
tf_adagrad::RowwiseStep<ComputeType<T>> RandomRowwiseStep(
    std::mt19937_64& rng) {
  std::uniform_real_distribution<double> lr(1e-3, 1.0);
  const double epsilons[] = {0.0, 1e-8, 1e-3};
  return {static_cast<ComputeType<T>>(lr(rng)),
          static_cast<ComputeType<T>>(
              epsilons[std::uniform_int_distribution<int>(0, 2)(rng)])};
}

// Dense rowwise update of num_rows x row_size on the GPU and on the CPU
// (baseline build), twice on the GPU.
template <typename T>
void CheckRowwiseDense(int64_t num_rows, int64_t row_size, std::mt19937_64& rng,
                       const tf_adagrad::WeightRounding& rounding = Nearest()) {
  using C = ComputeType<T>;
  const std::vector<T> var =
      RandomValues<T>(num_rows * row_size, -1.0, 1.0, true, rng);
  const std::vector<C> accum = RandomValues<C>(num_rows, 0.0, 4.0, false, rng);
  const std::vector<T> grad =
      RandomValues<T>(num_rows * row_size, -2.0, 2.0, true, rng);
  const tf_adagrad::RowwiseStep<C> step = RandomRowwiseStep<T>(rng);
  std::vector<T> want_var = var;
  std::vector<C> want_accum = accum;
  WithCpuRounding<T>(rounding, [&](auto& store) {
    tf_adagrad::RunCompiledFor<tf_adagrad::VectorIsa::kBaseline>(
        tf_adagrad::RowwiseDenseRowsLoop(), want_var.data(), want_accum.data(),
        grad.data(), row_size, step, &store, int64_t{0}, num_rows);
  });
  std::vector<T> vars[2];
  std::vector<C> accums[2];
  for (int run = 0; run < 2; ++run) {
    DeviceArray<T> d_var(var.size()), d_grad(grad.size());
    DeviceArray<C> d_accum(accum.size());
    d_var.CopyFrom(var);
    d_grad.CopyFrom(grad);
    d_accum.CopyFrom(accum);
    CUDA_CHECK(tf_adagrad::gpu::LaunchRowwiseDense(
        d_var.data(), d_accum.data(), d_grad.data(), num_rows, row_size, step,
        rounding, cudaStream_t{0}));
    CUDA_CHECK(cudaDeviceSynchronize());
    vars[run] = d_var.CopyOut(var.size());
    accums[run] = d_accum.CopyOut(accum.size());
  }
  const std::string name = std::string("rowwise dense ") + TypeName<T>::value +
                           " " + std::to_string(num_rows) + "x" +
                           std::to_string(row_size) + RoundingName(rounding);
  const int64_t bad_var = FirstDifference(vars[0], want_var);
  const int64_t bad_accum = FirstDifference(accums[0], want_accum);
  Record(bad_var < 0 && bad_accum < 0,
         name + ": differs from the CPU reference at var[" +
             std::to_string(bad_var) + "] / accum[" +
             std::to_string(bad_accum) + "]");
  Record(Identical(vars[0], vars[1]) && Identical(accums[0], accums[1]),
         name + ": two runs differ");
}

// Sparse rowwise update on the GPU (indices checked, sorted, a warp per
// unique row) against the CPU's RowwiseSparseRows, twice on the GPU.
template <typename T, typename Index>
void CheckRowwiseSparse(
    int64_t num_rows, int64_t row_size, int64_t nnz, IndexPattern pattern,
    std::mt19937_64& rng,
    const tf_adagrad::WeightRounding& rounding = Nearest()) {
  using C = ComputeType<T>;
  const std::vector<T> var =
      RandomValues<T>(num_rows * row_size, -1.0, 1.0, true, rng);
  const std::vector<C> accum = RandomValues<C>(num_rows, 0.0, 4.0, false, rng);
  const std::vector<T> grad =
      RandomValues<T>(nnz * row_size, -2.0, 2.0, true, rng);
  const std::vector<Index> indices =
      RandomIndices<Index>(nnz, num_rows, pattern, rng);
  const tf_adagrad::RowwiseStep<C> step = RandomRowwiseStep<T>(rng);
  std::vector<T> want_var = var;
  std::vector<C> want_accum = accum;
  if (nnz > 0) {
    const tf_adagrad::RowGroups groups =
        tf_adagrad::GroupRowsByIndex(indices.data(), nnz, num_rows);
    std::vector<C> scratch(row_size);
    WithCpuRounding<T>(rounding, [&](auto& store) {
      tf_adagrad::RowwiseSparseRows(want_var.data(), want_accum.data(),
                                    grad.data(), indices.data(), groups,
                                    row_size, step, store, 0,
                                    groups.num_unique(), scratch.data());
    });
  }
  std::vector<T> vars[2];
  std::vector<C> accums[2];
  for (int run = 0; run < 2; ++run) {
    DeviceArray<T> d_var(var.size()), d_grad(grad.size());
    DeviceArray<C> d_accum(accum.size());
    DeviceArray<Index> d_indices(indices.size());
    d_var.CopyFrom(var);
    d_grad.CopyFrom(grad);
    d_accum.CopyFrom(accum);
    d_indices.CopyFrom(indices);
    if (nnz > 0) {
      tf_adagrad::gpu::SparseWorkspace plan;
      CUDA_CHECK(
          tf_adagrad::gpu::PlanSparseWorkspace<Index>(nnz, num_rows, &plan));
      DeviceArray<char> workspace(plan.total_bytes);
      CUDA_CHECK(tf_adagrad::gpu::LaunchRowwiseSparse(
          d_var.data(), d_accum.data(), d_grad.data(), d_indices.data(), nnz,
          row_size, step, rounding, plan, workspace.data(), cudaStream_t{0}));
      CUDA_CHECK(cudaDeviceSynchronize());
    }
    vars[run] = d_var.CopyOut(var.size());
    accums[run] = d_accum.CopyOut(accum.size());
  }
  const std::string name =
      std::string("rowwise sparse ") + TypeName<T>::value + "/" +
      TypeName<Index>::value + " " + std::to_string(num_rows) + "x" +
      std::to_string(row_size) + ", " + std::to_string(nnz) + " " +
      PatternName(pattern) + " indices" + RoundingName(rounding);
  const int64_t bad_var = FirstDifference(vars[0], want_var);
  const int64_t bad_accum = FirstDifference(accums[0], want_accum);
  Record(bad_var < 0 && bad_accum < 0,
         name + ": differs from the CPU reference at var[" +
             std::to_string(bad_var) + "] / accum[" +
             std::to_string(bad_accum) + "]");
  Record(Identical(vars[0], vars[1]) && Identical(accums[0], accums[1]),
         name + ": two runs differ");
}

// Rows shorter than, equal to and longer than a warp, and not a multiple.
template <typename T>
void CheckRowwise(std::mt19937_64& rng) {
  for (const int64_t row_size : {1, 5, 32, 33, 64, 100, 1000}) {
    CheckRowwiseDense<T>(0, row_size, rng);
    CheckRowwiseDense<T>(1, row_size, rng);
    CheckRowwiseDense<T>((int64_t{1} << 20) / row_size | 1, row_size, rng);
    CheckRowwiseSparse<T, int32_t>(10, row_size, 0, IndexPattern::kUniform,
                                   rng);
    CheckRowwiseSparse<T, int32_t>(5, row_size, 7, IndexPattern::kFewRows, rng);
    CheckRowwiseSparse<T, int64_t>(3000, row_size, 999, IndexPattern::kUniform,
                                   rng);
    CheckRowwiseSparse<T, int64_t>(2000, row_size,
                                   (int64_t{1} << 20) / row_size | 1,
                                   IndexPattern::kZipf, rng);
  }
}

// ---------------------------------------------- 16-bit weights' storage ---

// 16-bit weights with float32 elementwise accumulators (rounded to nearest)
// and with stochastic rounding (elementwise with either accumulator,
// rowwise), the GPU's per-element random bits against the CPU's buffered
// ones with the same key: dense aligned and misaligned (every array by one
// element; or only the float32 accumulator by 16 bytes, which a 16-byte
// check would wrongly let through to the 32-byte packs), sparse with short
// and long runs, rows shorter and longer than a CPU stretch (512).
template <typename T>
void CheckWeightStorage(std::mt19937_64& rng) {
  std::uniform_int_distribution<size_t> odd(50000, 500000);
  for (const size_t size :
       {size_t{0}, size_t{1}, size_t{3}, size_t{7}, size_t{8}, size_t{9},
        size_t{17}, size_t{511}, size_t{513}, size_t{4097}, odd(rng) * 2 + 1,
        (size_t{1} << 22) + 5}) {
    for (const size_t offset : {size_t{0}, size_t{1}}) {
      CheckDense<T, float>(size, offset, rng);
      CheckDense<T, T>(size, offset, rng, RandomStochasticRounding(rng));
      CheckDense<T, float>(size, offset, rng, RandomStochasticRounding(rng));
    }
    CheckDense<T, float>(size, 0, rng, Nearest(), 4);
    CheckDense<T, float>(size, 0, rng, RandomStochasticRounding(rng), 4);
  }
  for (const int64_t row_size : {1, 3, 64, 1000}) {
    const int64_t large = (int64_t{1} << 20) / row_size | 1;
    CheckSparse<T, int32_t, float>(10, row_size, 0, IndexPattern::kUniform,
                                   rng);
    CheckSparse<T, int64_t, float>(3000, row_size, 999, IndexPattern::kUniform,
                                   rng);
    CheckSparse<T, int32_t, float>(std::max<int64_t>(large / 4, 1), row_size,
                                   large, IndexPattern::kZipf, rng);
    CheckSparse<T, int64_t, T>(1, row_size, 1, IndexPattern::kUniform, rng,
                               RandomStochasticRounding(rng));
    CheckSparse<T, int32_t, T>(5, row_size, 7, IndexPattern::kFewRows, rng,
                               RandomStochasticRounding(rng));
    CheckSparse<T, int64_t, float>(3000, row_size, 999, IndexPattern::kUniform,
                                   rng, RandomStochasticRounding(rng));
    CheckSparse<T, int32_t, float>(std::max<int64_t>(large / 4, 1), row_size,
                                   large, IndexPattern::kZipf, rng,
                                   RandomStochasticRounding(rng));
    CheckSparse<T, int64_t, T>(64, row_size, large / 2 | 1,
                               IndexPattern::kFewRows, rng,
                               RandomStochasticRounding(rng));
    for (const int64_t nnz : {33, 1000}) {
      CheckSparse<T, int32_t, float>(1, row_size, nnz, IndexPattern::kUniform,
                                     rng, RandomStochasticRounding(rng));
    }
  }
  for (const int64_t row_size : {1, 5, 32, 33, 100, 513, 1000}) {
    CheckRowwiseDense<T>(1, row_size, rng, RandomStochasticRounding(rng));
    CheckRowwiseDense<T>((int64_t{1} << 20) / row_size | 1, row_size, rng,
                         RandomStochasticRounding(rng));
    CheckRowwiseSparse<T, int32_t>(5, row_size, 7, IndexPattern::kFewRows, rng,
                                   RandomStochasticRounding(rng));
    CheckRowwiseSparse<T, int64_t>(3000, row_size, 999, IndexPattern::kUniform,
                                   rng, RandomStochasticRounding(rng));
    CheckRowwiseSparse<T, int64_t>(
        2000, row_size, (int64_t{1} << 20) / row_size | 1, IndexPattern::kZipf,
        rng, RandomStochasticRounding(rng));
  }
}

// ------------------------------------------------------------- timings ---

// Fills values[0, n) with values spread over [low, high) by a hash of the
// index: not zeros, and quick to make for arrays of gigabytes.
template <typename T>
__global__ void FillKernel(T* values, int64_t n, double low, double high,
                           uint64_t seed) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < n; i += stride) {
    uint64_t h = (static_cast<uint64_t>(i) + seed) * 0x9e3779b97f4a7c15ull;
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
    h ^= h >> 31;
    const double u = static_cast<double>(h >> 11) * 0x1.0p-53;
    values[i] = Arithmetic<T>::Store(
        static_cast<ComputeType<T>>(low + (high - low) * u));
  }
}

template <typename T>
void Fill(const DeviceArray<T>& array, int64_t n, double low, double high,
          std::mt19937_64& rng) {
  int blocks = 0;
  CUDA_CHECK(tf_adagrad::gpu::ResidentGridSize(FillKernel<T>, n, &blocks));
  FillKernel<T><<<blocks, tf_adagrad::gpu::kThreadsPerBlock>>>(
      array.data(), n, low, high, rng());
  CUDA_CHECK(cudaGetLastError());
}

template <typename F>
float MedianMilliseconds(F&& run, int warmup, int repeats) {
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < warmup; ++i) run();
  std::vector<float> times;
  for (int i = 0; i < repeats; ++i) {
    CUDA_CHECK(cudaEventRecord(start));
    run();
    CUDA_CHECK(cudaEventRecord(stop));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// Dense update of `bytes`-sized arrays, as GB/s of memory traffic (three
// arrays read, two written) and as a share of a device-to-device copy of the
// same size (one read, one write).
template <typename T>
void TimeDense(size_t bytes, double copy_gbps, std::mt19937_64& rng) {
  const size_t size = bytes / sizeof(T);
  DeviceArray<T> var(size), accum(size), grad(size);
  Fill(var, size, -1.0, 1.0, rng);
  Fill(accum, size, 0.0, 4.0, rng);
  Fill(grad, size, -2.0, 2.0, rng);
  const Hyperparameters<T> h = RandomHyperparameters<T>(rng);
  const float ms = MedianMilliseconds(
      [&] {
        CUDA_CHECK(h.WithStep([&](const auto& step) {
          return tf_adagrad::gpu::LaunchAdagradDense(
              var.data(), accum.data(), grad.data(), step,
              tf_adagrad::WeightRounding{}, static_cast<int64_t>(size),
              cudaStream_t{0});
        }));
      },
      3, 20);
  const double gbps = 5.0 * size * sizeof(T) / (ms * 1e6);
  std::printf(
      "RESULT dense %-8s %zu elements: %.3f ms, %.0f GB/s = %.1f%% of the "
      "copy\n",
      TypeName<T>::value, size, ms, gbps, 100.0 * gbps / copy_gbps);
}

// One sparse step as the op runs it: index check (with its wait for the
// device), workspace plan, sort and update, then a wait for the result.
template <typename Index>
void TimeSparse(std::mt19937_64& rng) {
  const int64_t num_rows = int64_t{1} << 20, row_size = 64, nnz = 8192;
  DeviceArray<float> var(num_rows * row_size), accum(num_rows * row_size),
      grad(nnz * row_size);
  DeviceArray<Index> indices(nnz);
  DeviceArray<unsigned long long> scratch(1);
  Fill(var, num_rows * row_size, -1.0, 1.0, rng);
  Fill(accum, num_rows * row_size, 0.0, 4.0, rng);
  Fill(grad, nnz * row_size, -2.0, 2.0, rng);
  const std::vector<Index> host_indices =
      RandomIndices<Index>(nnz, num_rows, IndexPattern::kZipf, rng);
  indices.CopyFrom(host_indices);
  tf_adagrad::gpu::SparseWorkspace plan;
  CUDA_CHECK(tf_adagrad::gpu::PlanSparseWorkspace<Index>(nnz, num_rows, &plan));
  DeviceArray<char> workspace(plan.total_bytes);
  const tf_adagrad::AdagradStep<float, EpsilonPlacement::kInsideSqrt> adagrad{
      0.01f, 1e-7f};
  const auto step = [&] {
    int64_t bad_position = -1, bad_index = 0;
    CUDA_CHECK(tf_adagrad::gpu::FindFirstOutOfRangeIndex(
        indices.data(), nnz, num_rows, scratch.data(), &bad_position,
        &bad_index, cudaStream_t{0}));
    tf_adagrad::gpu::SparseWorkspace step_plan;
    CUDA_CHECK(
        tf_adagrad::gpu::PlanSparseWorkspace<Index>(nnz, num_rows, &step_plan));
    CUDA_CHECK(tf_adagrad::gpu::LaunchAdagradSparse(
        var.data(), accum.data(), grad.data(), indices.data(), nnz, row_size,
        adagrad, tf_adagrad::WeightRounding{}, step_plan, workspace.data(),
        cudaStream_t{0}));
    CUDA_CHECK(cudaDeviceSynchronize());
  };
  for (int i = 0; i < 5; ++i) step();
  std::vector<double> times;
  for (int i = 0; i < 50; ++i) {
    const auto start = std::chrono::steady_clock::now();
    step();
    times.push_back(std::chrono::duration<double, std::micro>(
                        std::chrono::steady_clock::now() - start)
                        .count());
  }
  std::sort(times.begin(), times.end());
  const float sort_ms = MedianMilliseconds(
      [&] {
        CUDA_CHECK(tf_adagrad::gpu::SortIndices(
            indices.data(), nnz, plan, workspace.data(), cudaStream_t{0}));
      },
      5, 50);
  const float update_ms = MedianMilliseconds(
      [&] {
        CUDA_CHECK((tf_adagrad::gpu::UpdateSortedRows<float, float, Index>(
            var.data(), accum.data(), grad.data(), nnz, row_size, adagrad,
            tf_adagrad::WeightRounding{}, plan, workspace.data(),
            cudaStream_t{0})));
      },
      5, 50);
  std::vector<Index> sorted = host_indices;
  std::sort(sorted.begin(), sorted.end());
  int64_t longest_run = 0;
  for (auto run = sorted.begin(); run != sorted.end();) {
    const auto next = std::upper_bound(run, sorted.end(), *run);
    longest_run = std::max<int64_t>(longest_run, next - run);
    run = next;
  }
  const int64_t unique =
      std::unique(sorted.begin(), sorted.end()) - sorted.begin();
  std::printf(
      "RESULT sparse float32 1048576x64, 8192 zipf(1.1) %s indices (%" PRId64
      " unique, longest run %" PRId64
      "): %.1f us per step (index check and "
      "its wait, sort, update, wait); sort alone %.1f us, update alone %.1f "
      "us\n",
      TypeName<Index>::value, unique, longest_run, times[times.size() / 2],
      sort_ms * 1e3, update_ms * 1e3);
}

}  // namespace

// ------------------------------------------- weight decay, moving average ---

// Both weight decay kernels against the CPU loops: every element of a
// num_rows x row_size variable, then the rows of nnz indices (repeats
// decay once), twice on the GPU.
template <typename T, typename Index>
void CheckWeightDecay(int64_t num_rows, int64_t row_size, int64_t nnz,
                      IndexPattern pattern, std::mt19937_64& rng) {
  const std::vector<T> var =
      RandomValues<T>(num_rows * row_size, -1.0, 1.0, true, rng);
  const std::vector<Index> indices =
      num_rows > 0 ? RandomIndices<Index>(nnz, num_rows, pattern, rng)
                   : std::vector<Index>();
  const tf_adagrad::WeightDecayStep<ComputeType<T>> step{Arithmetic<T>::Load(
      FromDouble<T>(std::uniform_real_distribution<double>(1e-4, 0.5)(rng)))};
  std::vector<T> want_all = var, want_rows = var;
  tf_adagrad::WeightDecayRange(want_all.data(), step, 0,
                               static_cast<int64_t>(var.size()));
  if (!indices.empty() && row_size > 0) {
    const tf_adagrad::RowGroups groups = tf_adagrad::GroupRowsByIndex(
        indices.data(), static_cast<int64_t>(indices.size()), num_rows);
    tf_adagrad::WeightDecayRows(want_rows.data(), indices.data(), groups,
                                row_size, step, 0, groups.num_unique());
  }
  const std::string name =
      std::string("weight decay ") + TypeName<T>::value + "/" +
      TypeName<Index>::value + " " + std::to_string(num_rows) + "x" +
      std::to_string(row_size) + ", " + std::to_string(indices.size()) + " " +
      PatternName(pattern) + " indices";
  std::vector<std::vector<T>> all(2), rows(2);
  for (int run = 0; run < 2; ++run) {
    DeviceArray<T> d_var(var.size());
    d_var.CopyFrom(var);
    CUDA_CHECK(tf_adagrad::gpu::LaunchWeightDecay(
        d_var.data(), step, static_cast<int64_t>(var.size()), cudaStream_t{0}));
    CUDA_CHECK(cudaDeviceSynchronize());
    all[run] = d_var.CopyOut(var.size());
    d_var.CopyFrom(var);
    DeviceArray<Index> d_indices(indices.size());
    d_indices.CopyFrom(indices);
    const int64_t n = static_cast<int64_t>(indices.size());
    if (n > 0) {
      tf_adagrad::gpu::SparseWorkspace plan;
      CUDA_CHECK(
          tf_adagrad::gpu::PlanSparseWorkspace<Index>(n, num_rows, &plan));
      DeviceArray<char> workspace(plan.total_bytes);
      CUDA_CHECK(tf_adagrad::gpu::LaunchWeightDecayRows(
          d_var.data(), d_indices.data(), n, row_size, step, plan,
          workspace.data(), cudaStream_t{0}));
      CUDA_CHECK(cudaDeviceSynchronize());
    }
    rows[run] = d_var.CopyOut(var.size());
  }
  Record(FirstDifference(all[0], want_all) < 0,
         name + ": every element differs from the CPU at " +
             std::to_string(FirstDifference(all[0], want_all)));
  Record(FirstDifference(rows[0], want_rows) < 0,
         name + ": rows differ from the CPU at " +
             std::to_string(FirstDifference(rows[0], want_rows)));
  Record(Identical(all[0], all[1]) && Identical(rows[0], rows[1]),
         name + ": two runs differ");
}

// The lazy moving average of rows against the CPU loop: rows behind by 0 to
// 40 steps (0: kept as they are), repeated indices, twice on the GPU.
template <typename T, typename Index>
void CheckMovingAverageRows(int64_t num_rows, int64_t row_size, int64_t nnz,
                            IndexPattern pattern, std::mt19937_64& rng) {
  const std::vector<T> var =
      RandomValues<T>(num_rows * row_size, -1.0, 1.0, true, rng);
  const std::vector<T> average =
      RandomValues<T>(num_rows * row_size, -1.0, 1.0, false, rng);
  std::vector<int64_t> last_step(num_rows);
  std::uniform_int_distribution<int64_t> behind(0, 40);
  const int64_t step = 1000;
  for (auto& s : last_step) s = step - behind(rng);
  const std::vector<Index> indices =
      RandomIndices<Index>(nnz, num_rows, pattern, rng);
  const double momentum =
      std::uniform_real_distribution<double>(0.5, 0.999)(rng);
  std::vector<T> want_average = average;
  std::vector<int64_t> want_last = last_step;
  if (nnz > 0 && row_size > 0) {
    const tf_adagrad::RowGroups groups =
        tf_adagrad::GroupRowsByIndex(indices.data(), nnz, num_rows);
    tf_adagrad::MovingAverageRows(want_average.data(), want_last.data(),
                                  var.data(), indices.data(), groups, row_size,
                                  momentum, step, 0, groups.num_unique());
  }
  const std::string name =
      std::string("moving average ") + TypeName<T>::value + "/" +
      TypeName<Index>::value + " " + std::to_string(num_rows) + "x" +
      std::to_string(row_size) + ", " + std::to_string(nnz) + " " +
      PatternName(pattern) + " indices";
  std::vector<std::vector<T>> got(2);
  std::vector<std::vector<int64_t>> got_last(2);
  for (int run = 0; run < 2; ++run) {
    DeviceArray<T> d_average(average.size()), d_var(var.size());
    DeviceArray<int64_t> d_last(last_step.size());
    DeviceArray<Index> d_indices(indices.size());
    d_average.CopyFrom(average);
    d_var.CopyFrom(var);
    d_last.CopyFrom(last_step);
    d_indices.CopyFrom(indices);
    if (nnz > 0 && row_size > 0) {
      tf_adagrad::gpu::SparseWorkspace plan;
      CUDA_CHECK(
          tf_adagrad::gpu::PlanSparseWorkspace<Index>(nnz, num_rows, &plan));
      DeviceArray<char> workspace(plan.total_bytes);
      CUDA_CHECK(tf_adagrad::gpu::LaunchMovingAverageRows(
          d_average.data(), d_last.data(), d_var.data(), d_indices.data(), nnz,
          row_size, momentum, step, plan, workspace.data(), cudaStream_t{0}));
      CUDA_CHECK(cudaDeviceSynchronize());
    }
    got[run] = d_average.CopyOut(average.size());
    got_last[run] = d_last.CopyOut(last_step.size());
  }
  Record(FirstDifference(got[0], want_average) < 0 && got_last[0] == want_last,
         name + ": differs from the CPU at average[" +
             std::to_string(FirstDifference(got[0], want_average)) + "]");
  Record(Identical(got[0], got[1]) && got_last[0] == got_last[1],
         name + ": two runs differ");

  // Every row, from the same start.
  std::vector<T> want_all = average;
  std::vector<int64_t> want_all_last = last_step;
  tf_adagrad::MovingAverageAllRows(want_all.data(), want_all_last.data(),
                                   var.data(), row_size, momentum, step, 0,
                                   num_rows);
  DeviceArray<T> d_average(average.size()), d_var(var.size());
  DeviceArray<int64_t> d_last(last_step.size());
  d_average.CopyFrom(average);
  d_var.CopyFrom(var);
  d_last.CopyFrom(last_step);
  CUDA_CHECK(tf_adagrad::gpu::LaunchMovingAverageAllRows(
      d_average.data(), d_last.data(), d_var.data(), num_rows, row_size,
      momentum, step, cudaStream_t{0}));
  CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<T> all = d_average.CopyOut(average.size());
  Record(FirstDifference(all, want_all) < 0 &&
             d_last.CopyOut(last_step.size()) == want_all_last,
         name + ", every row: differs from the CPU at average[" +
             std::to_string(FirstDifference(all, want_all)) + "]");
}

template <typename T>
void CheckDecayAndAverage(std::mt19937_64& rng) {
  for (const IndexPattern pattern :
       {IndexPattern::kUniform, IndexPattern::kFewRows, IndexPattern::kZipf}) {
    CheckWeightDecay<T, int32_t>(1000, 7, 300, pattern, rng);
    CheckWeightDecay<T, int64_t>(4096, 64, 5000, pattern, rng);
    CheckMovingAverageRows<T, int32_t>(1000, 7, 300, pattern, rng);
    CheckMovingAverageRows<T, int64_t>(4096, 64, 5000, pattern, rng);
  }
  CheckWeightDecay<T, int64_t>(0, 3, 0, IndexPattern::kUniform, rng);
  CheckWeightDecay<T, int64_t>(5, 0, 4, IndexPattern::kUniform, rng);
  CheckMovingAverageRows<T, int64_t>(5, 3, 0, IndexPattern::kUniform, rng);
}

int main(int argc, char** argv) {
  int device_count = 0;
  const cudaError_t device_error = cudaGetDeviceCount(&device_count);
  if (device_error != cudaSuccess || device_count == 0) {
    std::printf("no CUDA device: %s\n", device_error != cudaSuccess
                                            ? cudaGetErrorString(device_error)
                                            : "none found");
    return 77;
  }
  cudaDeviceProp props;
  CUDA_CHECK(cudaGetDeviceProperties(&props, 0));
  const uint64_t seed =
      argc > 1 ? std::strtoull(argv[1], nullptr, 10) : std::random_device{}();
  std::printf(
      "RESULT device: %s, sm_%d%d, %d multiprocessors; seed %" PRIu64 "\n",
      props.name, props.major, props.minor, props.multiProcessorCount, seed);
  std::mt19937_64 rng(seed);

  CheckType<Float16>(rng);
  CheckType<BFloat16>(rng);
  CheckType<float>(rng);
  CheckType<double>(rng);
  CheckRowwise<Float16>(rng);
  CheckRowwise<BFloat16>(rng);
  CheckRowwise<float>(rng);
  CheckRowwise<double>(rng);
  CheckWeightStorage<Float16>(rng);
  CheckWeightStorage<BFloat16>(rng);
  CheckDecayAndAverage<Float16>(rng);
  CheckDecayAndAverage<BFloat16>(rng);
  CheckDecayAndAverage<float>(rng);
  CheckDecayAndAverage<double>(rng);
  for (const int planted : {0, 1, 3, 100}) {
    for (const int64_t nnz : {1, 2, 1000, 100001}) {
      if (planted > nnz) continue;
      CheckOutOfRange<int32_t>(5000, nnz, planted, rng);
      CheckOutOfRange<int64_t>(5000, nnz, planted, rng);
    }
  }
  // No rows at all: every index is out of range.
  CheckOutOfRange<int64_t>(0, 3, 0, rng);
  std::printf("RESULT correctness: %d checks passed, %d failed\n",
              checks_passed, checks_failed);

  // Arrays of 1 GiB each (or less on a small card): well past the L2.
  size_t free_bytes = 0, total_bytes = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const size_t bytes = std::min<size_t>(size_t{1} << 30, free_bytes / 8);
  DeviceArray<char> from(bytes), to(bytes);
  CUDA_CHECK(cudaMemset(from.data(), 1, bytes));
  const float copy_ms = MedianMilliseconds(
      [&] {
        CUDA_CHECK(cudaMemcpyAsync(to.data(), from.data(), bytes,
                                   cudaMemcpyDeviceToDevice, cudaStream_t{0}));
      },
      3, 20);
  const double copy_gbps = 2.0 * bytes / (copy_ms * 1e6);
  std::printf("RESULT copy %zu bytes: %.3f ms, %.0f GB/s (read + write)\n",
              bytes, copy_ms, copy_gbps);
  TimeDense<float>(bytes, copy_gbps, rng);
  TimeDense<double>(bytes, copy_gbps, rng);
  TimeDense<Float16>(bytes, copy_gbps, rng);
  TimeDense<BFloat16>(bytes, copy_gbps, rng);
  TimeSparse<int64_t>(rng);
  TimeSparse<int32_t>(rng);

  std::printf("%d passed, %d failed\n", checks_passed, checks_failed);
  return checks_failed == 0 ? 0 : 1;
}
