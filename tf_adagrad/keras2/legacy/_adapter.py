"""tf_keras' legacy optimizer hooks (`OptimizerV2`) on an update rule
(`tf_adagrad/_update_rules.py`)."""

import functools

import tensorflow as tf
import tf_keras
from tf_keras.src import backend as tf_keras_backend
from tf_keras.src.optimizers.legacy.optimizer_v2 import _var_key

from tf_adagrad import _half_precision, _update_rules, _xla_fallback
from tf_adagrad._rule_optimizer import RuleOptimizer, with_arguments
from tf_adagrad._variables import FLOAT_DTYPES


class LegacyOptimizer(RuleOptimizer, tf_keras.optimizers.legacy.Optimizer):
    """A tf_keras legacy optimizer (`OptimizerV2`) that updates variables by
    its `rule`. Variables of a dtype the kernels lack (complex, which the
    elementwise rule trains) go to the next base class's own update: tf_keras'
    legacy Adagrad's, TensorFlow's `ApplyAdagradV2`.

    tf_keras' legacy Adagrad, a base of `legacy.Adagrad`, would set the same
    hyperparameters in `__init__`: here that is done for every rule.
    """

    framework = "a tf_keras (Keras 2) legacy optimizer, an OptimizerV2"
    # tf_keras has no text of OptimizerV2's shared arguments.
    base_arguments = with_arguments(
        """name: String, the prefix of the names of the ops it creates.
        **kwargs: `clipvalue`, `clipnorm`, `global_clipnorm`, `decay`, as in
            `tf_keras.optimizers.legacy.Optimizer`.""",
        _half_precision.ARGUMENT_DOC,
    )

    def __init__(
        self,
        learning_rate,
        initial_accumulator_value,
        epsilon,
        name,
        stochastic_rounding=False,
        accumulator_dtype=None,
        **kwargs,
    ):
        initial_accumulator_value, epsilon = self._checked(initial_accumulator_value, epsilon)
        tf_keras.optimizers.legacy.Optimizer.__init__(self, name, **kwargs)
        _half_precision.configure(self, stochastic_rounding, accumulator_dtype)
        # Each variable's place in the list `_create_slots` got, which keeps
        # their random bits apart.
        self._variable_indices = {}
        self._set_hyper("learning_rate", kwargs.get("lr", learning_rate))
        self._set_hyper("decay", self._initial_decay)
        self._initial_accumulator_value = initial_accumulator_value
        self.epsilon = epsilon

    def _create_slots(self, var_list):
        self._check_dtypes(var_list)
        for variable in var_list:
            self._add_slot(variable)
            self._variable_indices.setdefault(_var_key(variable), len(self._variable_indices))
        if self.stochastic_rounding and not hasattr(self, "_rounding_seed"):
            # A weight, so that checkpoints save it and a resumed run draws on.
            self._rounding_seed = self.add_weight(
                "stochastic_rounding_seed",
                shape=(),
                dtype=tf.int64,
                initializer=tf.compat.v1.constant_initializer(_half_precision.new_seed()),
                trainable=False,
            )

    def _add_slot(self, variable, initializer=None):
        """Placed, tracked and restored by `add_slot`, but for a slot of
        another dtype than the variable's, which it cannot make (a 16-bit
        variable's rowwise or float32 accumulator). `initializer`: the
        checkpoint's value, when a restore creates the slot."""
        name, dtype = self.rule.slot_name, self.rule.slot_dtype(variable.dtype)
        shape = self.rule.slot_shape(variable.shape)
        if initializer is None:
            initializer = tf.compat.v1.constant_initializer(self._initial_accumulator_value, dtype)
        if dtype == variable.dtype.base_dtype:
            return super().add_slot(variable, name, initializer, shape=shape)
        slots = self._slots.setdefault(_var_key(variable), {})
        if name in slots:
            return slots[name]
        if name not in self._slot_names:
            self._slot_names.append(name)
        with self._distribution_strategy_scope():
            with tf.distribute.get_strategy().extended.colocate_vars_with(variable):
                slot = tf.Variable(
                    functools.partial(initializer, shape, dtype),
                    name=f"{variable._shared_name}/{name}",
                    dtype=dtype,
                    trainable=False,
                )
        tf_keras_backend.track_variable(slot)
        slots[name] = slot
        self._restore_slot_variable(name, variable, slot)
        self._weights.append(slot)
        return slot

    def add_slot(self, var, slot_name, initializer="zeros", shape=None):
        # A restore that creates the rule's slot before the first step comes
        # here with the checkpoint's value: made in the slot's own dtype.
        if slot_name == self.rule.slot_name and callable(initializer):
            return self._add_slot(var, initializer)
        return super().add_slot(var, slot_name, initializer, shape=shape)

    def _prepare_local(self, var_device, var_dtype, apply_state):
        super()._prepare_local(var_device, var_dtype, apply_state)
        # The rule's learning rate, decayed in its own dtype.
        rule_dtype = self.rule.slot_dtype(var_dtype)
        apply_state[(var_device, var_dtype)]["rule_lr"] = self._decayed_lr(rule_dtype)

    def _rule_lr(self, device, dtype, apply_state):
        key = (device, dtype.base_dtype)
        return ((apply_state or {}).get(key) or self._fallback_apply_state(*key))["rule_lr"]

    def _distributed_apply(self, distribution, grads_and_vars, apply_state, name):
        """Applies a step's dense gradients of each device and dtype together
        (elementwise: one `TfAdagrad>MultiApplyDense`), then lets the base
        class apply the rest and count the iteration. Under a strategy, or
        when the step is compiled by XLA, every variable goes through the
        base class, one at a time."""
        if tf.distribute.has_strategy() or _xla_fallback.in_xla():
            return super()._distributed_apply(distribution, grads_and_vars, apply_state, name)
        dense, remaining = [], []
        for gradient, variable in grads_and_vars:
            # The base class applies a constraint after the variable's update.
            if (
                isinstance(variable, tf.Variable)
                and variable.constraint is None
                and not isinstance(gradient, tf.IndexedSlices)
                and self.rule.is_fused(variable.dtype)
                and self.rule.groups(variable.dtype)
                and not _half_precision.rounds_stochastically(self, variable)
            ):
                dense.append((variable, self.get_slot(variable, self.rule.slot_name), gradient))
            else:
                remaining.append((gradient, variable))
        updates = [
            _update_op(
                self.rule.apply_many,
                *zip(*group),
                self._rule_lr(*key, apply_state),
                self.epsilon,
                use_locking=self._use_locking,
            )
            for key, group in _update_rules.group_by_device_and_dtype(dense).items()
        ]
        with tf.control_dependencies(updates):
            return super()._distributed_apply(distribution, remaining, apply_state, name)

    def _resource_apply_dense(self, grad, handle, apply_state=None):
        if handle.dtype.base_dtype not in FLOAT_DTYPES:
            return super()._resource_apply_dense(grad, handle, apply_state)
        return self._apply(grad, handle, apply_state)

    def _resource_apply_sparse_duplicate_indices(self, grad, handle, indices, **kwargs):
        if handle.dtype.base_dtype not in FLOAT_DTYPES:
            return super()._resource_apply_sparse_duplicate_indices(grad, handle, indices, **kwargs)
        # The rule sums the rows of duplicate indices itself.
        return self._resource_apply_sparse(grad, handle, indices, **kwargs)

    def _resource_apply_sparse(self, grad, handle, indices, apply_state=None):
        if handle.dtype.base_dtype not in FLOAT_DTYPES:
            return super()._resource_apply_sparse(grad, handle, indices, apply_state)
        return self._apply(tf.IndexedSlices(grad, indices), handle, apply_state)

    def _apply(self, gradient, variable, apply_state):
        slot = self.get_slot(variable, self.rule.slot_name)
        lr = self._rule_lr(variable.device, variable.dtype, apply_state)
        rounding_key = _half_precision.rounding_key(
            self, variable, self._variable_indices[_var_key(variable)]
        )
        return _update_op(
            self.rule.apply,
            variable,
            slot,
            gradient,
            lr,
            self.epsilon,
            rounding_key=rounding_key,
            use_locking=self._use_locking,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            learning_rate=self._serialize_hyperparameter("learning_rate"),
            decay=self._initial_decay,
            initial_accumulator_value=self._initial_accumulator_value,
            epsilon=self.epsilon,
        )
        # Only when set, so that the default config stays tf_keras' Adagrad's.
        config.update(_half_precision.config(self))
        return config


def _update_op(update, *args, **kwargs):
    """Runs `update(*args, **kwargs)` (a rule's, which returns nothing) and
    returns an op that runs it, or None when executing eagerly. OptimizerV2
    makes the train op depend on what `_resource_apply_*` return: in a
    graph, without that op a session would never run the update."""
    if tf.executing_eagerly():
        update(*args, **kwargs)
        return None
    graph = tf.compat.v1.get_default_graph()
    num_ops_before = len(graph.get_operations())
    update(*args, **kwargs)
    return tf.group(*graph.get_operations()[num_ops_before:])
