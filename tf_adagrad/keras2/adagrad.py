"""`tf_adagrad.keras2.Adagrad`: tf_keras' Adagrad on the fused ops."""

import tensorflow as tf
import tf_keras

from tf_adagrad import _xla_fallback, ops
from tf_adagrad._variables import require_float_dtype
from tf_adagrad.optimizer import _require_non_negative_real


@tf_keras.saving.register_keras_serializable(package="tf_adagrad.keras2")
class Adagrad(tf_keras.optimizers.Adagrad):
    """Optimizer that implements the Adagrad algorithm, on fused kernels.

    A drop-in replacement for `tf_keras.optimizers.Adagrad` (`tf.keras`'s
    Adagrad with `TF_USE_LEGACY_KERAS=1`): a subclass of it, with the same
    arguments, defaults, variables and configuration, and the same update
    formula, epsilon inside the square root. For each variable `v`, its
    accumulator `a` and gradient `g`:

    ```
    a = a + g * g
    v = v - learning_rate * g / sqrt(a + epsilon)
    ```

    A step runs the dense updates of all variables in one fused op per
    device and dtype (the work split across threads by elements), and each
    sparse update (`tf.IndexedSlices`, an `Embedding` layer's gradient) in
    one fused op that reads and writes only the rows it names, instead of a
    chain of whole-tensor ops per variable. float16 and bfloat16 variables
    are updated in float32 and rounded once. Under a `tf.distribute`
    strategy each variable is updated on its own, through the strategy.

    Under XLA the fused kernels cannot be compiled, so the same update runs
    as plain TensorFlow ops: with `jit_compile=True` (the default, which
    tf_keras only honours when a GPU is visible) and in a model compiled
    with `jit_compile=True`.

    Args:
        learning_rate: A float or a
            `tf_keras.optimizers.schedules.LearningRateSchedule`. Defaults to
            `0.001`.
        initial_accumulator_value: A real number >= 0. Starting value of the
            accumulators (the per-parameter sums of squared gradients).
            Defaults to `0.1`.
        epsilon: A real number >= 0, added to the accumulator inside the
            square root for numerical stability. Defaults to `1e-7`.
        weight_decay: Float. If set, weight decay is applied.
        clipnorm: Float. If set, the gradient of each weight is individually
            clipped so that its norm is no higher than this value.
        clipvalue: Float. If set, the gradient of each weight is clipped to
            be no higher than this value.
        global_clipnorm: Float. If set, the gradient of all weights is
            clipped so that their global norm is no higher than this value.
        use_ema: Boolean, defaults to `False`. If `True`, an exponential
            moving average (EMA) of the model's weights is kept.
        ema_momentum: Float, defaults to `0.99`. Only used if `use_ema=True`.
        ema_overwrite_frequency: Int or `None`. Only used if `use_ema=True`:
            every `ema_overwrite_frequency` iterations the model variables
            are overwritten by their moving average.
        jit_compile: Boolean, defaults to `True`. If `True` and a GPU is
            visible, each variable's update is compiled with XLA (as plain
            TensorFlow ops, see above).
        name: String, defaults to `"Adagrad"`.

    Variables must be float16, bfloat16, float32 or float64; `build()`
    raises `TypeError` naming any other.

    Usage:

    >>> model.compile(optimizer=tf_adagrad.keras2.Adagrad(learning_rate=0.05),
    ...               loss="binary_crossentropy")
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
        jit_compile=True,
        name="Adagrad",
        **kwargs,
    ):
        _require_non_negative_real("initial_accumulator_value", initial_accumulator_value)
        _require_non_negative_real("epsilon", epsilon)
        super().__init__(
            learning_rate=learning_rate,
            initial_accumulator_value=initial_accumulator_value,
            epsilon=epsilon,
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

    def build(self, var_list):
        if not getattr(self, "_built", False):
            for variable in var_list:
                require_float_dtype(variable, "tf_adagrad.keras2.Adagrad's variable")
        super().build(var_list)

    def _deduplicate_sparse_grad(self, grads):
        # The fused sparse op (and the XLA fallback) sum the rows of
        # duplicate indices themselves, as the base class' `tf.unique` and
        # `tf.math.unsorted_segment_sum` would.
        return grads

    def _distributed_apply_gradients_fn(self, distribution, grads_and_vars, **kwargs):
        """Applies a step's dense gradients together, then lets the base class
        apply the rest (sparse ones) and keep the moving averages and the
        iteration count.

        Under a strategy, or when the update is compiled by XLA, every
        variable goes through the base class, one at a time.
        """
        if tf.distribute.has_strategy() or self.jit_compile or _xla_fallback.in_xla():
            return super()._distributed_apply_gradients_fn(distribution, grads_and_vars, **kwargs)
        applied = self._apply_dense_gradients_together(grads_and_vars)
        # A None gradient tells `update_step` that its variable is done; the
        # base class still counts it for the moving averages.
        remaining = [
            (None if position in applied else gradient, variable)
            for position, (gradient, variable) in enumerate(grads_and_vars)
        ]
        return super()._distributed_apply_gradients_fn(distribution, remaining, **kwargs)

    def _apply_dense_gradients_together(self, grads_and_vars):
        """Runs one `TfAdagrad>MultiApplyDense` per device and dtype over the
        dense gradients; returns the positions in `grads_and_vars` applied."""
        groups = {}
        for position, (gradient, variable) in enumerate(grads_and_vars):
            # Variables the base class skips or rejects stay with it.
            known = (
                getattr(variable, "_unique_id", None) is not None
                and self._var_key(variable) in self._index_dict
            )
            if known and not isinstance(gradient, tf.IndexedSlices):
                groups.setdefault((variable.device, variable.dtype), []).append(position)
        for (_, dtype), positions in groups.items():
            variables = [grads_and_vars[p][1] for p in positions]
            ops.multi_apply_adagrad(
                variables,
                [self._accumulator(variable) for variable in variables],
                tf.cast(self.learning_rate, dtype),
                self._epsilon_as(dtype),
                [grads_and_vars[p][0] for p in positions],
            )
        return {position for positions in groups.values() for position in positions}

    def update_step(self, gradient, variable):
        """Update step given gradient and the associated model variable."""
        if gradient is None:  # applied with the step's other dense gradients
            return
        accumulator = self._accumulator(variable)
        dtype = variable.dtype
        lr = tf.cast(self.learning_rate, dtype)
        epsilon = self._epsilon_as(dtype)
        in_xla = _xla_fallback.in_xla()
        if isinstance(gradient, tf.IndexedSlices):
            if in_xla:
                _xla_fallback.sparse_update(
                    variable, accumulator, lr, epsilon, gradient.values, gradient.indices
                )
            else:
                ops.sparse_apply_adagrad(
                    variable, accumulator, lr, epsilon, gradient.values, gradient.indices
                )
        elif in_xla:
            _xla_fallback.dense_update(variable, accumulator, lr, epsilon, gradient)
        else:
            ops.apply_adagrad(variable, accumulator, lr, epsilon, gradient)

    def _accumulator(self, variable):
        return self._accumulators[self._index_dict[self._var_key(variable)]]

    def _epsilon_as(self, dtype):
        # As tf_keras' `accumulator + epsilon`: a Python number converts
        # straight to the variable's dtype (not through float32).
        return tf.cast(tf.convert_to_tensor(self.epsilon, dtype_hint=dtype), dtype)
