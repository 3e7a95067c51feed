// Stochastic rounding of float32 results to float16 and bfloat16, shared by
// the CPU loops and the CUDA kernels. A value between two neighbouring
// 16-bit numbers is stored as the upper one with probability equal to its
// distance from the lower one, in units of their spacing, so the expected
// stored value is the float32 value itself: small updates survive on
// average instead of being rounded away.
//
// The random bits come from Philox4x32-10 (Salmon et al., "Parallel random
// numbers: as easy as 1, 2, 3", 2011), a counter-based generator: element
// `position` of a table at step `step` draws from the block
// Philox(counter = (position / 8, step), key = seed), 16 bits per element.
// A result therefore depends only on (seed, step, position): not on the
// thread count, the order of the work, or the device.
//
// Also the two ways the update loops store a new weight: RoundToNearest
// (IEEE round to nearest even, the default) and StochasticRounding.
#ifndef TF_ADAGRAD_KERNELS_STOCHASTIC_ROUNDING_H_
#define TF_ADAGRAD_KERNELS_STOCHASTIC_ROUNDING_H_

#include <cstdint>
#include <type_traits>

#include "kernels/half_types.h"
#include "kernels/host_device.h"

namespace tf_adagrad {

// Whether T is one of the 16-bit storage types, the only ones with a
// stochastic rounding.
template <typename T>
constexpr bool kIsHalfType =
    std::is_same_v<T, Float16> || std::is_same_v<T, BFloat16>;

// --------------------------------------------------------------- Philox ---

struct PhiloxBlock {
  uint32_t words[4];
};

TF_ADAGRAD_HOST_DEVICE TF_ADAGRAD_FORCE_INLINE uint32_t
HighWordOfProduct(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

// Philox4x32 with 10 rounds; the constants are Random123's.
TF_ADAGRAD_HOST_DEVICE TF_ADAGRAD_FORCE_INLINE PhiloxBlock
Philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
           uint32_t k1) {
  constexpr uint32_t kMultiplier0 = 0xD2511F53u;
  constexpr uint32_t kMultiplier1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u;
  constexpr uint32_t kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint32_t high0 = HighWordOfProduct(kMultiplier0, c0);
    const uint32_t low0 = kMultiplier0 * c0;
    const uint32_t high1 = HighWordOfProduct(kMultiplier1, c2);
    const uint32_t low1 = kMultiplier1 * c2;
    c0 = high1 ^ c1 ^ k0;
    c1 = low1;
    c2 = high0 ^ c3 ^ k1;
    c3 = low0;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return PhiloxBlock{{c0, c1, c2, c3}};
}

// What makes one update's random bits: the variable's seed and the step.
struct StochasticRoundingKey {
  uint64_t seed;
  uint64_t step;
};

// How an op stores its new weights: to nearest even, or stochastically with
// `key`.
struct WeightRounding {
  bool stochastic = false;
  StochasticRoundingKey key{};
};

// Elements that share one Philox block: 128 bits, 16 per element.
constexpr int64_t kElementsPerRandomBlock = 8;

TF_ADAGRAD_HOST_DEVICE TF_ADAGRAD_FORCE_INLINE PhiloxBlock
RandomBlock(const StochasticRoundingKey& key, uint64_t block) {
  return Philox4x32(
      static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
      static_cast<uint32_t>(key.step), static_cast<uint32_t>(key.step >> 32),
      static_cast<uint32_t>(key.seed), static_cast<uint32_t>(key.seed >> 32));
}

// The 16 random bits of element `position`: the low half of a block's word
// for even positions, the high half for odd ones.
TF_ADAGRAD_HOST_DEVICE TF_ADAGRAD_FORCE_INLINE uint16_t
RandomBitsOf(const PhiloxBlock& block, int64_t position) {
  const int lane = static_cast<int>(position % kElementsPerRandomBlock);
  return static_cast<uint16_t>(block.words[lane / 2] >> (16 * (lane % 2)));
}

TF_ADAGRAD_HOST_DEVICE inline uint16_t RandomBits(
    const StochasticRoundingKey& key, int64_t position) {
  return RandomBitsOf(RandomBlock(key, static_cast<uint64_t>(position) /
                                           kElementsPerRandomBlock),
                      position);
}

#ifdef TF_ADAGRAD_X86
// The high words of the eight 32 x 32-bit products x * m: even lanes, then
// odd ones.
__attribute__((target("avx2"))) inline __m256i HighWordsOfProductsAvx2(
    __m256i x, __m256i m) {
  const __m256i even = _mm256_mul_epu32(x, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), m);
  return _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xaa);
}

// The 64 random bits of blocks [first_block, first_block + 8) at once, one
// block per 32-bit lane of AVX2 registers: RandomBlock's words, in its
// layout (out[8 * b + 2 * w + h] is half h of word w of block b).
__attribute__((target("avx2"))) inline void EightRandomBlocksAvx2(
    const StochasticRoundingKey& key, uint64_t first_block, uint16_t* out) {
  const __m256i lanes = _mm256_setr_epi64x(0, 1, 2, 3);
  const __m256i base = _mm256_set1_epi64x(static_cast<int64_t>(first_block));
  const __m256i blocks_0_3 = _mm256_add_epi64(base, lanes);
  const __m256i blocks_4_7 =
      _mm256_add_epi64(blocks_0_3, _mm256_set1_epi64x(4));
  // Each 64-bit block number split into its low and high words.
  const __m256i split = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  const __m256i words_0_3 = _mm256_permutevar8x32_epi32(blocks_0_3, split);
  const __m256i words_4_7 = _mm256_permutevar8x32_epi32(blocks_4_7, split);
  __m256i c0 = _mm256_permute2x128_si256(words_0_3, words_4_7, 0x20);
  __m256i c1 = _mm256_permute2x128_si256(words_0_3, words_4_7, 0x31);
  __m256i c2 = _mm256_set1_epi32(static_cast<int>(key.step));
  __m256i c3 = _mm256_set1_epi32(static_cast<int>(key.step >> 32));
  uint32_t k0 = static_cast<uint32_t>(key.seed);
  uint32_t k1 = static_cast<uint32_t>(key.seed >> 32);
  const __m256i multiplier0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i multiplier1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  for (int round = 0; round < 10; ++round) {
    const __m256i high0 = HighWordsOfProductsAvx2(c0, multiplier0);
    const __m256i low0 = _mm256_mullo_epi32(c0, multiplier0);
    const __m256i high1 = HighWordsOfProductsAvx2(c2, multiplier1);
    const __m256i low1 = _mm256_mullo_epi32(c2, multiplier1);
    c0 = _mm256_xor_si256(_mm256_xor_si256(high1, c1),
                          _mm256_set1_epi32(static_cast<int>(k0)));
    c1 = low1;
    c2 = _mm256_xor_si256(_mm256_xor_si256(high0, c3),
                          _mm256_set1_epi32(static_cast<int>(k1)));
    c3 = low0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  // Transposed to one block's four words after another.
  const __m256i t0 = _mm256_unpacklo_epi32(c0, c1);
  const __m256i t1 = _mm256_unpackhi_epi32(c0, c1);
  const __m256i t2 = _mm256_unpacklo_epi32(c2, c3);
  const __m256i t3 = _mm256_unpackhi_epi32(c2, c3);
  const __m256i u0 = _mm256_unpacklo_epi64(t0, t2);
  const __m256i u1 = _mm256_unpackhi_epi64(t0, t2);
  const __m256i u2 = _mm256_unpacklo_epi64(t1, t3);
  const __m256i u3 = _mm256_unpackhi_epi64(t1, t3);
  __m256i* o = reinterpret_cast<__m256i*>(out);
  _mm256_storeu_si256(o + 0, _mm256_permute2x128_si256(u0, u1, 0x20));
  _mm256_storeu_si256(o + 1, _mm256_permute2x128_si256(u2, u3, 0x20));
  _mm256_storeu_si256(o + 2, _mm256_permute2x128_si256(u0, u1, 0x31));
  _mm256_storeu_si256(o + 3, _mm256_permute2x128_si256(u2, u3, 0x31));
}

inline bool CpuHasAvx2() {
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  return has_avx2;
}
#endif  // TF_ADAGRAD_X86

// The random bits of positions [first, first + count) into bits[0, count):
// RandomBits', computed a block (8 positions) at a time, and eight blocks at
// a time with AVX2 where the CPU has it.
inline void FillRandomBits(const StochasticRoundingKey& key, int64_t first,
                           int64_t count, uint16_t* bits) {
  int64_t i = 0;
  // Up to the first block boundary.
  for (; i < count && (first + i) % kElementsPerRandomBlock != 0; ++i) {
    bits[i] = RandomBits(key, first + i);
  }
  uint64_t block = static_cast<uint64_t>(first + i) / kElementsPerRandomBlock;
#ifdef TF_ADAGRAD_X86
  if (CpuHasAvx2()) {
    for (; i + 8 * kElementsPerRandomBlock <= count;
         i += 8 * kElementsPerRandomBlock, block += 8) {
      EightRandomBlocksAvx2(key, block, bits + i);
    }
  }
#endif  // TF_ADAGRAD_X86
  for (; i + kElementsPerRandomBlock <= count;
       i += kElementsPerRandomBlock, ++block) {
    const PhiloxBlock words = RandomBlock(key, block);
    for (int w = 0; w < 4; ++w) {
      bits[i + 2 * w] = static_cast<uint16_t>(words.words[w]);
      bits[i + 2 * w + 1] = static_cast<uint16_t>(words.words[w] >> 16);
    }
  }
  for (; i < count; ++i) bits[i] = RandomBits(key, first + i);
}

// ------------------------------------------------------------ rounding ---

// bfloat16 keeps the upper 16 bits of a float32: adding 16 uniform random
// bits to the magnitude and truncating carries into the kept bits with
// probability (discarded bits) / 2^16. Infinity stays infinity (the carry
// stays below the sign), a finite value past the largest bfloat16 may round
// to infinity, and a NaN stays a quiet NaN.
TF_ADAGRAD_HOST_DEVICE TF_ADAGRAD_FORCE_INLINE uint16_t
FloatToBFloat16Stochastic(float f, uint16_t random) {
  const uint32_t x = FloatToBits(f);
  const uint32_t rounded = (x + random) >> 16;
  const uint32_t quiet_nan = (x >> 16) | 0x40u;
  return static_cast<uint16_t>((x & 0x7fffffffu) > 0x7f800000u ? quiet_nan
                                                               : rounded);
}

// float16 drops 13 bits of a normal float16's float32 significand, more of a
// subnormal's: the random bits are added at the top of the dropped bits.
// Exactly unbiased down to 2^-17; below it, 16 random bits set the chance
// of rounding up to within 2^-16 of a float16 unit (2^-40 in value).
TF_ADAGRAD_HOST_DEVICE inline uint16_t FloatToHalfStochastic(float f,
                                                             uint16_t random) {
  const uint32_t x = FloatToBits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t magnitude = x & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) return FloatToHalf(f);  // inf / nan
  if (magnitude >= 0x38800000u) {                       // normal half
    const uint32_t rebiased = magnitude - (112u << 23) + (random >> 3);
    const uint32_t result = rebiased >> 13;
    return sign | static_cast<uint16_t>(result < 0x7c00u ? result : 0x7c00u);
  }
  const uint32_t exponent = magnitude >> 23;
  if (exponent == 0) return sign;  // a float32 subnormal: below 2^-126
  // In units of 2^-24, the float16 subnormal unit: significand >> shift.
  const uint64_t significand = (magnitude & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - exponent;  // >= 14
  if (shift >= 64) return sign;
  const uint64_t dither = shift <= 16
                              ? static_cast<uint64_t>(random) >> (16 - shift)
                              : static_cast<uint64_t>(random) << (shift - 16);
  return sign | static_cast<uint16_t>((significand + dither) >> shift);
}

template <typename T>
TF_ADAGRAD_HOST_DEVICE TF_ADAGRAD_FORCE_INLINE T
StochasticRound(float value, uint16_t random) {
  static_assert(kIsHalfType<T>, "only 16-bit types round stochastically");
  if constexpr (std::is_same_v<T, Float16>) {
    return Float16{FloatToHalfStochastic(value, random)};
  } else {
    return BFloat16{FloatToBFloat16Stochastic(value, random)};
  }
}

// How an update loop stores a new weight of type T from its compute type:
// `Store<T>(value, position)`, position being the element's index in the
// table. The CPU loops visit positions in stretches of at most kStretch
// (StretchEnd) and call `Prepare(first, count)` before each.

// IEEE round to nearest even, as `Arithmetic_` stores (Arithmetic, or the
// GPU's conversions, GpuArithmetic).
template <template <typename> class Arithmetic_>
struct RoundToNearest {
  static constexpr int64_t kStretch = INT64_MAX;
  TF_ADAGRAD_HOST_DEVICE void Prepare(int64_t, int64_t) {}
  template <typename T>
  TF_ADAGRAD_HOST_DEVICE TF_ADAGRAD_FORCE_INLINE T Store(ComputeType<T> value,
                                                         int64_t) const {
    return Arithmetic_<T>::Store(value);
  }
};

// The GPU's: each element draws its own bits (the 8 threads of a block each
// compute it; Philox is cheap next to the memory traffic).
struct StochasticRounding {
  static constexpr int64_t kStretch = INT64_MAX;
  StochasticRoundingKey key;

  TF_ADAGRAD_HOST_DEVICE void Prepare(int64_t, int64_t) {}
  template <typename T>
  TF_ADAGRAD_HOST_DEVICE TF_ADAGRAD_FORCE_INLINE T
  Store(ComputeType<T> value, int64_t position) const {
    return StochasticRound<T>(value, RandomBits(key, position));
  }
};

// The CPU's: a stretch's bits drawn first, eight blocks at a time.
struct StochasticRoundingBuffered {
  static constexpr int64_t kStretch = 512;
  StochasticRoundingKey key;
  int64_t first = 0;
  uint16_t bits[kStretch];

  explicit StochasticRoundingBuffered(const StochasticRoundingKey& k)
      : key(k) {}
  void Prepare(int64_t first_position, int64_t count) {
    first = first_position;
    FillRandomBits(key, first_position, count, bits);
  }
  template <typename T>
  TF_ADAGRAD_FORCE_INLINE T Store(ComputeType<T> value,
                                  int64_t position) const {
    return StochasticRound<T>(value, bits[position - first]);
  }
};

// The end of the stretch of positions that starts at `begin`, before `end`.
template <typename Rounding>
TF_ADAGRAD_HOST_DEVICE TF_ADAGRAD_FORCE_INLINE int64_t StretchEnd(int64_t begin,
                                                                  int64_t end) {
  return end - begin <= Rounding::kStretch ? end : begin + Rounding::kStretch;
}

}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_STOCHASTIC_ROUNDING_H_
