"""Keras 3's optimizer hooks on an update rule (`tf_adagrad/_update_rules.py`)."""

import keras
import tensorflow as tf
from keras.src.optimizers import base_optimizer
from tensorflow.python.distribute import distribute_lib

from tf_adagrad import (
    _gradient_accumulation,
    _gradient_clipping,
    _half_precision,
    _loss_scaling,
    _moving_average,
    _update_rules,
    _weight_decay,
    _xla_fallback,
    sharded,
)
from tf_adagrad._rule_optimizer import RuleOptimizer, public_name, with_arguments
from tf_adagrad._variables import as_tf_variable, backing_variable


class KerasOptimizer(RuleOptimizer, sharded.ShardedUpdates, keras.optimizers.Optimizer):
    """A Keras 3 optimizer that updates variables by its `rule`: fused ops,
    or plain TensorFlow ops under XLA and for the dtypes the kernels lack."""

    framework = "a Keras 3 optimizer"
    base_arguments = with_arguments(
        base_optimizer.base_optimizer_keyword_args,
        _weight_decay.ARGUMENT_DOC,
        _half_precision.ARGUMENT_DOC,
    )

    def __init__(
        self,
        learning_rate,
        initial_accumulator_value,
        epsilon,
        weight_decay_rows="all",
        stochastic_rounding=False,
        accumulator_dtype=None,
        **kwargs,
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
        _half_precision.configure(self, stochastic_rounding, accumulator_dtype)
        # The step's gradients by variable key, set by `apply` while it
        # builds the step: when and what weight decay decays.
        self._step_gradients = {}

    def build(self, var_list):
        if self.built:
            return
        self._check_dtypes(var_list)
        # Decided once, before Keras' build asks for its accumulators.
        in_strategy = (
            tf.distribute.has_strategy()
            or self._distribution_strategy is not distribute_lib._get_default_strategy()
        )
        self._accumulates_rows = bool(self.gradient_accumulation_steps) and not in_strategy
        super().build(var_list)
        if self._accumulates_rows:
            self._gradient_rows = [
                a
                for a in self._accumulated_gradients
                if isinstance(a, _gradient_accumulation.RowAccumulator)
            ]
            for i, accumulator in enumerate(self._gradient_rows):
                self._track_trackable(accumulator, name=f"gradient_rows_{i}")
        # Named and ordered as Keras' Adagrad's accumulators, so that
        # checkpoints and .keras files load into either optimizer.
        slots = [
            None if getattr(v, "overwrite_with_gradient", False) else self._add_slot(v)
            for v in var_list
        ]
        setattr(self, self.rule.slots_attribute, slots)
        # After the slots, so that Keras' checkpoints still line up.
        self._ema_last_steps = [None] * len(var_list)
        if self.use_ema and not in_strategy:
            self._ema_last_steps = [
                None
                if average is None or sharded.is_sharded(v)
                else _moving_average.last_step_variable(
                    self, v, lambda shape, name, v=v: self._add_counter(v, shape, name)
                )
                for v, average in zip(var_list, self._model_variables_moving_average)
            ]
        # Last, for the same reason; saved, so that a resumed run draws on.
        self._rounding_seed = None
        if self.stochastic_rounding:
            self._rounding_seed = self.add_variable(
                shape=(),
                initializer=keras.initializers.Constant(_half_precision.new_seed()),
                dtype="int64",
                name="stochastic_rounding_seed",
            )

    def _add_counter(self, variable, shape, name):
        reference = getattr(variable, "path", variable.name).replace("/", "_").replace(":", "_")
        with self._distribution_strategy.extended.colocate_vars_with(backing_variable(variable)):
            return self.add_variable(
                shape=shape, initializer="zeros", dtype="int64", name=f"{reference}_{name}"
            )

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
        if (
            name == _gradient_accumulation.KERAS_NAME
            and getattr(self, "_accumulates_rows", False)
            and not getattr(reference_variable, "overwrite_with_gradient", False)
        ):
            # Keras' build asks for a dense accumulator per variable; rows
            # and a dense sum that stay empty until used, instead.
            return self._add_row_accumulator(reference_variable)
        # What Keras adds for a sharded variable (an EMA, an accumulated
        # gradient) is sharded beside it too.
        if not sharded.is_sharded(reference_variable):
            return super().add_variable_from_reference(reference_variable, name, initializer)
        with sharded.shards_beside(reference_variable, initializer):
            return super().add_variable_from_reference(reference_variable, name, initializer)

    def _add_row_accumulator(self, variable):
        reference = getattr(variable, "path", variable.name).replace("/", "_").replace(":", "_")
        with self._distribution_strategy.extended.colocate_vars_with(backing_variable(variable)):
            with tf.name_scope(self.name):
                return _gradient_accumulation.RowAccumulator(
                    variable, f"{reference}_{_gradient_accumulation.KERAS_NAME}"
                )

    def _backend_apply_gradients(self, grads, trainable_variables):
        """Keras' gradient accumulation, with the sparse gradients' rows
        kept as rows (`tf_adagrad/_gradient_accumulation.py`); without a
        `tf.distribute` strategy, where Keras' dense accumulation runs."""
        if not getattr(self, "_accumulates_rows", False):
            return super()._backend_apply_gradients(grads, trainable_variables)
        steps = self.gradient_accumulation_steps
        accumulators = [
            self._accumulated_gradients[self._get_variable_index(v)] for v in trainable_variables
        ]
        if _xla_fallback.in_xla():
            for accumulator in accumulators:
                accumulator.allocate_dense()

        def update():
            # As Keras' base class: the mean gradient clipped, weight
            # decay, the update, and the accumulators zeroed.
            averaged = [a.average(g, steps) for g, a in zip(grads, accumulators)]
            averaged = self._clip_gradients(averaged)
            self._apply_weight_decay(trainable_variables)
            self._backend_update_step(averaged, trainable_variables, self.learning_rate)
            self._backend_reset_gradient_accumulators()

        def add():
            for gradient, accumulator in zip(grads, accumulators):
                accumulator.add(gradient)

        is_update_step = (self._iterations + 1) % steps == 0
        tf.cond(is_update_step, update, add)
        if self.use_ema:
            # As Keras' base class, after its accumulation.
            self._update_model_variables_moving_average(self._trainable_variables)
            if self.ema_overwrite_frequency:
                overwrite = (self.iterations + 1) % self.ema_overwrite_frequency == 0
                tf.cond(
                    overwrite,
                    lambda: self._overwrite_model_variables_with_average_value(
                        self._trainable_variables
                    ),
                    lambda: None,
                )

    def _backend_reset_gradient_accumulators(self):
        if not getattr(self, "_accumulates_rows", False):
            return super()._backend_reset_gradient_accumulators()
        for accumulator in self._accumulated_gradients:
            if isinstance(accumulator, _gradient_accumulation.RowAccumulator):
                accumulator.reset()
            elif accumulator is not None:
                accumulator.assign(tf.zeros(accumulator.shape, accumulator.dtype))

    def save_own_variables(self, store):
        # Every average up to date in the file.
        self._bring_averages_up_to_date(getattr(self, "_trainable_variables", []), False)
        super().save_own_variables(_gradient_accumulation.StoreView(store))
        for i, accumulator in enumerate(getattr(self, "_gradient_rows", ())):
            for key, variable in accumulator.state().items():
                store[f"gradient_rows_{i}_{key}"] = variable.numpy()

    def load_own_variables(self, store):
        super().load_own_variables(_gradient_accumulation.StoreView(store))
        for i, accumulator in enumerate(getattr(self, "_gradient_rows", ())):
            for key, variable in accumulator.state().items():
                name = f"gradient_rows_{i}_{key}"
                if name in store.keys():
                    variable.assign(store[name])

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
        if self.weight_decay is not None or self.use_ema:
            variables = (
                self._trainable_variables if trainable_variables is None else trainable_variables
            )
            self._step_gradients = {self._var_key(v): g for g, v in zip(grads, variables)}
        self._in_apply = True
        try:
            return super().apply(grads, trainable_variables)
        finally:
            self._in_apply = False

    def _ema_state(self, variable):
        """(average, last step per row) of `variable`, as tf.Variables, or
        None where Keras' own moving average runs."""
        index = self._get_variable_index(variable)
        last_step = getattr(self, "_ema_last_steps", [None] * (index + 1))[index]
        if last_step is None:
            return None
        average = self._model_variables_moving_average[index]
        return as_tf_variable(average, "average"), as_tf_variable(last_step, "last_step")

    def _update_model_variables_moving_average(self, trainable_variables):
        """Keras' moving averages; a variable with a sparse gradient (after
        the first step) brought its rows up to date before their update, and
        its other rows wait (`tf_adagrad/_moving_average.py`)."""
        if not self.use_ema:
            return
        completed = _moving_average.steps_done(self, in_apply=False)
        for variable, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is None:
                continue
            state = self._ema_state(variable)
            gradient = self._step_gradients.get(self._var_key(variable))

            def keras_average(variable=variable, average=average, state=state):
                # Keras' own formula and ops, bit for bit; every row current.
                not_first = keras.ops.not_equal(self.iterations, 0)
                momentum = keras.ops.cast(not_first, variable.dtype) * self.ema_momentum
                average.assign(
                    keras.ops.add(
                        keras.ops.multiply(momentum, average),
                        keras.ops.multiply(keras.ops.subtract(1, momentum), variable),
                    )
                )
                if state is not None:
                    state[1].assign(tf.fill(tf.shape(state[1]), completed + 1))

            if state is not None and gradient is None:
                # Not updated this step: rows left behind, if any, catch up.
                _moving_average.stale_rows_up_to_date(
                    *state, backing_variable(variable), self.ema_momentum, completed
                )
            if state is not None and _moving_average.is_lazy(self, variable, state[1], gradient):
                tf.cond(
                    keras.ops.not_equal(self.iterations, 0),
                    lambda: None,
                    keras_average,
                )
            else:
                keras_average()

    def _bring_averages_up_to_date(self, variables, in_apply):
        if not getattr(self, "use_ema", False) or not getattr(self, "built", False):
            return
        step = _moving_average.steps_done(self, in_apply)
        for variable in variables:
            state = self._ema_state(variable)
            if state is not None:
                _moving_average.bring_up_to_date(
                    *state, backing_variable(variable), self.ema_momentum, step
                )

    def _overwrite_model_variables_with_average_value(self, trainable_variables):
        # Every row's average current before it overwrites the weights.
        self._bring_averages_up_to_date(trainable_variables, getattr(self, "_in_apply", False))
        return super()._overwrite_model_variables_with_average_value(trainable_variables)

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        # A checkpoint saves every average up to date (and restores into
        # any optimizer).
        if save_type == "checkpoint" and tf.executing_eagerly():
            self._bring_averages_up_to_date(getattr(self, "_trainable_variables", []), False)
        return super()._trackable_children(save_type, **kwargs)

    def _apply_weight_decay(self, variables):
        """Keras' weight decay, one fused pass per variable; rows decayed in
        `update_step` are left to it (`tf_adagrad/_weight_decay.py`)."""
        _weight_decay.apply(self, variables, self._step_gradients)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        """All of a step's updates: the dense gradients of each device and
        dtype together (elementwise: one `TfAdagrad>MultiApplyDense`), each
        sparse gradient and each sharded variable on its own.

        Under a `tf.distribute` strategy, Keras' TensorFlow backend reduces
        the gradients and updates each variable through the strategy; that
        path, and XLA's, stay per variable.
        """
        for gradient, variable in zip(grads, trainable_variables):
            state = self._ema_state(variable) if self.use_ema else None
            if state is None:
                continue
            completed = _moving_average.steps_done(self, in_apply=False)
            if _moving_average.is_lazy(self, variable, state[1], gradient):
                # The rows this step changes, brought up to date first.
                _moving_average.rows_before_update(
                    *state,
                    backing_variable(variable),
                    self.ema_momentum,
                    completed,
                    gradient.indices,
                )
            else:
                _moving_average.stale_rows_up_to_date(
                    *state, backing_variable(variable), self.ema_momentum, completed
                )
        if tf.distribute.has_strategy() or _xla_fallback.in_xla():
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        dense = []
        for gradient, variable in zip(grads, trainable_variables):
            if (
                isinstance(gradient, tf.IndexedSlices)
                or sharded.is_sharded(variable)
                or not self.rule.is_fused(variable.dtype)
                or not self.rule.groups(variable.dtype)
                or _half_precision.rounds_stochastically(self, variable)
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
        step_gradient = self._step_gradients.get(self._var_key(variable))
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
        for shard, (part_gradient, part, slot_part) in enumerate(updates):
            _weight_decay.in_update_step(self, variable, part, part_gradient, step_gradient)
            rounding_key = _half_precision.rounding_key(
                self, variable, self._get_variable_index(variable), shard
            )
            self.rule.apply(
                part,
                slot_part,
                part_gradient,
                learning_rate,
                self.epsilon,
                rounding_key=rounding_key,
            )

    def get_config(self):
        config = super().get_config()
        config.update(
            initial_accumulator_value=self.initial_accumulator_value, epsilon=self.epsilon
        )
        # Only when set, so that the default config stays Keras' Adagrad's.
        if self.weight_decay_rows != "all":
            config["weight_decay_rows"] = self.weight_decay_rows
        config.update(_half_precision.config(self))
        return config
