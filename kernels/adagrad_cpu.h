// The Adagrad update on the CPU, on raw pointers: plain C++, no TensorFlow,
// no Eigen, so that it can be tested (and sanitized) on its own. The loops
// apply adagrad_math.h's AdagradStep; each is compiled for several
// instruction sets by cpu_dispatch.h.
#ifndef TF_ADAGRAD_KERNELS_ADAGRAD_CPU_H_
#define TF_ADAGRAD_KERNELS_ADAGRAD_CPU_H_

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/adagrad_math.h"
#include "kernels/cpu_dispatch.h"
#include "kernels/half_types.h"
#include "kernels/host_device.h"
#include "kernels/multi_tensor.h"
#include "kernels/row_grouping.h"
#include "kernels/stochastic_rounding.h"

namespace tf_adagrad {

// Whether a CPU Rounding rounds to nearest.
template <typename Rounding>
constexpr bool kRoundsToNearest =
    std::is_same_v<Rounding, RoundToNearest<Arithmetic>>;

// Dense update of elements [begin, end): a single pass that reads var, accum
// and grad once and writes var and accum once. Vectorizes for float, double
// and bfloat16 (whose conversions are integer shifts and selects).
// `Step` is an AdagradStep of T's compute type; accum holds T or, for a
// 16-bit T, float32 (Acc); the new weights are stored by `rounding`
// (stochastic_rounding.h), element i being table position
// first_position + i.
struct AdagradDenseLoop {
  template <typename T, typename Acc, typename Step, typename Rounding>
  __attribute__((always_inline)) void operator()(
      T* var, Acc* accum, const T* grad, const Step& step,
      const Rounding& rounding, int64_t first_position, int64_t begin,
      int64_t end) const {
    using A = Arithmetic<T>;
    using AccA = Arithmetic<Acc>;
    for (int64_t i = begin; i < end; ++i) {
      ComputeType<T> v = A::Load(var[i]);
      ComputeType<T> a = AccA::Load(accum[i]);
      step.Apply(A::Load(grad[i]), &v, &a);
      accum[i] = AccA::Store(a);
      var[i] = rounding.template Store<T>(v, first_position + i);
    }
  }
};

#ifdef TF_ADAGRAD_X86
// Eight accumulators of type Acc (float16 or float32) as float32 lanes.
template <typename Acc>
__attribute__((target("avx,f16c"))) inline __m256 LoadAccumulator8(
    const Acc* p) {
  if constexpr (std::is_same_v<Acc, Float16>) {
    return LoadHalf8(p);
  } else {
    return _mm256_loadu_ps(p);
  }
}

template <typename Acc>
__attribute__((target("avx,f16c"))) inline void StoreAccumulator8(Acc* p,
                                                                  __m256 x) {
  if constexpr (std::is_same_v<Acc, Float16>) {
    StoreHalf8(p, x);
  } else {
    _mm256_storeu_ps(p, x);
  }
}

// float16 weights through F16C, 8 lanes at a time, rounded to nearest. Same
// operations and order as AdagradStep::Apply, no FMA, and F16C rounds like
// FloatToHalf.
template <typename Acc, typename Step>
__attribute__((target("avx,f16c"))) inline void AdagradDenseRangeHalfF16C(
    Float16* var, Acc* accum, const Float16* grad, const Step& step,
    int64_t begin, int64_t end) {
  const __m256 lr8 = _mm256_set1_ps(step.lr);
  const __m256 epsilon8 = _mm256_set1_ps(step.epsilon);
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256 g = LoadHalf8(grad + i);
    const __m256 a =
        _mm256_add_ps(LoadAccumulator8(accum + i), _mm256_mul_ps(g, g));
    __m256 denominator;
    if constexpr (Step::kEpsilonPlacement == EpsilonPlacement::kInsideSqrt) {
      denominator = _mm256_sqrt_ps(_mm256_add_ps(a, epsilon8));
    } else {
      denominator = _mm256_add_ps(_mm256_sqrt_ps(a), epsilon8);
    }
    const __m256 delta = _mm256_div_ps(_mm256_mul_ps(lr8, g), denominator);
    const __m256 v = _mm256_sub_ps(LoadHalf8(var + i), delta);
    StoreAccumulator8(accum + i, a);
    StoreHalf8(var + i, v);
  }
  RunCompiledFor<VectorIsa::kBaseline>(AdagradDenseLoop(), var, accum, grad,
                                       step, RoundToNearest<Arithmetic>(),
                                       int64_t{0}, i, end);
}
#endif  // TF_ADAGRAD_X86

// The dense update on the fastest path this CPU has: float16 rounded to
// nearest through F16C when the CPU has it (its integer conversions do not
// vectorize), every other case through the widest instruction set, a
// stretch of positions at a time.
template <typename T, typename Acc, typename Step, typename Rounding>
void AdagradDenseRange(T* var, Acc* accum, const T* grad, const Step& step,
                       Rounding& rounding, int64_t first_position,
                       int64_t begin, int64_t end) {
  if constexpr (std::is_same_v<T, Float16>) {
#ifdef TF_ADAGRAD_X86
    if constexpr (kRoundsToNearest<Rounding>) {
      if (CpuHasF16C()) {
        return AdagradDenseRangeHalfF16C(var, accum, grad, step, begin, end);
      }
    }
#endif  // TF_ADAGRAD_X86
  }
  for (int64_t b = begin, e; b < end; b = e) {
    e = StretchEnd<Rounding>(b, end);
    rounding.Prepare(first_position + b, e - b);
    const Rounding& store = rounding;
    if constexpr (std::is_same_v<T, Float16>) {
      RunCompiledFor<VectorIsa::kBaseline>(AdagradDenseLoop(), var, accum, grad,
                                           step, store, first_position, b, e);
    } else {
      RunOnWidestIsa(AdagradDenseLoop(), var, accum, grad, step, store,
                     first_position, b, e);
    }
  }
}

// Elements [begin, end) of the concatenation of `num_tensors` tensors, where
// `starts[i]` is the offset of tensor i in it (`starts` has num_tensors + 1
// entries, the last the total). The work is split by elements, not by
// tensor, so a range may cover the end of one tensor and the start of the
// next; empty tensors are skipped.
template <typename T, typename Step>
void AdagradDenseMultiRange(const DenseTensors<T>* tensors,
                            const int64_t* starts, int64_t num_tensors,
                            const Step& step, int64_t begin, int64_t end) {
  int64_t t =
      std::upper_bound(starts, starts + num_tensors + 1, begin) - starts - 1;
  while (begin < end && t < num_tensors) {
    const int64_t stop = std::min(end, starts[t + 1]);
    if (stop > begin) {
      RoundToNearest<Arithmetic> nearest;
      AdagradDenseRange(tensors[t].var, tensors[t].accum, tensors[t].grad, step,
                        nearest, int64_t{0}, begin - starts[t],
                        stop - starts[t]);
    }
    begin = stop;
    ++t;
  }
}

// Sparse update of unique rows [begin, end) of `groups`. Each row's
// gradient is the sum of its duplicate rows (in position order, in the
// compute type), then the row is updated once, as the dense update would.
// `scratch` holds at least `row_size` compute-type values.
struct AdagradSparseRowsLoop {
  template <typename T, typename Acc, typename Index, typename Step,
            typename Rounding>
  __attribute__((always_inline)) void operator()(
      T* var, Acc* accum, const T* grad, const Index* indices,
      const RowGroups& groups, int64_t row_size, const Step& step,
      Rounding* rounding_state, int64_t begin, int64_t end,
      ComputeType<T>* scratch) const {
    Rounding& rounding = *rounding_state;  // Prepare() draws into it
    using A = Arithmetic<T>;
    using AccA = Arithmetic<Acc>;
    using C = ComputeType<T>;
    const int64_t* positions = groups.positions.data();
    const int64_t* run_starts = groups.run_starts.data();
    for (int64_t u = begin; u < end; ++u) {
      if (u + kSparsePrefetchDistance < end) {
        const int64_t ahead = static_cast<int64_t>(
            indices[positions[run_starts[u + kSparsePrefetchDistance]]]);
        PrefetchRowForWrite(var + ahead * row_size, row_size * sizeof(T));
        PrefetchRowForWrite(accum + ahead * row_size, row_size * sizeof(Acc));
      }
      const int64_t first = run_starts[u];
      const int64_t last = run_starts[u + 1];
      const int64_t row = static_cast<int64_t>(indices[positions[first]]);
      T* var_row = var + row * row_size;
      Acc* accum_row = accum + row * row_size;
      const T* grad_row = grad + positions[first] * row_size;
      const int64_t row_position = row * row_size;
      if (last - first == 1) {
        if constexpr (std::is_same_v<T, Float16>) {
          AdagradDenseRange(var_row, accum_row, grad_row, step, rounding,
                            row_position, 0,
                            row_size);  // F16C where the CPU has it
        } else {
          for (int64_t b = 0, e; b < row_size; b = e) {
            e = StretchEnd<Rounding>(b, row_size);
            rounding.Prepare(row_position + b, e - b);
            AdagradDenseLoop()(var_row, accum_row, grad_row, step, rounding,
                               row_position, b, e);
          }
        }
        continue;
      }
      for (int64_t j = 0; j < row_size; ++j) scratch[j] = A::Load(grad_row[j]);
      for (int64_t k = first + 1; k < last; ++k) {
        const T* dup_row = grad + positions[k] * row_size;
        for (int64_t j = 0; j < row_size; ++j) {
          scratch[j] += A::Load(dup_row[j]);
        }
      }
      for (int64_t b = 0, e; b < row_size; b = e) {
        e = StretchEnd<Rounding>(b, row_size);
        rounding.Prepare(row_position + b, e - b);
        for (int64_t j = b; j < e; ++j) {
          C v = A::Load(var_row[j]);
          C a = AccA::Load(accum_row[j]);
          step.Apply(scratch[j], &v, &a);
          accum_row[j] = AccA::Store(a);
          var_row[j] = rounding.template Store<T>(v, row_position + j);
        }
      }
    }
  }
};

template <typename T, typename Acc, typename Index, typename Step,
          typename Rounding>
void AdagradSparseRows(T* var, Acc* accum, const T* grad, const Index* indices,
                       const RowGroups& groups, int64_t row_size,
                       const Step& step, Rounding& rounding, int64_t begin,
                       int64_t end, ComputeType<T>* scratch) {
  RunOnWidestIsa(AdagradSparseRowsLoop(), var, accum, grad, indices, groups,
                 row_size, step, &rounding, begin, end, scratch);
}

}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_ADAGRAD_CPU_H_
