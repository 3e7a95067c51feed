"""`tf_adagrad.Adagrad`: Keras 3's Adagrad on the fused ops."""

import numbers

import keras
import tensorflow as tf

from tf_adagrad import _xla_fallback, ops, sharded
from tf_adagrad._variables import as_tf_variable, backing_variable, require_float_dtype


@keras.saving.register_keras_serializable(package="tf_adagrad")
class Adagrad(sharded.ShardedUpdates, keras.optimizers.Optimizer):
    """Optimizer that implements the Adagrad algorithm, on fused kernels.

    A drop-in replacement for `keras.optimizers.Adagrad` (same arguments,
    same defaults, same variables, same update formula), for the TensorFlow
    backend. The results differ in one case: when a `tf.IndexedSlices`
    gradient (an `Embedding` layer's) names a row more than once, tf_adagrad
    sums the duplicate rows first, so the accumulator gains the square of
    the sum, as a dense step with the densified gradient would; Keras'
    sparse path adds the sum of the squares instead.

    A step runs the dense updates of all variables in one fused op per
    device and dtype (the work split across threads by elements), and each
    sparse update in one fused op, instead of a chain of whole-tensor ops
    per variable. A sparse gradient reads and writes only the rows it names;
    the rest of the table is never read. The update writes in place: it
    never makes later reads of the table copy it (TensorFlow's own sparse
    ops switch a variable to copy-on-read, so that every step of an
    `Embedding` layer, which reads its whole table, would copy the table).
    Keras 3's Adagrad instead reads the whole table every step and computes
    over all of it, then writes the named rows.

    Adagrad is an optimizer with parameter-specific learning rates, which
    are adapted relative to how frequently a parameter gets updated during
    training. The more updates a parameter receives, the smaller the
    updates. For each variable `v`, its accumulator `a` and gradient `g`:

    ```
    a = a + g * g
    v = v - learning_rate * g / sqrt(a + epsilon)
    ```

    float16 and bfloat16 variables are updated in float32 and rounded once.

    Args:
        learning_rate: A float, a
            `keras.optimizers.schedules.LearningRateSchedule` instance, or a
            callable that takes no arguments and returns the actual value to
            use. The learning rate. Defaults to `0.001`. Adagrad tends to
            benefit from higher initial learning rates than other optimizers;
            the original paper's form is `1.0`.
        initial_accumulator_value: A real number >= 0. Starting value of
            the accumulators (the per-parameter sums of squared gradients).
            Defaults to `0.1`.
        epsilon: A small real number >= 0, added to the accumulator inside
            the square root, for numerical stability. Defaults to `1e-7`.
        weight_decay: Float. If set, weight decay is applied.
        clipnorm: Float. If set, the gradient of each weight is individually
            clipped so that its norm is no higher than this value.
        clipvalue: Float. If set, the gradient of each weight is clipped to be
            no higher than this value.
        global_clipnorm: Float. If set, the gradient of all weights is clipped
            so that their global norm is no higher than this value.
        use_ema: Boolean, defaults to `False`. If `True`, an exponential
            moving average (EMA) of the model's weights is kept, and
            periodically written over the weights.
        ema_momentum: Float, defaults to `0.99`. Only used if `use_ema=True`:
            `new_average = ema_momentum * old_average +
            (1 - ema_momentum) * current_variable_value`.
        ema_overwrite_frequency: Int or `None`, defaults to `None`. Only used
            if `use_ema=True`. Every `ema_overwrite_frequency` iterations the
            model variables are overwritten by their moving average. If
            `None`, call `optimizer.finalize_variable_values()` at the end of
            training (`fit()` does this after the last epoch).
        loss_scale_factor: Float or `None`. If a float, the loss is multiplied
            by it before computing gradients, and the gradients by its
            inverse before updating variables. Useful against underflow in
            mixed precision training; `keras.optimizers.LossScaleOptimizer`
            sets one automatically.
        gradient_accumulation_steps: Int or `None`. If an int, variables are
            updated every `gradient_accumulation_steps` steps only, with the
            average of the gradients since the last update.
        name: String. The name of the optimizer, used for the names of its
            variables.

    Variables must be float16, bfloat16, float32 or float64; `build()`
    raises `TypeError` naming any other. Under XLA (`jit_compile=True`, which
    `fit()` picks by default on a GPU without a distribution strategy) the
    fused kernels cannot be compiled, so the same update runs as plain
    TensorFlow ops instead; sparse gradients still touch only their rows.

    Usage:

    >>> model.compile(optimizer=tf_adagrad.Adagrad(learning_rate=0.05),
    ...               loss="binary_crossentropy")

    Reference:

    - [Duchi et al., 2011](
        http://www.jmlr.org/papers/volume12/duchi11a/duchi11a.pdf).
    """

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
        backend = keras.backend.backend()
        if backend != "tensorflow":
            raise RuntimeError(
                "tf_adagrad.Adagrad runs TensorFlow ops, so it needs the "
                f"TensorFlow Keras backend; the active backend is {backend!r}. "
                "Set KERAS_BACKEND=tensorflow before importing keras, or use "
                "keras.optimizers.Adagrad."
            )
        _require_non_negative_real("initial_accumulator_value", initial_accumulator_value)
        _require_non_negative_real("epsilon", epsilon)
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            **kwargs,
        )
        self.initial_accumulator_value = initial_accumulator_value
        self.epsilon = epsilon

    def build(self, var_list):
        if self.built:
            return
        for variable in var_list:
            require_float_dtype(variable, "tf_adagrad.Adagrad's variable")
        super().build(var_list)
        # Same variable names and order as keras.optimizers.Adagrad, so
        # checkpoints and .keras files load into either optimizer.
        self._accumulators = self.add_optimizer_variables(
            var_list,
            "accumulator",
            initializer=keras.initializers.Constant(self.initial_accumulator_value),
        )

    def add_variable_from_reference(self, reference_variable, name=None, initializer="zeros"):
        if not sharded.is_sharded(reference_variable):
            return super().add_variable_from_reference(reference_variable, name, initializer)
        with sharded.shards_beside(reference_variable, initializer):
            return super().add_variable_from_reference(reference_variable, name, initializer)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        """All of a step's updates: the dense gradients in one
        `TfAdagrad>MultiApplyDense` per device and dtype, each sparse
        gradient (and each sharded variable) on its own.

        Under a `tf.distribute` strategy, Keras' TensorFlow backend reduces
        the gradients and updates each variable through the strategy; that
        path, and XLA's, stay per variable.
        """
        if tf.distribute.has_strategy() or _xla_fallback.in_xla():
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        dense_groups = {}
        for grad, variable in zip(grads, trainable_variables):
            if isinstance(grad, tf.IndexedSlices) or sharded.is_sharded(variable):
                self.update_step(grad, variable, learning_rate)
            else:
                tf_variable = as_tf_variable(variable, "variable")
                key = (tf_variable.device, tf_variable.dtype)
                dense_groups.setdefault(key, []).append((grad, variable, tf_variable))
        for (_, dtype), updates in dense_groups.items():
            accumulators = [
                as_tf_variable(
                    self._accumulators[self._get_variable_index(variable)], "accumulator"
                )
                for _, variable, _ in updates
            ]
            ops.multi_apply_adagrad(
                [tf_variable for _, _, tf_variable in updates],
                accumulators,
                tf.cast(learning_rate, dtype),
                self._epsilon_as(dtype),
                [tf.cast(grad, dtype) for grad, _, _ in updates],
            )

    def update_step(self, gradient, variable, learning_rate):
        """Update step given gradient and the associated model variable."""
        accumulator = self._accumulators[self._get_variable_index(variable)]
        if sharded.is_sharded(variable):
            for shard_gradient, shard, accumulator_shard in zip(
                sharded.split_by_shard(gradient, backing_variable(variable)),
                sharded.shards(variable),
                sharded.shards(accumulator),
            ):
                self._update_variable(shard_gradient, shard, accumulator_shard, learning_rate)
        else:
            self._update_variable(gradient, variable, accumulator, learning_rate)

    def _update_variable(self, gradient, variable, accumulator, learning_rate):
        variable = as_tf_variable(variable, "variable")
        accumulator = as_tf_variable(accumulator, "accumulator")
        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype)
        epsilon = self._epsilon_as(dtype)
        in_xla = _xla_fallback.in_xla()
        if isinstance(gradient, tf.IndexedSlices):
            values = tf.cast(gradient.values, dtype)
            if in_xla:
                _xla_fallback.sparse_update(
                    variable, accumulator, lr, epsilon, values, gradient.indices
                )
            else:
                ops.sparse_apply_adagrad(
                    variable, accumulator, lr, epsilon, values, gradient.indices
                )
        else:
            gradient = tf.cast(gradient, dtype)
            if in_xla:
                _xla_fallback.dense_update(variable, accumulator, lr, epsilon, gradient)
            else:
                ops.apply_adagrad(variable, accumulator, lr, epsilon, gradient)

    def _epsilon_as(self, dtype):
        # Python numbers convert straight to the dtype (not through float32).
        return tf.cast(tf.convert_to_tensor(self.epsilon, dtype_hint=dtype), dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon,
            }
        )
        return config


def _require_non_negative_real(name, value):
    # bool is an int to Python, and NaN fails `>= 0`.
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(
            f"{name} must be a real number >= 0, received: {value!r} ({type(value).__name__})"
        )
