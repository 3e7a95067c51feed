// The lazy moving average of rows on the CPU, on raw pointers: plain C++, no
// TensorFlow.
#ifndef TF_ADAGRAD_KERNELS_MOVING_AVERAGE_CPU_H_
#define TF_ADAGRAD_KERNELS_MOVING_AVERAGE_CPU_H_

#include <cstdint>

#include "kernels/half_types.h"
#include "kernels/moving_average_math.h"
#include "kernels/row_grouping.h"

namespace tf_adagrad {

// Brings rows of an average ([num_rows, row_size], like var) to step
// `step` from last_step[row] (moving_average_math.h; unchanged if
// last_step[row] >= step), then sets last_step[row] = step. Neighbouring
// rows are mostly behind by as many steps, so pow runs once a run of them.
template <typename T>
class RowCatchUp {
 public:
  RowCatchUp(T* average, int64_t* last_step, const T* var, int64_t row_size,
             double momentum, int64_t step)
      : average_(average),
        last_step_(last_step),
        var_(var),
        row_size_(row_size),
        momentum_(momentum),
        step_(step) {}

  void operator()(int64_t row) {
    using A = Arithmetic<T>;
    const int64_t steps = step_ - last_step_[row];
    last_step_[row] = step_;
    // Up to date already: w + 1 * (average - w) would round; keep it.
    if (steps <= 0) return;
    if (steps != factor_steps_) {
      factor_ = static_cast<ComputeType<T>>(MomentumPower(momentum_, steps));
      factor_steps_ = steps;
    }
    T* average_row = average_ + row * row_size_;
    const T* var_row = var_ + row * row_size_;
    for (int64_t j = 0; j < row_size_; ++j) {
      average_row[j] = A::Store(CaughtUpAverage(A::Load(average_row[j]),
                                                A::Load(var_row[j]), factor_));
    }
  }

 private:
  T* average_;
  int64_t* last_step_;
  const T* var_;
  int64_t row_size_;
  double momentum_;
  int64_t step_;
  int64_t factor_steps_ = -1;
  ComputeType<T> factor_ = ComputeType<T>(1);
};

// The rows of unique rows [begin, end) of `groups`.
template <typename T, typename Index>
void MovingAverageRows(T* average, int64_t* last_step, const T* var,
                       const Index* indices, const RowGroups& groups,
                       int64_t row_size, double momentum, int64_t step,
                       int64_t begin, int64_t end) {
  RowCatchUp<T> catch_up(average, last_step, var, row_size, momentum, step);
  for (int64_t u = begin; u < end; ++u) {
    catch_up(
        static_cast<int64_t>(indices[groups.positions[groups.run_starts[u]]]));
  }
}

// Rows [begin, end), every one.
template <typename T>
void MovingAverageAllRows(T* average, int64_t* last_step, const T* var,
                          int64_t row_size, double momentum, int64_t step,
                          int64_t begin, int64_t end) {
  RowCatchUp<T> catch_up(average, last_step, var, row_size, momentum, step);
  for (int64_t row = begin; row < end; ++row) catch_up(row);
}

}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_MOVING_AVERAGE_CPU_H_
