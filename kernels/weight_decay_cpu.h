// Weight decay on the CPU, on raw pointers: plain C++, no TensorFlow. The
// loops apply weight_decay_math.h's WeightDecayStep; each is compiled for
// several instruction sets by cpu_dispatch.h.
#ifndef TF_ADAGRAD_KERNELS_WEIGHT_DECAY_CPU_H_
#define TF_ADAGRAD_KERNELS_WEIGHT_DECAY_CPU_H_

#include <cstdint>

#include "kernels/cpu_dispatch.h"
#include "kernels/half_types.h"
#include "kernels/row_grouping.h"
#include "kernels/weight_decay_math.h"

namespace tf_adagrad {

// Decays elements [begin, end) of var in place: one read and one write of
// each.
struct WeightDecayLoop {
  template <typename T, typename C>
  __attribute__((always_inline)) void operator()(T* var,
                                                 const WeightDecayStep<C>& step,
                                                 int64_t begin,
                                                 int64_t end) const {
    using A = Arithmetic<T>;
    for (int64_t i = begin; i < end; ++i) {
      var[i] = A::Store(step.Apply(A::Load(var[i])));
    }
  }
};

template <typename T, typename C>
void WeightDecayRange(T* var, const WeightDecayStep<C>& step, int64_t begin,
                      int64_t end) {
  RunOnWidestIsa(WeightDecayLoop(), var, step, begin, end);
}

// Decays the rows of var ([num_rows, row_size]) of unique rows [begin, end)
// of `groups`, each once however often its index repeats.
template <typename T, typename C, typename Index>
void WeightDecayRows(T* var, const Index* indices, const RowGroups& groups,
                     int64_t row_size, const WeightDecayStep<C>& step,
                     int64_t begin, int64_t end) {
  for (int64_t u = begin; u < end; ++u) {
    const int64_t row =
        static_cast<int64_t>(indices[groups.positions[groups.run_starts[u]]]);
    WeightDecayRange(var, step, row * row_size, (row + 1) * row_size);
  }
}

}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_WEIGHT_DECAY_CPU_H_
