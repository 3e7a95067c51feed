"""`tf_adagrad.keras2.legacy.RowwiseAdagrad`: rowwise Adagrad as a tf_keras
legacy optimizer (`OptimizerV2`)."""

import tf_keras

from tf_adagrad import _update_rules
from tf_adagrad._arguments import passed_on
from tf_adagrad.keras2.legacy._adapter import LegacyOptimizer


@tf_keras.saving.register_keras_serializable(package="tf_adagrad.keras2.legacy")
class RowwiseAdagrad(LegacyOptimizer):
    """Optimizer that implements rowwise Adagrad, on fused kernels.

    `tf_adagrad.RowwiseAdagrad` as a tf_keras legacy optimizer
    (`OptimizerV2`, what TensorFlow Recommenders' `CompositeOptimizer`
    takes): one accumulator per row, in the slot `rowwise_accumulator`,
    float32 (float64 for float64 variables), as FBGEMM's exact rowwise
    Adagrad:

    ```
    a[r] = a[r] + mean(g[r] * g[r])
    v[r] = v[r] - learning_rate * g[r] / (sqrt(a[r]) + epsilon)
    ```

    Args:
        learning_rate: A float, a
            `tf_keras.optimizers.schedules.LearningRateSchedule`, or a
            callable that takes no arguments. Defaults to `0.001`.
        initial_accumulator_value: A real number >= 0, the accumulators'
            starting value. Defaults to `0.0`.
        epsilon: A real number >= 0, added to the square root of the
            accumulator. Defaults to `1e-8`.
        {{base_optimizer_keyword_args}}
    """

    rule = _update_rules.ROWWISE

    def __init__(
        self,
        learning_rate=0.001,
        initial_accumulator_value=0.0,
        epsilon=1e-8,
        name="RowwiseAdagrad",
        **kwargs,
    ):
        super().__init__(**passed_on(locals()))
