"""`tf_adagrad.Adagrad`: Keras 3's Adagrad on the fused ops."""

import keras

from tf_adagrad import _update_rules
from tf_adagrad._arguments import passed_on
from tf_adagrad._keras_adapter import KerasOptimizer


@keras.saving.register_keras_serializable(package="tf_adagrad")
class Adagrad(KerasOptimizer):
    """Optimizer that implements the Adagrad algorithm, on fused kernels.

    A drop-in replacement for `keras.optimizers.Adagrad` (same arguments,
    defaults, variables and update formula) for the TensorFlow backend. For
    each variable `v`, its accumulator `a` and gradient `g`:

    ```
    a = a + g * g
    v = v - learning_rate * g / sqrt(a + epsilon)
    ```

    A step updates the dense gradients of each device and dtype in one fused
    op, and each sparse gradient (`tf.IndexedSlices`, an `Embedding`'s) in
    one that reads and writes only the rows it names, in place. Rows named
    more than once are summed first, so the accumulator gains the square of
    the sum, as with the densified gradient (Keras' sparse path adds the sum
    of the squares). float16 and bfloat16 variables compute in float32;
    complex64 and complex128 ones, and every variable under XLA (which
    cannot compile the kernels), update as plain TensorFlow ops.

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
            starting value. Defaults to `0.1`.
        epsilon: A small real number >= 0, added to the accumulator inside
            the square root. Defaults to `1e-7`.
        {{base_optimizer_keyword_args}}

    Usage:

    >>> model.compile(optimizer=tf_adagrad.Adagrad(learning_rate=0.05),
    ...               loss="binary_crossentropy")

    Reference:

    - [Duchi et al., 2011](
        http://www.jmlr.org/papers/volume12/duchi11a/duchi11a.pdf).
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
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        **kwargs,
    ):
        super().__init__(**passed_on(locals()))
