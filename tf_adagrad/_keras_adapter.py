"""Keras 3's optimizer hooks on an update rule (`tf_adagrad/_update_rules.py`)."""

import keras
import tensorflow as tf
from keras.src.optimizers import base_optimizer

from tf_adagrad import (
    _gradient_clipping,
    _loss_scaling,
    _update_rules,
    _weight_decay,
    _xla_fallback,
    sharded,
)
from tf_adagrad._rule_optimizer import RuleOptimizer, public_name
from tf_adagrad._variables import as_tf_variable, backing_variable


class KerasOptimizer(RuleOptimizer, sharded.ShardedUpdates, keras.optimizers.Optimizer):
    """A Keras 3 optimizer that updates variables by its `rule`: fused ops,
    or plain TensorFlow ops under XLA and for the dtypes the kernels lack."""

    framework = "a Keras 3 optimizer"
    base_arguments = _weight_decay.documented_with(base_optimizer.base_optimizer_keyword_args)

    def __init__(
        self, learning_rate, initial_accumulator_value, epsilon, weight_decay_rows="all", **kwargs
    ):
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                f"{public_name(type(self))} runs TensorFlow ops, so it needs the TensorFlow "
                f"Keras backend; the active backend is {keras.backend.backend()!r}. Set "
                "KERAS_BACKEND=tensorflow before importing keras, or use keras.optimizers.Adagrad."
            )
        initial_accumulator_value, epsilon = self._checked(initial_accumulator_value, epsilon)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.initial_accumulator_value = initial_accumulator_value
        self.epsilon = epsilon
        self.weight_decay_rows = _weight_decay.checked_rows_mode(weight_decay_rows)
        # Keys of the variables whose rows decay in `update_step` (with
        # weight_decay_rows="in_batch": those with sparse gradients), set
        # by `apply` while it builds the step.
        self._decayed_in_update = frozenset()

    def build(self, var_list):
        if self.built:
            return
        self._check_dtypes(var_list)
        super().build(var_list)
        # Named and ordered as Keras' Adagrad's accumulators, so that
        # checkpoints and .keras files load into either optimizer.
        slots = [
            None if getattr(v, "overwrite_with_gradient", False) else self._add_slot(v)
            for v in var_list
        ]
        setattr(self, self.rule.slots_attribute, slots)

    def _add_slot(self, variable):
        """Named and placed as `add_variable_from_reference` would, which
        cannot give the slot another shape or dtype."""
        initializer = keras.initializers.Constant(self.initial_accumulator_value)
        dtype = self.rule.slot_dtype(variable.dtype)
        reference = getattr(variable, "path", variable.name).replace("/", "_").replace(":", "_")

        def add():
            return self.add_variable(
                shape=tuple(self.rule.slot_shape(variable.shape)),
                initializer=initializer,
                dtype=dtype.name,
                name=f"{reference}_{self.rule.slot_name}",
            )

        if sharded.is_sharded(variable):
            with sharded.shards_beside(variable, initializer, dtype, self.rule.slot_shape):
                return add()
        with self._distribution_strategy.extended.colocate_vars_with(backing_variable(variable)):
            return add()

    def add_variable_from_reference(self, reference_variable, name=None, initializer="zeros"):
        # What Keras adds for a sharded variable (an EMA, an accumulated
        # gradient) is sharded beside it too.
        if not sharded.is_sharded(reference_variable):
            return super().add_variable_from_reference(reference_variable, name, initializer)
        with sharded.shards_beside(reference_variable, initializer):
            return super().add_variable_from_reference(reference_variable, name, initializer)

    def _clip_gradients(self, grads):
        """Norm clipping that counts a sparse gradient as its densified self
        and keeps it sparse (`tf_adagrad/_gradient_clipping.py`); without
        sparse gradients, Keras' own."""
        if not _gradient_clipping.has_sparse(grads):
            return super()._clip_gradients(grads)
        if self.clipnorm and self.clipnorm > 0:
            return [
                None if g is None else _gradient_clipping.clip_by_norm(g, self.clipnorm)
                for g in grads
            ]
        if self.global_clipnorm and self.global_clipnorm > 0:
            return _gradient_clipping.clip_by_global_norm(grads, self.global_clipnorm)
        return super()._clip_gradients(grads)

    def _slot(self, variable):
        return getattr(self, self.rule.slots_attribute)[self._get_variable_index(variable)]

    def apply(self, grads, trainable_variables=None):
        # Keras' base class unscales each gradient with `/ loss_scale_factor`,
        # which tf.IndexedSlices lacks; these slices divide their values only.
        if self.loss_scale_factor is not None:
            grads = _loss_scaling.unscalable(grads)
        if self.weight_decay is not None and self.weight_decay_rows == "in_batch":
            variables = (
                self._trainable_variables if trainable_variables is None else trainable_variables
            )
            self._decayed_in_update = frozenset(
                self._var_key(v)
                for g, v in zip(grads, variables)
                if isinstance(g, tf.IndexedSlices)
            )
        return super().apply(grads, trainable_variables)

    def _apply_weight_decay(self, variables):
        """Keras' weight decay, one fused pass per variable; rows decayed in
        `update_step` are left to it (`tf_adagrad/_weight_decay.py`)."""
        _weight_decay.apply(self, variables, skip=self._decayed_in_update)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        """All of a step's updates: the dense gradients of each device and
        dtype together (elementwise: one `TfAdagrad>MultiApplyDense`), each
        sparse gradient and each sharded variable on its own.

        Under a `tf.distribute` strategy, Keras' TensorFlow backend reduces
        the gradients and updates each variable through the strategy; that
        path, and XLA's, stay per variable.
        """
        if tf.distribute.has_strategy() or _xla_fallback.in_xla():
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        dense = []
        for gradient, variable in zip(grads, trainable_variables):
            if (
                isinstance(gradient, tf.IndexedSlices)
                or sharded.is_sharded(variable)
                or not self.rule.is_fused(variable.dtype)
            ):
                self.update_step(gradient, variable, learning_rate)
                continue
            slot = as_tf_variable(self._slot(variable), self.rule.slot_name)
            variable = as_tf_variable(variable, "variable")
            dense.append((variable, slot, tf.cast(gradient, variable.dtype)))
        for group in _update_rules.group_by_device_and_dtype(dense).values():
            self.rule.apply_many(*zip(*group), learning_rate, self.epsilon)

    def update_step(self, gradient, variable, learning_rate):
        """Update step given gradient and the associated model variable."""
        slot = self._slot(variable)
        gradient = tf.cast(gradient, variable.dtype)
        decay_rows = (
            isinstance(gradient, tf.IndexedSlices)
            and self._var_key(variable) in self._decayed_in_update
            and self._use_weight_decay(variable)
        )
        if not sharded.is_sharded(variable):
            updates = [
                (
                    gradient,
                    as_tf_variable(variable, "variable"),
                    as_tf_variable(slot, self.rule.slot_name),
                )
            ]
        else:
            updates = zip(
                sharded.split_by_shard(gradient, backing_variable(variable)),
                sharded.shards(variable),
                sharded.shards(slot),
            )
        for part_gradient, part, slot_part in updates:
            if decay_rows:
                _weight_decay.decay_rows(
                    part, learning_rate, self.weight_decay, part_gradient.indices
                )
            self.rule.apply(part, slot_part, part_gradient, learning_rate, self.epsilon)

    def get_config(self):
        config = super().get_config()
        config.update(
            initial_accumulator_value=self.initial_accumulator_value, epsilon=self.epsilon
        )
        # Only when set, so that the default config stays Keras' Adagrad's.
        if self.weight_decay_rows != "all":
            config["weight_decay_rows"] = self.weight_decay_rows
        return config
