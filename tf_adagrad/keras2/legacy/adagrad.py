"""`tf_adagrad.keras2.legacy.Adagrad`: tf_keras' legacy (OptimizerV2)
Adagrad on the fused ops."""

import tensorflow as tf
import tf_keras

from tf_adagrad import _xla_fallback, ops
from tf_adagrad._variables import require_float_dtype
from tf_adagrad.optimizer import _require_non_negative_real

# TensorFlow's ApplyAdagradV2 adds epsilon after the square root.
_EPSILON_PLACEMENT = "outside_sqrt"


@tf_keras.saving.register_keras_serializable(package="tf_adagrad.keras2.legacy")
class Adagrad(tf_keras.optimizers.legacy.Adagrad):
    """Optimizer that implements the Adagrad algorithm, on fused kernels.

    A drop-in replacement for `tf_keras.optimizers.legacy.Adagrad` (an
    `OptimizerV2`): a subclass of it, with the same arguments, defaults,
    slot (`accumulator`) and configuration, and the math of TensorFlow's
    `ApplyAdagradV2`, epsilon outside the square root. For each variable
    `v`, its accumulator `a` and gradient `g`:

    ```
    a = a + g * g
    v = v - learning_rate * g / (sqrt(a) + epsilon)
    ```

    float32 and float64 results are bit-identical to
    `tf_keras.optimizers.legacy.Adagrad`'s; float16 and bfloat16 variables
    are updated in float32 and rounded once (TensorFlow's kernels round
    after every operation).

    A step runs the dense updates of all variables in one fused op per
    device and dtype (the work split across threads by elements), and each
    sparse update (`tf.IndexedSlices`, an `Embedding` layer's gradient) in
    one fused op that sums the rows of duplicate indices itself and reads
    and writes only the rows it names; the base class would first run
    `tf.unique` and `tf.math.unsorted_segment_sum` over the gradient. Under
    a `tf.distribute` strategy, and for a variable with a constraint, each
    variable is updated on its own. Under XLA (a model compiled with
    `jit_compile=True`) the fused kernels cannot be compiled, so the same
    update runs as plain TensorFlow ops.

    Args:
        learning_rate: A float, a
            `tf_keras.optimizers.schedules.LearningRateSchedule`, or a
            callable that takes no arguments and returns the value to use.
            Defaults to `0.001`.
        initial_accumulator_value: A real number >= 0. Starting value of the
            accumulators. Defaults to `0.1`.
        epsilon: A real number >= 0, added to the square root of the
            accumulator for numerical stability. Defaults to `1e-7`; `None`
            or `0` mean `tf_keras.backend.epsilon()`, as in the base class.
        name: String, the prefix of the names of the ops the optimizer
            creates. Defaults to `"Adagrad"`.
        **kwargs: `clipvalue`, `clipnorm`, `global_clipnorm`, `decay`, as in
            the base class.

    Variables must be float16, bfloat16, float32 or float64; slot creation
    raises `TypeError` naming any other.

    Usage:

    >>> model.compile(
    ...     optimizer=tf_adagrad.keras2.legacy.Adagrad(learning_rate=0.05),
    ...     loss="binary_crossentropy")
    """

    def __init__(
        self,
        learning_rate=0.001,
        initial_accumulator_value=0.1,
        epsilon=1e-7,
        name="Adagrad",
        **kwargs,
    ):
        _require_non_negative_real("initial_accumulator_value", initial_accumulator_value)
        super().__init__(
            learning_rate=learning_rate,
            initial_accumulator_value=initial_accumulator_value,
            epsilon=epsilon,
            name=name,
            **kwargs,
        )
        # Checked after the base class has replaced None by its default.
        _require_non_negative_real("epsilon", self.epsilon)

    def _create_slots(self, var_list):
        for variable in var_list:
            require_float_dtype(variable, "tf_adagrad.keras2.legacy.Adagrad's variable")
        super()._create_slots(var_list)

    def _distributed_apply(self, distribution, grads_and_vars, apply_state, name):
        """Applies a step's dense gradients together, then lets the base class
        apply the rest and count the iteration.

        Under a strategy, or when the step is compiled by XLA, every variable
        goes through the base class, one at a time.
        """
        if tf.distribute.has_strategy() or _xla_fallback.in_xla():
            return super()._distributed_apply(distribution, grads_and_vars, apply_state, name)
        groups = {}
        remaining = []
        for gradient, variable in grads_and_vars:
            # The base class applies a constraint after the variable's update.
            fusable = (
                isinstance(variable, tf.Variable)
                and variable.constraint is None
                and not isinstance(gradient, tf.IndexedSlices)
            )
            if fusable:
                key = (variable.device, variable.dtype.base_dtype)
                groups.setdefault(key, []).append((gradient, variable))
            else:
                remaining.append((gradient, variable))
        updates = []
        for (device, dtype), pairs in groups.items():
            coefficients = self._coefficients(device, dtype, apply_state)
            updates.append(
                _update_op(
                    ops.multi_apply_adagrad,
                    [variable for _, variable in pairs],
                    [self.get_slot(variable, "accumulator") for _, variable in pairs],
                    coefficients["lr_t"],
                    coefficients["epsilon"],
                    [gradient for gradient, _ in pairs],
                    epsilon_placement=_EPSILON_PLACEMENT,
                )
            )
        with tf.control_dependencies(updates):
            return super()._distributed_apply(distribution, remaining, apply_state, name)

    def _resource_apply_dense(self, grad, var, apply_state=None):
        coefficients = self._coefficients(var.device, var.dtype.base_dtype, apply_state)
        accumulator = self.get_slot(var, "accumulator")
        lr, epsilon = coefficients["lr_t"], coefficients["epsilon"]
        if _xla_fallback.in_xla():
            return _update_op(
                _xla_fallback.dense_update,
                var,
                accumulator,
                lr,
                epsilon,
                grad,
                epsilon_placement=_EPSILON_PLACEMENT,
            )
        return _update_op(
            ops.apply_adagrad,
            var,
            accumulator,
            lr,
            epsilon,
            grad,
            use_locking=self._use_locking,
            epsilon_placement=_EPSILON_PLACEMENT,
        )

    def _resource_apply_sparse_duplicate_indices(self, grad, var, indices, **kwargs):
        # The kernel sums the rows of duplicate indices itself.
        return self._resource_apply_sparse(grad, var, indices, **kwargs)

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        coefficients = self._coefficients(var.device, var.dtype.base_dtype, apply_state)
        accumulator = self.get_slot(var, "accumulator")
        lr, epsilon = coefficients["lr_t"], coefficients["epsilon"]
        if _xla_fallback.in_xla():
            return _update_op(
                _xla_fallback.sparse_update,
                var,
                accumulator,
                lr,
                epsilon,
                grad,
                indices,
                epsilon_placement=_EPSILON_PLACEMENT,
            )
        return _update_op(
            ops.sparse_apply_adagrad,
            var,
            accumulator,
            lr,
            epsilon,
            grad,
            indices,
            use_locking=self._use_locking,
            epsilon_placement=_EPSILON_PLACEMENT,
        )

    def _coefficients(self, device, dtype, apply_state):
        # The learning rate (decayed, scheduled) and epsilon the base class
        # prepared for this device and dtype.
        return (apply_state or {}).get((device, dtype)) or self._fallback_apply_state(device, dtype)


def _update_op(update, *args, **kwargs):
    """Runs `update(*args, **kwargs)` (an update of tf_adagrad's ops or XLA
    fallback, which return nothing) and returns an op that runs it, or None
    when executing eagerly (the update has run).

    OptimizerV2 makes the step's train op depend on the ops its
    `_resource_apply_*` methods return; in a graph, without that op a
    session would never run the update.
    """
    if tf.executing_eagerly():
        update(*args, **kwargs)
        return None
    graph = tf.compat.v1.get_default_graph()
    num_ops_before = len(graph.get_operations())
    update(*args, **kwargs)
    return tf.group(*graph.get_operations()[num_ops_before:])
