"""`tf_adagrad.keras2.legacy.Adagrad`: tf_keras' legacy (OptimizerV2)
Adagrad on the fused ops."""

import tf_keras

from tf_adagrad import _update_rules
from tf_adagrad._arguments import passed_on
from tf_adagrad.keras2.legacy._adapter import LegacyOptimizer


@tf_keras.saving.register_keras_serializable(package="tf_adagrad.keras2.legacy")
class Adagrad(LegacyOptimizer, tf_keras.optimizers.legacy.Adagrad):
    """Optimizer that implements the Adagrad algorithm, on fused kernels.

    A drop-in replacement for `tf_keras.optimizers.legacy.Adagrad` (an
    `OptimizerV2`): a subclass of it, with the same arguments, defaults,
    slot (`accumulator`) and configuration, and the math of TensorFlow's
    `ApplyAdagradV2`, epsilon outside the square root:

    ```
    a = a + g * g
    v = v - learning_rate * g / (sqrt(a) + epsilon)
    ```

    float32 and float64 results are bit-identical to the base class's;
    float16 and bfloat16 variables compute in float32 and round once
    (TensorFlow's kernels round after every operation); complex64 and
    complex128 variables update by the base class. Dense updates of each
    device and dtype run in one fused op, and each sparse one in one that
    sums the rows of repeated indices itself and touches only the rows it
    names. Under a `tf.distribute` strategy, and for a variable with a
    constraint, each variable updates on its own; under XLA the update runs
    as plain TensorFlow ops.

    Args:
        learning_rate: A float, a
            `tf_keras.optimizers.schedules.LearningRateSchedule`, or a
            callable that takes no arguments. Defaults to `0.001`.
        initial_accumulator_value: A real number >= 0, the accumulators'
            starting value. Defaults to `0.1`.
        epsilon: A real number >= 0, added to the square root of the
            accumulator. Defaults to `1e-7`; `None` or `0` mean
            `tf_keras.backend.epsilon()`, as in the base class.
        {{base_optimizer_keyword_args}}

    Usage:

    >>> model.compile(
    ...     optimizer=tf_adagrad.keras2.legacy.Adagrad(learning_rate=0.05),
    ...     loss="binary_crossentropy")
    """

    rule = _update_rules.OUTSIDE_SQRT

    def __init__(
        self,
        learning_rate=0.001,
        initial_accumulator_value=0.1,
        epsilon=1e-7,
        name="Adagrad",
        **kwargs,
    ):
        # As the base class: None or 0 mean tf_keras' default epsilon.
        epsilon = epsilon or tf_keras.backend.epsilon()
        super().__init__(**passed_on(locals()))
