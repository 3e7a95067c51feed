"""`tf_adagrad.keras2.RowwiseAdagrad`: rowwise Adagrad for tf_keras' optimizer."""

import tf_keras

from tf_adagrad import _update_rules
from tf_adagrad._arguments import passed_on
from tf_adagrad.keras2._adapter import TfKerasOptimizer


@tf_keras.saving.register_keras_serializable(package="tf_adagrad.keras2")
class RowwiseAdagrad(TfKerasOptimizer):
    """Optimizer that implements rowwise Adagrad, on fused kernels.

    `tf_adagrad.RowwiseAdagrad` for tf_keras (Keras 2): one accumulator per
    row (the first axis; a scalar is one row), float32 (float64 for float64
    variables), as FBGEMM's exact rowwise Adagrad. For each row `r` of a
    variable `v`, its accumulator `a[r]` and the row's gradient `g[r]`:

    ```
    a[r] = a[r] + mean(g[r] * g[r])
    v[r] = v[r] - learning_rate * g[r] / (sqrt(a[r]) + epsilon)
    ```

    A `tf.IndexedSlices` gradient updates only the rows it names, summing
    repeated rows first. Under XLA the update runs as plain TensorFlow ops.

    Args:
        learning_rate: A float or a
            `tf_keras.optimizers.schedules.LearningRateSchedule`. Defaults to
            `0.001`.
        initial_accumulator_value: A real number >= 0, the accumulators'
            starting value. Defaults to `0.0`.
        epsilon: A real number >= 0, added to the square root of the
            accumulator. Defaults to `1e-8`.
        {{base_optimizer_keyword_args}}

    Usage:

    >>> model.compile(optimizer=tf_adagrad.keras2.RowwiseAdagrad(0.05),
    ...               loss="binary_crossentropy")
    """

    rule = _update_rules.ROWWISE

    def __init__(
        self,
        learning_rate=0.001,
        initial_accumulator_value=0.0,
        epsilon=1e-8,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        jit_compile=True,
        name="RowwiseAdagrad",
        **kwargs,
    ):
        super().__init__(**passed_on(locals()))
