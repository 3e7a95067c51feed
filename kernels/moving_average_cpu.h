// The lazy moving average of rows on the CPU, on raw pointers: plain C++, no
// TensorFlow.
#ifndef TF_ADAGRAD_KERNELS_MOVING_AVERAGE_CPU_H_
#define TF_ADAGRAD_KERNELS_MOVING_AVERAGE_CPU_H_

#include <cstdint>

#include "kernels/half_types.h"
#include "kernels/moving_average_math.h"
#include "kernels/row_grouping.h"

namespace tf_adagrad {

// For unique rows [begin, end) of `groups`: each row's average
// ([num_rows, row_size], like var) brought to step `step` from
// last_step[row] (moving_average_math.h; unchanged if last_step[row] >=
// step), then last_step[row] = step.
template <typename T, typename Index>
void MovingAverageRows(T* average, int64_t* last_step, const T* var,
                       const Index* indices, const RowGroups& groups,
                       int64_t row_size, double momentum, int64_t step,
                       int64_t begin, int64_t end) {
  using A = Arithmetic<T>;
  using C = ComputeType<T>;
  // Neighbouring rows are mostly behind by as many steps: pow once a run.
  int64_t factor_steps = -1;
  C factor = C(1);
  for (int64_t u = begin; u < end; ++u) {
    const int64_t row =
        static_cast<int64_t>(indices[groups.positions[groups.run_starts[u]]]);
    const int64_t steps = step - last_step[row];
    last_step[row] = step;
    // Up to date already: w + 1 * (average - w) would round; keep it.
    if (steps <= 0) continue;
    if (steps != factor_steps) {
      factor = static_cast<C>(MomentumPower(momentum, steps));
      factor_steps = steps;
    }
    T* average_row = average + row * row_size;
    const T* var_row = var + row * row_size;
    for (int64_t j = 0; j < row_size; ++j) {
      average_row[j] = A::Store(CaughtUpAverage(A::Load(average_row[j]),
                                                A::Load(var_row[j]), factor));
    }
    last_step[row] = step;
  }
}

}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_MOVING_AVERAGE_CPU_H_
