// float16 and bfloat16 without TensorFlow or Eigen: the raw-bit types, their
// conversions to and from float32 (integer-only, the same on the CPU and the
// GPU), how each storage type is computed in (Arithmetic), and the x86 F16C
// instructions that convert eight float16 values at once.
#ifndef TF_ADAGRAD_KERNELS_HALF_TYPES_H_
#define TF_ADAGRAD_KERNELS_HALF_TYPES_H_

#include <cstdint>
#include <cstring>

#include "kernels/host_device.h"

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

#ifdef TF_ADAGRAD_X86
// Eight float16 values to and from float32 with F16C. The conversions are
// exact widening and round-to-nearest-even narrowing, like HalfToFloat and
// FloatToHalf. Call only where CpuHasF16C().
__attribute__((target("avx,f16c"))) inline __m256 LoadHalf8(const Float16* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

__attribute__((target("avx,f16c"))) inline void StoreHalf8(Float16* p,
                                                           __m256 x) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
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
#endif  // TF_ADAGRAD_X86

}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_HALF_TYPES_H_
