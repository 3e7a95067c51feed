// The Adagrad update on raw pointers: plain C++, no TensorFlow, no Eigen, so
// that the math can be tested (and sanitized) on its own.
//
// Keras 3's formula, epsilon inside the square root:
//   accum += g * g
//   var   -= lr * g / sqrt(accum + epsilon)
// 16-bit types are widened to float32, computed, and rounded once on store.
//
// The conversions and the element update are also compiled for the GPU
// (kernels/adagrad_gpu.cuh), so both devices share one definition of the
// math.
#ifndef TF_ADAGRAD_KERNELS_ADAGRAD_MATH_H_
#define TF_ADAGRAD_KERNELS_ADAGRAD_MATH_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

// x86 paths are host code: a CUDA compiler's device pass has no x86 target.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDA_ARCH__)
#define TF_ADAGRAD_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

#if defined(__CUDACC__)
#define TF_ADAGRAD_HOST_DEVICE __host__ __device__
#else
#define TF_ADAGRAD_HOST_DEVICE
#endif

namespace tf_adagrad {

// IEEE binary16 and bfloat16 as raw bits; same layout as Eigen::half and
// Eigen::bfloat16, which the TensorFlow glue reinterprets into these.
struct Float16 {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

TF_ADAGRAD_HOST_DEVICE inline float BitsToFloat(uint32_t bits) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

TF_ADAGRAD_HOST_DEVICE inline uint32_t FloatToBits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
#endif
}

// Leading zero bits of a nonzero x.
TF_ADAGRAD_HOST_DEVICE inline int CountLeadingZeros(uint32_t x) {
#ifdef __CUDA_ARCH__
  return __clz(static_cast<int>(x));
#else
  return __builtin_clz(x);
#endif
}

// Integer-only conversions: TensorFlow runs CPU kernels with denormals
// flushed to zero, so float arithmetic tricks would lose half subnormals.
TF_ADAGRAD_HOST_DEVICE inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) {  // inf / nan
    return BitsToFloat(sign | 0x7f800000u | (mantissa << 13));
  }
  if (exponent != 0) {  // normal
    return BitsToFloat(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  }
  if (mantissa == 0) return BitsToFloat(sign);  // signed zero
  // Subnormal: shift the leading one up to bit 10 to normalize.
  const int shift = CountLeadingZeros(mantissa) - 21;
  mantissa = (mantissa << shift) & 0x3ffu;
  return BitsToFloat(sign | ((113u - shift) << 23) | (mantissa << 13));
}

// Round to nearest even, with overflow to inf and gradual underflow.
TF_ADAGRAD_HOST_DEVICE inline uint16_t FloatToHalf(float f) {
  const uint32_t x = FloatToBits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t magnitude = x & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) {  // inf / nan (nan stays quiet)
    const uint16_t nan_bits =
        magnitude > 0x7f800000u ? (0x200u | ((magnitude >> 13) & 0x3ffu)) : 0;
    return sign | 0x7c00u | nan_bits;
  }
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 -> inf
  if (magnitude >= 0x38800000u) {                       // normal half
    uint32_t rebiased = magnitude - (112u << 23);
    rebiased += 0xfffu + ((rebiased >> 13) & 1u);
    return sign | static_cast<uint16_t>(rebiased >> 13);
  }
  if (magnitude < 0x33000000u) return sign;  // < 2^-25: rounds to zero
  // Half subnormal: the result counts units of 2^-24.
  const uint32_t exponent = magnitude >> 23;
  const uint32_t significand = (magnitude & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - exponent;  // in [14, 24]
  uint32_t result = significand >> shift;
  const uint32_t remainder = significand & ((1u << shift) - 1u);
  const uint32_t halfway = 1u << (shift - 1);
  if (remainder > halfway || (remainder == halfway && (result & 1u))) ++result;
  return sign | static_cast<uint16_t>(result);
}

TF_ADAGRAD_HOST_DEVICE inline float BFloat16ToFloat(uint16_t b) {
  return BitsToFloat(static_cast<uint32_t>(b) << 16);
}

// Round to nearest even; a nan stays a quiet nan. Written as a select, not
// a branch, so that loops over it vectorize.
TF_ADAGRAD_HOST_DEVICE inline uint16_t FloatToBFloat16(float f) {
  const uint32_t x = FloatToBits(f);
  const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (x >> 16) | 0x40u;
  return static_cast<uint16_t>((x & 0x7fffffffu) > 0x7f800000u ? quiet_nan
                                                                : rounded);
}

// How a storage type is read into, and written from, its compute type.
template <typename T>
struct Arithmetic {
  using Compute = T;  // float and double compute in themselves
  TF_ADAGRAD_HOST_DEVICE static Compute Load(T x) { return x; }
  TF_ADAGRAD_HOST_DEVICE static T Store(Compute x) { return x; }
};

template <>
struct Arithmetic<Float16> {
  using Compute = float;
  TF_ADAGRAD_HOST_DEVICE static float Load(Float16 x) {
    return HalfToFloat(x.bits);
  }
  TF_ADAGRAD_HOST_DEVICE static Float16 Store(float x) {
    return Float16{FloatToHalf(x)};
  }
};

template <>
struct Arithmetic<BFloat16> {
  using Compute = float;
  TF_ADAGRAD_HOST_DEVICE static float Load(BFloat16 x) {
    return BFloat16ToFloat(x.bits);
  }
  TF_ADAGRAD_HOST_DEVICE static BFloat16 Store(float x) {
    return BFloat16{FloatToBFloat16(x)};
  }
};

template <typename T>
using ComputeType = typename Arithmetic<T>::Compute;

// IEEE square root on both devices: in device code std::sqrt(float) may
// compile to an approximation (clang does that), so the GPU asks for the
// correctly rounded instruction by name.
TF_ADAGRAD_HOST_DEVICE inline float CorrectlyRoundedSqrt(float x) {
#ifdef __CUDA_ARCH__
  return __fsqrt_rn(x);
#else
  return std::sqrt(x);
#endif
}

TF_ADAGRAD_HOST_DEVICE inline double CorrectlyRoundedSqrt(double x) {
#ifdef __CUDA_ARCH__
  return __dsqrt_rn(x);
#else
  return std::sqrt(x);
#endif
}

// One element of the update, in the compute type. Same operation order as
// Keras 3 (`lr * g / sqrt(accum + epsilon)`), so float32 results are
// bit-identical to keras.optimizers.Adagrad's.
template <typename C>
TF_ADAGRAD_HOST_DEVICE inline void UpdateElement(C lr, C epsilon, C grad,
                                                 C* var, C* accum) {
  *accum += grad * grad;
  *var -= lr * grad / CorrectlyRoundedSqrt(*accum + epsilon);
}

// Dense update of elements [begin, end): a single pass that reads var, accum
// and grad once and writes var and accum once. Always inlined, so each
// instruction-set variant below vectorizes it for its own vector width (float,
// double and bfloat16, whose conversions are integer shifts and selects).
template <typename T>
__attribute__((always_inline)) inline void AdagradDenseLoop(
    T* var, T* accum, const T* grad, ComputeType<T> lr, ComputeType<T> epsilon,
    int64_t begin, int64_t end) {
  using A = Arithmetic<T>;
  for (int64_t i = begin; i < end; ++i) {
    ComputeType<T> v = A::Load(var[i]);
    ComputeType<T> a = A::Load(accum[i]);
    UpdateElement(lr, epsilon, A::Load(grad[i]), &v, &a);
    accum[i] = A::Store(a);
    var[i] = A::Store(v);
  }
}

// The baseline variant: SSE2 on x86-64; also the tests' reference.
template <typename T>
void AdagradDenseRangeScalar(T* var, T* accum, const T* grad,
                             ComputeType<T> lr, ComputeType<T> epsilon,
                             int64_t begin, int64_t end) {
  AdagradDenseLoop(var, accum, grad, lr, epsilon, begin, end);
}

#ifdef TF_ADAGRAD_X86
// The same loop compiled for AVX2 and for AVX-512, chosen at run time by
// what the CPU has (the library still runs on any x86-64). No FMA (the build
// has -ffp-contract=off), and vector sqrt and divide are IEEE, so every
// variant gives the baseline's bits.
template <typename T>
__attribute__((target("avx2"))) void AdagradDenseRangeAvx2(
    T* var, T* accum, const T* grad, ComputeType<T> lr, ComputeType<T> epsilon,
    int64_t begin, int64_t end) {
  AdagradDenseLoop(var, accum, grad, lr, epsilon, begin, end);
}

template <typename T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void
AdagradDenseRangeAvx512(T* var, T* accum, const T* grad, ComputeType<T> lr,
                        ComputeType<T> epsilon, int64_t begin, int64_t end) {
  AdagradDenseLoop(var, accum, grad, lr, epsilon, begin, end);
}

enum class VectorIsa { kBaseline, kAvx2, kAvx512 };

// The widest variant this CPU runs. __builtin_cpu_supports also checks that
// the OS saves the registers' state.
inline VectorIsa CpuVectorIsa() {
  static const VectorIsa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl")) {
      return VectorIsa::kAvx512;
    }
    return __builtin_cpu_supports("avx2") ? VectorIsa::kAvx2
                                          : VectorIsa::kBaseline;
  }();
  return isa;
}

template <typename T>
void AdagradDenseRange(T* var, T* accum, const T* grad, ComputeType<T> lr,
                       ComputeType<T> epsilon, int64_t begin, int64_t end) {
  switch (CpuVectorIsa()) {
    case VectorIsa::kAvx512:
      return AdagradDenseRangeAvx512(var, accum, grad, lr, epsilon, begin, end);
    case VectorIsa::kAvx2:
      return AdagradDenseRangeAvx2(var, accum, grad, lr, epsilon, begin, end);
    case VectorIsa::kBaseline:
      break;
  }
  AdagradDenseRangeScalar(var, accum, grad, lr, epsilon, begin, end);
}
#else
template <typename T>
void AdagradDenseRange(T* var, T* accum, const T* grad, ComputeType<T> lr,
                       ComputeType<T> epsilon, int64_t begin, int64_t end) {
  AdagradDenseRangeScalar(var, accum, grad, lr, epsilon, begin, end);
}
#endif  // TF_ADAGRAD_X86

#ifdef TF_ADAGRAD_X86
// float16 through the F16C conversion instructions, 8 lanes at a time, when
// the CPU has them (checked at run time; the library still runs on any
// x86-64). Same operations and order as UpdateElement, no FMA, and the
// conversions round to nearest even like FloatToHalf.
__attribute__((target("avx,f16c"))) inline __m256 LoadHalf8(const Float16* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

__attribute__((target("avx,f16c"))) inline void StoreHalf8(Float16* p,
                                                           __m256 x) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
}

__attribute__((target("avx,f16c"))) inline void AdagradDenseRangeHalfF16C(
    Float16* var, Float16* accum, const Float16* grad, float lr,
    float epsilon, int64_t begin, int64_t end) {
  const __m256 lr8 = _mm256_set1_ps(lr);
  const __m256 epsilon8 = _mm256_set1_ps(epsilon);
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256 g = LoadHalf8(grad + i);
    const __m256 a = _mm256_add_ps(LoadHalf8(accum + i), _mm256_mul_ps(g, g));
    const __m256 step = _mm256_div_ps(_mm256_mul_ps(lr8, g),
                                      _mm256_sqrt_ps(_mm256_add_ps(a, epsilon8)));
    const __m256 v = _mm256_sub_ps(LoadHalf8(var + i), step);
    StoreHalf8(accum + i, a);
    StoreHalf8(var + i, v);
  }
  AdagradDenseRangeScalar(var, accum, grad, lr, epsilon, i, end);
}

// __builtin_cpu_supports("avx") also checks that the OS saves AVX state;
// F16C comes from CPUID itself, which clang's builtin cannot name.
inline bool CpuHasF16C() {
  static const bool has_f16c = [] {
    unsigned eax, ebx, ecx, edx;
    return __builtin_cpu_supports("avx") &&
           __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
  }();
  return has_f16c;
}

inline void AdagradDenseRange(Float16* var, Float16* accum,
                              const Float16* grad, float lr, float epsilon,
                              int64_t begin, int64_t end) {
  if (CpuHasF16C()) {
    AdagradDenseRangeHalfF16C(var, accum, grad, lr, epsilon, begin, end);
  } else {
    AdagradDenseRangeScalar(var, accum, grad, lr, epsilon, begin, end);
  }
}
#endif  // TF_ADAGRAD_X86

// One variable of a multi-tensor dense update: var, accum and grad of `size`
// elements each.
template <typename T>
struct DenseTensors {
  T* var;
  T* accum;
  const T* grad;
  int64_t size;
};

// Elements [begin, end) of the concatenation of `num_tensors` tensors, where
// `starts[i]` is the offset of tensor i in it (`starts` has num_tensors + 1
// entries, the last the total). The work is split by elements, not by
// tensor, so a range may cover the end of one tensor and the start of the
// next; empty tensors are skipped.
template <typename T>
void AdagradDenseMultiRange(const DenseTensors<T>* tensors,
                            const int64_t* starts, int64_t num_tensors,
                            ComputeType<T> lr, ComputeType<T> epsilon,
                            int64_t begin, int64_t end) {
  int64_t t =
      std::upper_bound(starts, starts + num_tensors + 1, begin) - starts - 1;
  while (begin < end && t < num_tensors) {
    const int64_t stop = std::min(end, starts[t + 1]);
    if (stop > begin) {
      AdagradDenseRange(tensors[t].var, tensors[t].accum, tensors[t].grad, lr,
                        epsilon, begin - starts[t], stop - starts[t]);
    }
    begin = stop;
    ++t;
  }
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
RowGroups GroupRowsByIndex(const Index* indices, int64_t nnz,
                           int64_t num_rows, int64_t num_chunks = 1,
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
  num_chunks = std::max<int64_t>(
      1, std::min(num_chunks, nnz / kMinKeysPerSortChunk));
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

// Sparse update of unique rows [begin, end) of `groups`. Each row's
// gradient is the sum of its duplicate rows (in position order, in the
// compute type), then the row is updated once, as the dense update would.
// `scratch` holds at least `row_size` compute-type values. Always inlined
// into one variant per instruction set, like the dense loop.
template <typename T, typename Index>
__attribute__((always_inline)) inline void AdagradSparseRowsLoop(
    T* var, T* accum, const T* grad, const Index* indices,
    const RowGroups& groups, int64_t row_size, ComputeType<T> lr,
    ComputeType<T> epsilon, int64_t begin, int64_t end,
    ComputeType<T>* scratch) {
  using A = Arithmetic<T>;
  using C = ComputeType<T>;
  const int64_t* positions = groups.positions.data();
  const int64_t* run_starts = groups.run_starts.data();
  for (int64_t u = begin; u < end; ++u) {
    const int64_t first = run_starts[u];
    const int64_t last = run_starts[u + 1];
    const int64_t row = static_cast<int64_t>(indices[positions[first]]);
    T* var_row = var + row * row_size;
    T* accum_row = accum + row * row_size;
    const T* grad_row = grad + positions[first] * row_size;
    if (last - first == 1) {
      if constexpr (std::is_same_v<T, Float16>) {
        AdagradDenseRange(var_row, accum_row, grad_row, lr, epsilon, 0,
                          row_size);  // F16C where the CPU has it
      } else {
        AdagradDenseLoop(var_row, accum_row, grad_row, lr, epsilon, 0,
                         row_size);
      }
      continue;
    }
    for (int64_t j = 0; j < row_size; ++j) scratch[j] = A::Load(grad_row[j]);
    for (int64_t k = first + 1; k < last; ++k) {
      const T* dup_row = grad + positions[k] * row_size;
      for (int64_t j = 0; j < row_size; ++j) scratch[j] += A::Load(dup_row[j]);
    }
    for (int64_t j = 0; j < row_size; ++j) {
      C v = A::Load(var_row[j]);
      C a = A::Load(accum_row[j]);
      UpdateElement(lr, epsilon, scratch[j], &v, &a);
      accum_row[j] = A::Store(a);
      var_row[j] = A::Store(v);
    }
  }
}

template <typename T, typename Index>
void AdagradSparseRowsScalar(T* var, T* accum, const T* grad,
                             const Index* indices, const RowGroups& groups,
                             int64_t row_size, ComputeType<T> lr,
                             ComputeType<T> epsilon, int64_t begin,
                             int64_t end, ComputeType<T>* scratch) {
  AdagradSparseRowsLoop(var, accum, grad, indices, groups, row_size, lr,
                        epsilon, begin, end, scratch);
}

#ifdef TF_ADAGRAD_X86
template <typename T, typename Index>
__attribute__((target("avx2"))) void AdagradSparseRowsAvx2(
    T* var, T* accum, const T* grad, const Index* indices,
    const RowGroups& groups, int64_t row_size, ComputeType<T> lr,
    ComputeType<T> epsilon, int64_t begin, int64_t end,
    ComputeType<T>* scratch) {
  AdagradSparseRowsLoop(var, accum, grad, indices, groups, row_size, lr,
                        epsilon, begin, end, scratch);
}

template <typename T, typename Index>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void
AdagradSparseRowsAvx512(T* var, T* accum, const T* grad, const Index* indices,
                        const RowGroups& groups, int64_t row_size,
                        ComputeType<T> lr, ComputeType<T> epsilon,
                        int64_t begin, int64_t end, ComputeType<T>* scratch) {
  AdagradSparseRowsLoop(var, accum, grad, indices, groups, row_size, lr,
                        epsilon, begin, end, scratch);
}
#endif  // TF_ADAGRAD_X86

template <typename T, typename Index>
void AdagradSparseRows(T* var, T* accum, const T* grad, const Index* indices,
                       const RowGroups& groups, int64_t row_size,
                       ComputeType<T> lr, ComputeType<T> epsilon,
                       int64_t begin, int64_t end, ComputeType<T>* scratch) {
#ifdef TF_ADAGRAD_X86
  switch (CpuVectorIsa()) {
    case VectorIsa::kAvx512:
      return AdagradSparseRowsAvx512(var, accum, grad, indices, groups,
                                     row_size, lr, epsilon, begin, end,
                                     scratch);
    case VectorIsa::kAvx2:
      return AdagradSparseRowsAvx2(var, accum, grad, indices, groups,
                                   row_size, lr, epsilon, begin, end, scratch);
    case VectorIsa::kBaseline:
      break;
  }
#endif  // TF_ADAGRAD_X86
  AdagradSparseRowsScalar(var, accum, grad, indices, groups, row_size, lr,
                          epsilon, begin, end, scratch);
}

}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_ADAGRAD_MATH_H_
