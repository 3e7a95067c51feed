"""tf_keras' optimizer hooks (`tf_keras.optimizers.Optimizer`) on an update
rule (`tf_adagrad/_update_rules.py`)."""

import tensorflow as tf
import tf_keras
from tf_keras.src.optimizers import optimizer as tf_keras_optimizer

from tf_adagrad import _update_rules, _weight_decay, _xla_fallback
from tf_adagrad._rule_optimizer import RuleOptimizer
from tf_adagrad._variables import FLOAT_DTYPES


class TfKerasOptimizer(RuleOptimizer, tf_keras.optimizers.Optimizer):
    """A tf_keras optimizer that updates variables by its `rule`. Variables
    of a dtype the kernels lack (complex, which the elementwise rule trains)
    go to the next base class's own update: tf_keras' Adagrad's.

    tf_keras' Adagrad, a base of `keras2.Adagrad`, would set the same
    attributes in `__init__` and make the same accumulators in `build`:
    here both are done for every rule, on tf_keras' base class.
    """

    framework = "a tf_keras (Keras 2) optimizer"
    base_arguments = _weight_decay.documented_with(tf_keras_optimizer.base_optimizer_keyword_args)

    def __init__(
        self, learning_rate, initial_accumulator_value, epsilon, weight_decay_rows="all", **kwargs
    ):
        initial_accumulator_value, epsilon = self._checked(initial_accumulator_value, epsilon)
        tf_keras.optimizers.Optimizer.__init__(self, **kwargs)
        self._learning_rate = self._build_learning_rate(learning_rate)
        self.initial_accumulator_value = initial_accumulator_value
        self.epsilon = epsilon
        self.weight_decay_rows = _weight_decay.checked_rows_mode(weight_decay_rows)
        # As in the Keras 3 adapter: the step's gradients by variable key,
        # set by `apply_gradients`.
        self._step_gradients = {}

    def build(self, var_list):
        if getattr(self, "_built", False):
            return
        self._check_dtypes(var_list)
        tf_keras.optimizers.Optimizer.build(self, var_list)
        self._built = True
        setattr(self, self.rule.slots_attribute, [self._add_slot(v) for v in var_list])

    def _add_slot(self, variable):
        """Named, placed and sharded by `add_variable_from_reference`, but
        for a slot of another dtype than the variable's, which it cannot
        make (a 16-bit variable's rowwise accumulator)."""
        dtype = self.rule.slot_dtype(variable.dtype)
        shape = self.rule.slot_shape(variable.shape)
        initial_value = tf_keras.initializers.Constant(self.initial_accumulator_value)(shape, dtype)
        if dtype == variable.dtype:
            return self.add_variable_from_reference(
                variable, self.rule.slot_name, shape, initial_value
            )
        with tf.distribute.get_strategy().extended.colocate_vars_with(variable):
            slot = tf.Variable(
                initial_value,
                name=f"{self.rule.slot_name}/{variable._shared_name}",
                trainable=False,
            )
        self._variables.append(slot)
        return slot

    def _slot(self, variable):
        return getattr(self, self.rule.slots_attribute)[self._index_dict[self._var_key(variable)]]

    def apply_gradients(self, grads_and_vars, *args, **kwargs):
        grads_and_vars = list(grads_and_vars)
        if self.weight_decay is not None:
            self._step_gradients = {self._var_key(v): g for g, v in grads_and_vars}
        return super().apply_gradients(grads_and_vars, *args, **kwargs)

    def _apply_weight_decay(self, variables):
        """tf_keras' weight decay, one fused pass per variable; rows decayed
        in `update_step` are left to it (`tf_adagrad/_weight_decay.py`)."""
        _weight_decay.apply(self, variables, self._step_gradients)

    def _deduplicate_sparse_grad(self, grads):
        # The rule sums the rows of duplicate indices itself; the base class
        # deduplicates what it updates itself.
        deduplicate = super()._deduplicate_sparse_grad
        return [
            deduplicate([grad])[0]
            if isinstance(grad, tf.IndexedSlices) and grad.values.dtype not in FLOAT_DTYPES
            else grad
            for grad in grads
        ]

    def _distributed_apply_gradients_fn(self, distribution, grads_and_vars, **kwargs):
        """Applies a step's dense gradients of each device and dtype together
        (elementwise: one `TfAdagrad>MultiApplyDense`), then lets the base
        class apply the rest and keep the moving averages and the iteration
        count. Under a strategy, or when the update is compiled by XLA, every
        variable goes through the base class, one at a time."""
        if tf.distribute.has_strategy() or self.jit_compile or _xla_fallback.in_xla():
            return super()._distributed_apply_gradients_fn(distribution, grads_and_vars, **kwargs)
        together = {
            position
            for position, (gradient, variable) in enumerate(grads_and_vars)
            if not isinstance(gradient, tf.IndexedSlices)
            and self.rule.is_fused(variable.dtype)
            # Variables the base class skips or rejects stay with it.
            and getattr(variable, "_unique_id", None) is not None
            and self._var_key(variable) in self._index_dict
        }
        dense = [(v, self._slot(v), g) for p, (g, v) in enumerate(grads_and_vars) if p in together]
        for group in _update_rules.group_by_device_and_dtype(dense).values():
            self.rule.apply_many(*zip(*group), self.learning_rate, self.epsilon)
        # A None gradient tells `update_step` that its variable is done; the
        # base class still counts it for the moving averages.
        remaining = [(None if p in together else g, v) for p, (g, v) in enumerate(grads_and_vars)]
        return super()._distributed_apply_gradients_fn(distribution, remaining, **kwargs)

    def update_step(self, gradient, variable):
        """Update step given gradient and the associated model variable."""
        if gradient is None:  # applied with the step's other dense gradients
            return None
        if variable.dtype not in FLOAT_DTYPES:
            return super().update_step(gradient, variable)
        step_gradient = self._step_gradients.get(self._var_key(variable))
        _weight_decay.in_update_step(self, variable, variable, gradient, step_gradient)
        return self.rule.apply(
            variable, self._slot(variable), gradient, self.learning_rate, self.epsilon
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            learning_rate=self._serialize_hyperparameter(self._learning_rate),
            initial_accumulator_value=self.initial_accumulator_value,
            epsilon=self.epsilon,
        )
        # Only when set, so that the default config stays tf_keras' Adagrad's.
        if self.weight_decay_rows != "all":
            config["weight_decay_rows"] = self.weight_decay_rows
        return config
