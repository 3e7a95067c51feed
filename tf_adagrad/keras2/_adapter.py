"""tf_keras' optimizer hooks (`tf_keras.optimizers.Optimizer`) on an update
rule (`tf_adagrad/_update_rules.py`)."""

import tensorflow as tf
import tf_keras
from tf_keras.src.optimizers import optimizer as tf_keras_optimizer

from tf_adagrad import _docstrings, _update_rules, _xla_fallback
from tf_adagrad._arguments import non_negative_real
from tf_adagrad._variables import FLOAT_DTYPES, require_dtype


class TfKerasOptimizer(tf_keras.optimizers.Optimizer):
    """A tf_keras optimizer that updates variables by `rule`; a public class
    sets `rule` and passes its defaults to `__init__`.

    Variables of a dtype the kernels lack (complex, which the elementwise
    rule trains) go to the next base class's own update: tf_keras' Adagrad.
    """

    rule = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__doc__ = _docstrings.with_base_arguments(
            cls.__doc__, tf_keras_optimizer.base_optimizer_keyword_args
        )

    def __init__(self, learning_rate, initial_accumulator_value, epsilon, **kwargs):
        initial_accumulator_value = non_negative_real(
            "initial_accumulator_value", initial_accumulator_value
        )
        epsilon = non_negative_real("epsilon", epsilon)
        # tf_keras' Adagrad (a base of `keras2.Adagrad`) sets the same three
        # attributes after this base's __init__; here for every rule.
        tf_keras.optimizers.Optimizer.__init__(self, **kwargs)
        self._learning_rate = self._build_learning_rate(learning_rate)
        self.initial_accumulator_value = initial_accumulator_value
        self.epsilon = epsilon

    def build(self, var_list):
        if getattr(self, "_built", False):
            return
        for variable in var_list:
            require_dtype(
                variable, f"{_docstrings.public_name(type(self))}'s variable", self.rule.dtypes()
            )
        # As for __init__: tf_keras' Adagrad's build would make the same
        # accumulators; the rule makes its slots for every class.
        tf_keras.optimizers.Optimizer.build(self, var_list)
        self._built = True
        setattr(self, self.rule.slots_attribute, [self._add_slot(v) for v in var_list])

    def _add_slot(self, variable):
        """The slot of `variable`, named, placed and sharded as
        `add_variable_from_reference` does it, which cannot give a 16-bit
        variable a float32 slot."""
        dtype = self.rule.slot_dtype(variable.dtype)
        shape = self.rule.slot_shape(variable.shape)
        initial_value = tf_keras.initializers.Constant(self.initial_accumulator_value)(shape, dtype)
        if dtype == getattr(variable, "true_dtype", variable.dtype):
            return self.add_variable_from_reference(
                variable, self.rule.slot_name, shape, initial_value
            )
        with tf.distribute.get_strategy().extended.colocate_vars_with(variable):
            slot = tf.Variable(
                initial_value=initial_value,
                name=f"{self.rule.slot_name}/{variable._shared_name}",
                dtype=dtype,
                trainable=False,
            )
        self._variables.append(slot)
        return slot

    def _slot(self, variable):
        return getattr(self, self.rule.slots_attribute)[self._index_dict[self._var_key(variable)]]

    def _deduplicate_sparse_grad(self, grads):
        # The rule sums the rows of duplicate indices itself; what the
        # kernels lack goes to the base class, deduplicated by it.
        deduplicate = super()._deduplicate_sparse_grad
        return [
            deduplicate([grad])[0]
            if isinstance(grad, tf.IndexedSlices) and grad.values.dtype not in FLOAT_DTYPES
            else grad
            for grad in grads
        ]

    def _distributed_apply_gradients_fn(self, distribution, grads_and_vars, **kwargs):
        """Applies a step's dense gradients of each device and dtype together
        (elementwise: in one `TfAdagrad>MultiApplyDense`), then lets the base
        class apply the rest and keep the moving averages and the iteration
        count.

        Under a strategy, or when the update is compiled by XLA, every
        variable goes through the base class, one at a time.
        """
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
            return
        if variable.dtype not in FLOAT_DTYPES:
            return super().update_step(gradient, variable)
        self.rule.apply(variable, self._slot(variable), gradient, self.learning_rate, self.epsilon)

    def get_config(self):
        config = super().get_config()
        config.update(
            learning_rate=self._serialize_hyperparameter(self._learning_rate),
            initial_accumulator_value=self.initial_accumulator_value,
            epsilon=self.epsilon,
        )
        return config

    def __repr__(self):
        return (
            f"<{_docstrings.public_name(type(self))} name={self.name!r}: "
            "a tf_keras (Keras 2) optimizer>"
        )
