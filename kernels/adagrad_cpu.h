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

namespace tf_adagrad {

// Dense update of elements [begin, end): a single pass that reads var, accum
// and grad once and writes var and accum once. Vectorizes for float, double
// and bfloat16 (whose conversions are integer shifts and selects).
// `Step` is an AdagradStep of T's compute type.
struct AdagradDenseLoop {
  template <typename T, typename Step>
  __attribute__((always_inline)) void operator()(T* var, T* accum,
                                                 const T* grad,
                                                 const Step& step,
                                                 int64_t begin,
                                                 int64_t end) const {
    using A = Arithmetic<T>;
    for (int64_t i = begin; i < end; ++i) {
      ComputeType<T> v = A::Load(var[i]);
      ComputeType<T> a = A::Load(accum[i]);
      step.Apply(A::Load(grad[i]), &v, &a);
      accum[i] = A::Store(a);
      var[i] = A::Store(v);
    }
  }
};

#ifdef TF_ADAGRAD_X86
// float16 through F16C, 8 lanes at a time. Same operations and order as
// AdagradStep::Apply, no FMA, and F16C rounds like FloatToHalf.
template <typename Step>
__attribute__((target("avx,f16c"))) inline void AdagradDenseRangeHalfF16C(
    Float16* var, Float16* accum, const Float16* grad, const Step& step,
    int64_t begin, int64_t end) {
  const __m256 lr8 = _mm256_set1_ps(step.lr);
  const __m256 epsilon8 = _mm256_set1_ps(step.epsilon);
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256 g = LoadHalf8(grad + i);
    const __m256 a = _mm256_add_ps(LoadHalf8(accum + i), _mm256_mul_ps(g, g));
    __m256 denominator;
    if constexpr (Step::kEpsilonPlacement == EpsilonPlacement::kInsideSqrt) {
      denominator = _mm256_sqrt_ps(_mm256_add_ps(a, epsilon8));
    } else {
      denominator = _mm256_add_ps(_mm256_sqrt_ps(a), epsilon8);
    }
    const __m256 delta = _mm256_div_ps(_mm256_mul_ps(lr8, g), denominator);
    const __m256 v = _mm256_sub_ps(LoadHalf8(var + i), delta);
    StoreHalf8(accum + i, a);
    StoreHalf8(var + i, v);
  }
  RunCompiledFor<VectorIsa::kBaseline>(AdagradDenseLoop(), var, accum, grad,
                                       step, i, end);
}
#endif  // TF_ADAGRAD_X86

// The dense update on the fastest path this CPU has: float16 through F16C
// when the CPU has it (its integer conversions do not vectorize), every
// other type through the widest instruction set.
template <typename T, typename Step>
void AdagradDenseRange(T* var, T* accum, const T* grad, const Step& step,
                       int64_t begin, int64_t end) {
  if constexpr (std::is_same_v<T, Float16>) {
#ifdef TF_ADAGRAD_X86
    if (CpuHasF16C()) {
      return AdagradDenseRangeHalfF16C(var, accum, grad, step, begin, end);
    }
#endif  // TF_ADAGRAD_X86
    RunCompiledFor<VectorIsa::kBaseline>(AdagradDenseLoop(), var, accum, grad,
                                         step, begin, end);
  } else {
    RunOnWidestIsa(AdagradDenseLoop(), var, accum, grad, step, begin, end);
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
      AdagradDenseRange(tensors[t].var, tensors[t].accum, tensors[t].grad, step,
                        begin - starts[t], stop - starts[t]);
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
  template <typename T, typename Index, typename Step>
  __attribute__((always_inline)) void operator()(
      T* var, T* accum, const T* grad, const Index* indices,
      const RowGroups& groups, int64_t row_size, const Step& step,
      int64_t begin, int64_t end, ComputeType<T>* scratch) const {
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
          AdagradDenseRange(var_row, accum_row, grad_row, step, 0,
                            row_size);  // F16C where the CPU has it
        } else {
          AdagradDenseLoop()(var_row, accum_row, grad_row, step, 0, row_size);
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
      for (int64_t j = 0; j < row_size; ++j) {
        C v = A::Load(var_row[j]);
        C a = A::Load(accum_row[j]);
        step.Apply(scratch[j], &v, &a);
        accum_row[j] = A::Store(a);
        var_row[j] = A::Store(v);
      }
    }
  }
};

template <typename T, typename Index, typename Step>
void AdagradSparseRows(T* var, T* accum, const T* grad, const Index* indices,
                       const RowGroups& groups, int64_t row_size,
                       const Step& step, int64_t begin, int64_t end,
                       ComputeType<T>* scratch) {
  RunOnWidestIsa(AdagradSparseRowsLoop(), var, accum, grad, indices, groups,
                 row_size, step, begin, end, scratch);
}

}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_ADAGRAD_CPU_H_
