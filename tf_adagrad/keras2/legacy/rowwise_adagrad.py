"""`tf_adagrad.keras2.legacy.RowwiseAdagrad`: rowwise Adagrad as a tf_keras
legacy optimizer (`OptimizerV2`)."""

import tensorflow as tf
import tf_keras
from tf_keras.src import backend as tf_keras_backend
from tf_keras.src.optimizers.legacy.optimizer_v2 import _var_key

from tf_adagrad import _xla_fallback, ops
from tf_adagrad._variables import require_float_dtype
from tf_adagrad.keras2.legacy.adagrad import _update_op
from tf_adagrad.optimizer import _require_non_negative_real

_SLOT = "rowwise_accumulator"


@tf_keras.saving.register_keras_serializable(package="tf_adagrad.keras2.legacy")
class RowwiseAdagrad(tf_keras.optimizers.legacy.Optimizer):
    """Optimizer that implements rowwise Adagrad, on fused kernels.

    `tf_adagrad.RowwiseAdagrad` as a tf_keras legacy optimizer
    (`OptimizerV2`, what TensorFlow Recommenders' `CompositeOptimizer` and
    `ParameterServerStrategy` users take): one accumulator per row of each
    variable (FBGEMM's exact rowwise Adagrad), in the slot
    `rowwise_accumulator`. For each row `r` of a variable `v`:

    ```
    a[r] = a[r] + mean(g[r] * g[r])
    v[r] = v[r] - learning_rate * g[r] / (sqrt(a[r]) + epsilon)
    ```

    Rows are the first axis (a scalar is one row). The slots, and each
    row's arithmetic, are float32 for float16, bfloat16 and float32
    variables, float64 for float64 ones. A `tf.IndexedSlices` gradient
    updates only the rows it names; rows named more than once are summed
    first, in the kernel. Under XLA the same update runs as plain
    TensorFlow ops.

    Args:
        learning_rate: A float, a
            `tf_keras.optimizers.schedules.LearningRateSchedule`, or a
            callable that takes no arguments. Defaults to `0.001`.
        initial_accumulator_value: A real number >= 0. Starting value of the
            rowwise accumulators. Defaults to `0.0`.
        epsilon: A real number >= 0, added to the square root of the
            accumulator. Defaults to `1e-8`.
        name: String, defaults to `"RowwiseAdagrad"`.
        **kwargs: `clipvalue`, `clipnorm`, `global_clipnorm`, `decay`, as in
            the base class.
    """

    def __init__(
        self,
        learning_rate=0.001,
        initial_accumulator_value=0.0,
        epsilon=1e-8,
        name="RowwiseAdagrad",
        **kwargs,
    ):
        _require_non_negative_real("initial_accumulator_value", initial_accumulator_value)
        _require_non_negative_real("epsilon", epsilon)
        super().__init__(name, **kwargs)
        self._set_hyper("learning_rate", kwargs.get("lr", learning_rate))
        self._set_hyper("decay", self._initial_decay)
        self._initial_accumulator_value = initial_accumulator_value
        self.epsilon = epsilon

    def _create_slots(self, var_list):
        for variable in var_list:
            require_float_dtype(variable, "tf_adagrad.keras2.legacy.RowwiseAdagrad's variable")
        for variable in var_list:
            self._add_rowwise_slot(variable)

    def _add_rowwise_slot(self, variable):
        """The slot of `variable`, placed, tracked and restored as `add_slot`
        does it, which cannot give a 16-bit variable's slot its float32
        dtype."""
        if _SLOT not in self._slot_names:
            self._slot_names.append(_SLOT)
        slots = self._slots.setdefault(_var_key(variable), {})
        if _SLOT in slots:
            return
        dtype = ops.rowwise_accumulator_dtype(variable.dtype)
        with self._distribution_strategy_scope():
            strategy = tf.distribute.get_strategy()
            with strategy.extended.colocate_vars_with(variable):
                slot = tf.Variable(
                    initial_value=lambda: tf.fill(
                        variable.shape[:1], tf.constant(self._initial_accumulator_value, dtype)
                    ),
                    name=f"{variable._shared_name}/{_SLOT}",
                    dtype=dtype,
                    trainable=False,
                )
        tf_keras_backend.track_variable(slot)
        slots[_SLOT] = slot
        self._restore_slot_variable(slot_name=_SLOT, variable=variable, slot_variable=slot)
        self._weights.append(slot)

    def _hyperparameters(self, variable):
        dtype = ops.rowwise_accumulator_dtype(variable.dtype)
        lr = self._decayed_lr(dtype)
        epsilon = tf.cast(tf.convert_to_tensor(self.epsilon, dtype_hint=dtype), dtype)
        return self.get_slot(variable, _SLOT), lr, epsilon

    def _resource_apply_dense(self, grad, var, apply_state=None):
        accumulator, lr, epsilon = self._hyperparameters(var)
        if _xla_fallback.in_xla():
            return _update_op(
                _xla_fallback.rowwise_dense_update, var, accumulator, lr, epsilon, grad
            )
        return _update_op(
            ops.rowwise_apply_adagrad,
            var,
            accumulator,
            lr,
            epsilon,
            grad,
            use_locking=self._use_locking,
        )

    def _resource_apply_sparse_duplicate_indices(self, grad, var, indices, **kwargs):
        # The kernel sums the rows of duplicate indices itself.
        return self._resource_apply_sparse(grad, var, indices, **kwargs)

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        accumulator, lr, epsilon = self._hyperparameters(var)
        if _xla_fallback.in_xla():
            return _update_op(
                _xla_fallback.rowwise_sparse_update, var, accumulator, lr, epsilon, grad, indices
            )
        return _update_op(
            ops.sparse_rowwise_apply_adagrad,
            var,
            accumulator,
            lr,
            epsilon,
            grad,
            indices,
            use_locking=self._use_locking,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "learning_rate": self._serialize_hyperparameter("learning_rate"),
                "decay": self._initial_decay,
                "initial_accumulator_value": self._initial_accumulator_value,
                "epsilon": self.epsilon,
            }
        )
        return config
