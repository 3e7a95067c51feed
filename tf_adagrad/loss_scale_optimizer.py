"""`tf_adagrad.LossScaleOptimizer`: Keras 3's dynamic loss scaling, with a
finite check that reads only the values of sparse gradients."""

import keras

from tf_adagrad import _loss_scaling


@keras.saving.register_keras_serializable(package="tf_adagrad")
class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """An optimizer that dynamically scales the loss to prevent underflow.

    A drop-in replacement for `keras.optimizers.LossScaleOptimizer` (same
    arguments, variables, config and loss-scale updates) whose check for
    inf and NaN reads only the values of a `tf.IndexedSlices` gradient (an
    `Embedding`'s), so a step costs what the rows it names cost, not a pass
    over the whole table: Keras' check turns such a gradient into a dense
    tensor of the table's shape first. Dense gradients are checked as Keras
    checks them. Unscaling divides the slices' values only, as Keras' does.

    Each step divides the gradients by the loss scale and hands them to the
    inner optimizer. A step with an inf or NaN gradient is skipped instead
    (no variable, inner slot or iteration count moves) and halves the loss
    scale; after `dynamic_growth_steps` finite steps in a row the loss scale
    doubles.

    `model.compile()` under the `"mixed_float16"` dtype policy wraps any
    optimizer that is not a `keras.optimizers.LossScaleOptimizer` in Keras'
    own; pass this one to keep the sparse check.

    Rows named more than once are checked one by one: duplicates whose sum
    overflows (each finite, near the dtype's largest value) pass the check.

    Args:
        inner_optimizer: The `keras.optimizers.Optimizer` instance to wrap,
            e.g. a `tf_adagrad.Adagrad`.
        initial_scale: Float. The starting loss scale; it is halved quickly
            when too high, doubled slowly when too low, so start high.
            Defaults to `2.0**15`.
        dynamic_growth_steps: Int. The number of finite steps in a row
            after which the loss scale doubles. Defaults to `2000`.
        name: String. The name of the optimizer's variables' scope.

    Usage:

    >>> keras.mixed_precision.set_global_policy("mixed_float16")
    >>> model.compile(
    ...     optimizer=tf_adagrad.LossScaleOptimizer(tf_adagrad.Adagrad(0.05)),
    ...     loss="binary_crossentropy")
    """

    def __init__(
        self, inner_optimizer, initial_scale=2.0**15, dynamic_growth_steps=2000, name=None, **kwargs
    ):
        if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
            raise TypeError(
                "tf_adagrad.LossScaleOptimizer's inner_optimizer must be a Keras 3 optimizer "
                f"(a keras.optimizers.Optimizer), received: {inner_optimizer!r}"
            )
        super().__init__(inner_optimizer, initial_scale, dynamic_growth_steps, name=name, **kwargs)

    def check_finite(self, grads):
        return super().check_finite(_loss_scaling.values_only(grads))
