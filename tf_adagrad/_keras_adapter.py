"""Keras 3's optimizer hooks on an update rule (`tf_adagrad/_update_rules.py`)."""

import keras
import tensorflow as tf
from keras.src.optimizers import base_optimizer

from tf_adagrad import _gradient_clipping, _loss_scaling, _update_rules, _xla_fallback, sharded
from tf_adagrad._rule_optimizer import RuleOptimizer, public_name
from tf_adagrad._variables import as_tf_variable, backing_variable


class KerasOptimizer(RuleOptimizer, sharded.ShardedUpdates, keras.optimizers.Optimizer):
    """A Keras 3 optimizer that updates variables by its `rule`: fused ops,
    or plain TensorFlow ops under XLA and for the dtypes the kernels lack."""

    framework = "a Keras 3 optimizer"
    base_arguments = base_optimizer.base_optimizer_keyword_args

    def __init__(self, learning_rate, initial_accumulator_value, epsilon, **kwargs):
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
        return super().apply(grads, trainable_variables)

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
        if not sharded.is_sharded(variable):
            variable = as_tf_variable(variable, "variable")
            slot = as_tf_variable(slot, self.rule.slot_name)
            self.rule.apply(variable, slot, gradient, learning_rate, self.epsilon)
            return
        for shard_gradient, shard, slot_shard in zip(
            sharded.split_by_shard(gradient, backing_variable(variable)),
            sharded.shards(variable),
            sharded.shards(slot),
        ):
            self.rule.apply(shard, slot_shard, shard_gradient, learning_rate, self.epsilon)

    def get_config(self):
        config = super().get_config()
        config.update(
            initial_accumulator_value=self.initial_accumulator_value, epsilon=self.epsilon
        )
        return config
