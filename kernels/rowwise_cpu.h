// Rowwise Adagrad on the CPU, on raw pointers: plain C++, no TensorFlow, no
// Eigen, so that it can be tested (and sanitized) on its own. Each loop is
// compiled for several instruction sets by cpu_dispatch.h; rowwise_math.h
// holds the formula and the summation order.
#ifndef TF_ADAGRAD_KERNELS_ROWWISE_CPU_H_
#define TF_ADAGRAD_KERNELS_ROWWISE_CPU_H_

#include <algorithm>
#include <cstdint>

#include "kernels/cpu_dispatch.h"
#include "kernels/half_types.h"
#include "kernels/row_grouping.h"
#include "kernels/rowwise_math.h"
#include "kernels/stochastic_rounding.h"

namespace tf_adagrad {

// Updates one row of `row_size` (> 0) elements of var and its accumulator
// with the gradient row `grad`, whose elements are T (a gradient row as
// given) or C (duplicate rows summed in the accumulator's type). The new
// weights are stored by `rounding`, element k being table position
// row_position + k. The pointers never alias; saying so lets the loops
// vectorize.
template <typename T, typename G, typename C, typename Rounding>
__attribute__((always_inline)) inline void RowwiseUpdateRow(
    T* __restrict__ var, C* __restrict__ accum, const G* __restrict__ grad,
    int64_t row_size, const RowwiseStep<C>& step, Rounding& rounding,
    int64_t row_position) {
  using A = Arithmetic<T>;
  using GA = Arithmetic<G>;
  C partial[kRowwiseLanes] = {};
  int64_t j = 0;
  for (; j + kRowwiseLanes <= row_size; j += kRowwiseLanes) {
    for (int l = 0; l < kRowwiseLanes; ++l) {
      const C g = GA::Load(grad[j + l]);
      partial[l] += g * g;
    }
  }
  for (int l = 0; j + l < row_size; ++l) {
    const C g = GA::Load(grad[j + l]);
    partial[l] += g * g;
  }
  const C a = step.NewAccumulator(*accum, SumOfLanes(partial), row_size);
  *accum = a;
  const C multiplier = step.Multiplier(a);
  for (int64_t b = 0, e; b < row_size; b = e) {
    e = StretchEnd<Rounding>(b, row_size);
    rounding.Prepare(row_position + b, e - b);
    for (int64_t k = b; k < e; ++k) {
      var[k] = rounding.template Store<T>(
          A::Load(var[k]) - multiplier * GA::Load(grad[k]), row_position + k);
    }
  }
}

// Dense update of rows [begin, end): var and grad are [num_rows, row_size],
// accum is [num_rows].
struct RowwiseDenseRowsLoop {
  template <typename T, typename C, typename Rounding>
  __attribute__((always_inline)) void operator()(
      T* var, C* accum, const T* grad, int64_t row_size,
      const RowwiseStep<C>& step, Rounding* rounding, int64_t begin,
      int64_t end) const {
    for (int64_t r = begin; r < end; ++r) {
      RowwiseUpdateRow(var + r * row_size, accum + r, grad + r * row_size,
                       row_size, step, *rounding, r * row_size);
    }
  }
};

template <typename T, typename C, typename Rounding>
void RowwiseDenseRows(T* var, C* accum, const T* grad, int64_t row_size,
                      const RowwiseStep<C>& step, Rounding& rounding,
                      int64_t begin, int64_t end) {
  RunOnWidestIsa(RowwiseDenseRowsLoop(), var, accum, grad, row_size, step,
                 &rounding, begin, end);
}

// Sparse update of unique rows [begin, end) of `groups`: each row's
// gradient is the sum of its duplicate rows (in position order, in the
// accumulator's type), then the row is updated once, as the dense update
// would. `scratch` holds at least `row_size` values.
struct RowwiseSparseRowsLoop {
  template <typename T, typename C, typename Index, typename Rounding>
  __attribute__((always_inline)) void operator()(
      T* var, C* accum, const T* grad, const Index* indices,
      const RowGroups& groups, int64_t row_size, const RowwiseStep<C>& step,
      Rounding* rounding, int64_t begin, int64_t end, C* scratch) const {
    using GA = Arithmetic<T>;
    const int64_t* positions = groups.positions.data();
    const int64_t* run_starts = groups.run_starts.data();
    for (int64_t u = begin; u < end; ++u) {
      if (u + kSparsePrefetchDistance < end) {
        const int64_t ahead = static_cast<int64_t>(
            indices[positions[run_starts[u + kSparsePrefetchDistance]]]);
        PrefetchRowForWrite(var + ahead * row_size, row_size * sizeof(T));
        __builtin_prefetch(accum + ahead, 1);
      }
      const int64_t first = run_starts[u];
      const int64_t last = run_starts[u + 1];
      const int64_t row = static_cast<int64_t>(indices[positions[first]]);
      const T* grad_row = grad + positions[first] * row_size;
      if (last - first == 1) {
        RowwiseUpdateRow(var + row * row_size, accum + row, grad_row, row_size,
                         step, *rounding, row * row_size);
        continue;
      }
      C* __restrict__ sum = scratch;
      for (int64_t j = 0; j < row_size; ++j) sum[j] = GA::Load(grad_row[j]);
      for (int64_t k = first + 1; k < last; ++k) {
        const T* __restrict__ dup_row = grad + positions[k] * row_size;
        for (int64_t j = 0; j < row_size; ++j) sum[j] += GA::Load(dup_row[j]);
      }
      RowwiseUpdateRow(var + row * row_size, accum + row,
                       static_cast<const C*>(scratch), row_size, step,
                       *rounding, row * row_size);
    }
  }
};

template <typename T, typename C, typename Index, typename Rounding>
void RowwiseSparseRows(T* var, C* accum, const T* grad, const Index* indices,
                       const RowGroups& groups, int64_t row_size,
                       const RowwiseStep<C>& step, Rounding& rounding,
                       int64_t begin, int64_t end, C* scratch) {
  RunOnWidestIsa(RowwiseSparseRowsLoop(), var, accum, grad, indices, groups,
                 row_size, step, &rounding, begin, end, scratch);
}

}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_ROWWISE_CPU_H_
