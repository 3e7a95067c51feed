"""`tf_adagrad.keras2.Adagrad`: tf_keras' Adagrad on the fused ops."""

import tf_keras

from tf_adagrad import _update_rules
from tf_adagrad._arguments import passed_on
from tf_adagrad.keras2._adapter import TfKerasOptimizer


@tf_keras.saving.register_keras_serializable(package="tf_adagrad.keras2")
class Adagrad(TfKerasOptimizer, tf_keras.optimizers.Adagrad):
    """Optimizer that implements the Adagrad algorithm, on fused kernels.

    A drop-in replacement for `tf_keras.optimizers.Adagrad` (`tf.keras`'s
    Adagrad with `TF_USE_LEGACY_KERAS=1`): a subclass of it, with the same
    arguments, defaults, variables, configuration and formula. For each
    variable `v`, its accumulator `a` and gradient `g`:

    ```
    a = a + g * g
    v = v - learning_rate * g / sqrt(a + epsilon)
    ```

    Dense updates of each device and dtype run in one fused op, and each
    sparse one (`tf.IndexedSlices`) in one that reads and writes only the
    rows it names; under a `tf.distribute` strategy each variable updates
    on its own. float16 and bfloat16 variables compute in float32; under
    XLA (`jit_compile=True`, honoured only when a GPU is visible, or a model
    compiled with it) the update runs as plain TensorFlow ops; complex64 and
    complex128 variables update by the base class.

    Args:
        learning_rate: A float or a
            `tf_keras.optimizers.schedules.LearningRateSchedule`. Defaults to
            `0.001`.
        initial_accumulator_value: A real number >= 0, the accumulators'
            starting value. Defaults to `0.1`.
        epsilon: A real number >= 0, added to the accumulator inside the
            square root. Defaults to `1e-7`.
        {{base_optimizer_keyword_args}}

    Usage:

    >>> model.compile(optimizer=tf_adagrad.keras2.Adagrad(learning_rate=0.05),
    ...               loss="binary_crossentropy")
    """

    rule = _update_rules.INSIDE_SQRT

    def __init__(
        self,
        learning_rate=0.001,
        initial_accumulator_value=0.1,
        epsilon=1e-7,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        jit_compile=True,
        name="Adagrad",
        **kwargs,
    ):
        super().__init__(**passed_on(locals()))
