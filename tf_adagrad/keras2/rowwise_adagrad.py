"""`tf_adagrad.keras2.RowwiseAdagrad`: rowwise Adagrad for tf_keras' optimizer."""

import tensorflow as tf
import tf_keras

from tf_adagrad import _xla_fallback, ops
from tf_adagrad._variables import require_float_dtype
from tf_adagrad.optimizer import _require_non_negative_real


@tf_keras.saving.register_keras_serializable(package="tf_adagrad.keras2")
class RowwiseAdagrad(tf_keras.optimizers.Optimizer):
    """Optimizer that implements rowwise Adagrad, on fused kernels.

    `tf_adagrad.RowwiseAdagrad` for tf_keras (Keras 2): one accumulator per
    row of each variable (FBGEMM's exact rowwise Adagrad). For each row `r`
    of a variable `v`, its accumulator `a[r]` and the row's gradient `g[r]`:

    ```
    a[r] = a[r] + mean(g[r] * g[r])
    v[r] = v[r] - learning_rate * g[r] / (sqrt(a[r]) + epsilon)
    ```

    Rows are the first axis (a scalar is one row). The accumulators, and
    each row's arithmetic, are float32 for float16, bfloat16 and float32
    variables, float64 for float64 ones. A `tf.IndexedSlices` gradient
    updates only the rows it names; rows named more than once are summed
    first. Under XLA the same update runs as plain TensorFlow ops.

    Args:
        learning_rate: A float or a
            `tf_keras.optimizers.schedules.LearningRateSchedule`. Defaults to
            `0.001`.
        initial_accumulator_value: A real number >= 0. Starting value of the
            rowwise accumulators. Defaults to `0.0`.
        epsilon: A real number >= 0, added to the square root of the
            accumulator. Defaults to `1e-8`.
        weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema,
        ema_momentum, ema_overwrite_frequency, jit_compile: As in
            `tf_keras.optimizers.Optimizer`.
        name: String, defaults to `"RowwiseAdagrad"`.

    Usage:

    >>> model.compile(optimizer=tf_adagrad.keras2.RowwiseAdagrad(0.05),
    ...               loss="binary_crossentropy")
    """

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
        _require_non_negative_real("initial_accumulator_value", initial_accumulator_value)
        _require_non_negative_real("epsilon", epsilon)
        super().__init__(
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            jit_compile=jit_compile,
            name=name,
            **kwargs,
        )
        self._learning_rate = self._build_learning_rate(learning_rate)
        self.initial_accumulator_value = initial_accumulator_value
        self.epsilon = epsilon

    def build(self, var_list):
        super().build(var_list)
        if hasattr(self, "_rowwise_accumulators"):
            return
        for variable in var_list:
            require_float_dtype(variable, "tf_adagrad.keras2.RowwiseAdagrad's variable")
        self._rowwise_accumulators = [self._add_rowwise_accumulator(v) for v in var_list]

    def _add_rowwise_accumulator(self, variable):
        """The accumulator of `variable`: shape `variable.shape[:1]`, on the
        variable's device (a parameter server's shard keeps its rows'
        accumulator beside it). `add_variable_from_reference` would give it
        the variable's dtype, which is wrong for 16-bit variables."""
        dtype = ops.rowwise_accumulator_dtype(variable.dtype)
        strategy = tf.distribute.get_strategy()
        with strategy.extended.colocate_vars_with(variable):
            accumulator = tf.Variable(
                initial_value=lambda: tf.fill(
                    variable.shape[:1], tf.constant(self.initial_accumulator_value, dtype)
                ),
                name=f"rowwise_accumulator/{variable._shared_name}",
                dtype=dtype,
                trainable=False,
            )
        self._variables.append(accumulator)
        return accumulator

    def _deduplicate_sparse_grad(self, grads):
        # The fused sparse op (and the XLA fallback) sum the rows of
        # duplicate indices themselves.
        return grads

    def update_step(self, gradient, variable):
        """Update step given gradient and the associated model variable."""
        accumulator = self._rowwise_accumulators[self._index_dict[self._var_key(variable)]]
        dtype = ops.rowwise_accumulator_dtype(variable.dtype)
        lr = tf.cast(self.learning_rate, dtype)
        epsilon = tf.cast(tf.convert_to_tensor(self.epsilon, dtype_hint=dtype), dtype)
        in_xla = _xla_fallback.in_xla()
        if isinstance(gradient, tf.IndexedSlices):
            if in_xla:
                _xla_fallback.rowwise_sparse_update(
                    variable, accumulator, lr, epsilon, gradient.values, gradient.indices
                )
            else:
                ops.sparse_rowwise_apply_adagrad(
                    variable, accumulator, lr, epsilon, gradient.values, gradient.indices
                )
        elif in_xla:
            _xla_fallback.rowwise_dense_update(variable, accumulator, lr, epsilon, gradient)
        else:
            ops.rowwise_apply_adagrad(variable, accumulator, lr, epsilon, gradient)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "learning_rate": self._serialize_hyperparameter(self._learning_rate),
                "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon,
            }
        )
        return config
