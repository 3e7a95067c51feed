"""`tf_adagrad.RowwiseAdagrad`: rowwise Adagrad for Keras 3 on the fused ops."""

import keras
import tensorflow as tf

from tf_adagrad import _xla_fallback, ops, sharded
from tf_adagrad._variables import as_tf_variable, backing_variable, require_float_dtype
from tf_adagrad.optimizer import _require_non_negative_real


@keras.saving.register_keras_serializable(package="tf_adagrad")
class RowwiseAdagrad(sharded.ShardedUpdates, keras.optimizers.Optimizer):
    """Optimizer that implements rowwise Adagrad, on fused kernels.

    Adagrad with one accumulator per row of each variable instead of one per
    element (FBGEMM's exact rowwise Adagrad, which recommender systems use
    for large embedding tables): the optimizer's memory is one number per
    row, not a copy of the table, and a sparse step moves about half the
    bytes. Rows are a variable's first axis; a vector's rows are its
    elements and a scalar is one row. For each row `r` of a variable `v`,
    its accumulator `a[r]` and the row's gradient `g[r]`:

    ```
    a[r] = a[r] + mean(g[r] * g[r])
    v[r] = v[r] - learning_rate * g[r] / (sqrt(a[r]) + epsilon)
    ```

    The accumulators, and each row's arithmetic, are float32 for float16,
    bfloat16 and float32 variables, float64 for float64 ones. A
    `tf.IndexedSlices` gradient (an `Embedding` layer's) updates only the
    rows it names, reading and writing nothing else; rows named more than
    once are summed first, so the step equals the dense step with the
    densified gradient.

    Args:
        learning_rate: A float, a
            `keras.optimizers.schedules.LearningRateSchedule` instance, or a
            callable that takes no arguments and returns the actual value to
            use. The learning rate. Defaults to `0.001`.
        initial_accumulator_value: A real number >= 0. Starting value of the
            rowwise accumulators. Defaults to `0.0`.
        epsilon: A small real number >= 0, added to the square root of the
            accumulator. Defaults to `1e-8`.
        weight_decay: Float. If set, weight decay is applied.
        clipnorm: Float. If set, the gradient of each weight is individually
            clipped so that its norm is no higher than this value.
        clipvalue: Float. If set, the gradient of each weight is clipped to be
            no higher than this value.
        global_clipnorm: Float. If set, the gradient of all weights is clipped
            so that their global norm is no higher than this value.
        use_ema: Boolean, defaults to `False`. If `True`, an exponential
            moving average (EMA) of the model's weights is kept.
        ema_momentum: Float, defaults to `0.99`. Only used if `use_ema=True`.
        ema_overwrite_frequency: Int or `None`, defaults to `None`. Only used
            if `use_ema=True`: every `ema_overwrite_frequency` iterations the
            model variables are overwritten by their moving average.
        loss_scale_factor: Float or `None`. If a float, the loss is multiplied
            by it before computing gradients, and the gradients by its
            inverse before updating variables.
        gradient_accumulation_steps: Int or `None`. If an int, variables are
            updated every `gradient_accumulation_steps` steps only, with the
            average of the gradients since the last update.
        name: String. The name of the optimizer, used for the names of its
            variables.

    Variables must be float16, bfloat16, float32 or float64; `build()`
    raises `TypeError` naming any other. Under XLA (`jit_compile=True`) the
    fused kernels cannot be compiled, so the same update runs as plain
    TensorFlow ops (which sum a row's squares in another order, so results
    may differ in the last bit).

    Usage:

    >>> model.compile(optimizer=tf_adagrad.RowwiseAdagrad(learning_rate=0.05),
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
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        **kwargs,
    ):
        backend = keras.backend.backend()
        if backend != "tensorflow":
            raise RuntimeError(
                "tf_adagrad.RowwiseAdagrad runs TensorFlow ops, so it needs the "
                f"TensorFlow Keras backend; the active backend is {backend!r}. "
                "Set KERAS_BACKEND=tensorflow before importing keras."
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
            require_float_dtype(variable, "tf_adagrad.RowwiseAdagrad's variable")
        super().build(var_list)
        self._rowwise_accumulators = [self._add_rowwise_accumulator(v) for v in var_list]

    def _add_rowwise_accumulator(self, variable):
        initializer = keras.initializers.Constant(self.initial_accumulator_value)
        dtype = ops.rowwise_accumulator_dtype(variable.dtype)

        def add():
            return self.add_variable(
                shape=tuple(variable.shape[:1]),
                initializer=initializer,
                dtype=dtype.name,
                name=f"{variable.path.replace('/', '_')}_rowwise_accumulator",
            )

        if not sharded.is_sharded(variable):
            return add()
        # A table sharded by rows gets its accumulator sharded by the same
        # rows, each shard beside its table shard.
        with sharded.shards_beside(variable, initializer, dtype=dtype, per_row=True):
            return add()

    def update_step(self, gradient, variable, learning_rate):
        """Update step given gradient and the associated model variable."""
        accumulator = self._rowwise_accumulators[self._get_variable_index(variable)]
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
        accumulator = as_tf_variable(accumulator, "accumulator")
        variable = as_tf_variable(variable, "variable")
        dtype = variable.dtype
        accumulator_dtype = ops.rowwise_accumulator_dtype(dtype)
        lr = tf.cast(learning_rate, accumulator_dtype)
        epsilon = tf.cast(
            tf.convert_to_tensor(self.epsilon, dtype_hint=accumulator_dtype), accumulator_dtype
        )
        in_xla = _xla_fallback.in_xla()
        if isinstance(gradient, tf.IndexedSlices):
            values = tf.cast(gradient.values, dtype)
            if in_xla:
                _xla_fallback.rowwise_sparse_update(
                    variable, accumulator, lr, epsilon, values, gradient.indices
                )
            else:
                ops.sparse_rowwise_apply_adagrad(
                    variable, accumulator, lr, epsilon, values, gradient.indices
                )
        else:
            gradient = tf.cast(gradient, dtype)
            if in_xla:
                _xla_fallback.rowwise_dense_update(variable, accumulator, lr, epsilon, gradient)
            else:
                ops.rowwise_apply_adagrad(variable, accumulator, lr, epsilon, gradient)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon,
            }
        )
        return config
