"""`tf_adagrad.RowwiseAdagrad`: rowwise Adagrad for Keras 3 on the fused ops."""

import keras

from tf_adagrad import _update_rules
from tf_adagrad._arguments import passed_on
from tf_adagrad._keras_adapter import KerasOptimizer


@keras.saving.register_keras_serializable(package="tf_adagrad")
class RowwiseAdagrad(KerasOptimizer):
    """Optimizer that implements rowwise Adagrad, on fused kernels.

    Adagrad with one accumulator per row (the first axis; a scalar is one
    row) instead of one per element: FBGEMM's exact rowwise Adagrad, which
    recommender systems use for large embedding tables. For each row `r` of
    a variable `v`, its accumulator `a[r]` and the row's gradient `g[r]`:

    ```
    a[r] = a[r] + mean(g[r] * g[r])
    v[r] = v[r] - learning_rate * g[r] / (sqrt(a[r]) + epsilon)
    ```

    The accumulators and each row's arithmetic are float32 (float64 for
    float64 variables). A `tf.IndexedSlices` gradient (an `Embedding`'s)
    updates only the rows it names, summing repeated rows first. Under XLA
    the update runs as plain TensorFlow ops (a row's squares summed in
    another order, so results may differ in the last bit).

    With `gradient_accumulation_steps`, a sparse gradient's rows are kept
    through the period (no buffer of the table's size) and updated as one
    sparse gradient on the update step; under a `tf.distribute` strategy
    the gradients are summed in Keras' dense buffers instead.

    Args:
        learning_rate: A float, a
            `keras.optimizers.schedules.LearningRateSchedule` instance, or a
            callable that takes no arguments and returns the value to use.
            Defaults to `0.001`.
        initial_accumulator_value: A real number >= 0, the accumulators'
            starting value. Defaults to `0.0`.
        epsilon: A small real number >= 0, added to the square root of the
            accumulator. Defaults to `1e-8`.
        {{base_optimizer_keyword_args}}

    Usage:

    >>> model.compile(optimizer=tf_adagrad.RowwiseAdagrad(learning_rate=0.05),
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
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        **kwargs,
    ):
        super().__init__(**passed_on(locals()))
