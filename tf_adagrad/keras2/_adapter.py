"""tf_keras' optimizer hooks (`tf_keras.optimizers.Optimizer`) on an update
rule (`tf_adagrad/_update_rules.py`)."""

import tensorflow as tf
import tf_keras
from tf_keras.src.optimizers import optimizer as tf_keras_optimizer

from tf_adagrad import (
    _half_precision,
    _moving_average,
    _update_rules,
    _weight_decay,
    _xla_fallback,
)
from tf_adagrad._rule_optimizer import RuleOptimizer, with_arguments
from tf_adagrad._variables import FLOAT_DTYPES

USE_LOCKING_DOC = """use_locking: Boolean. If `True`, every update holds its
    variables' locks exclusively. By default a sparse update of a variable
    in copy-on-read mode (as tf_keras' `Embedding` lookup leaves its table)
    holds them shared, TensorFlow's rule for sparse updates: concurrent
    updates of the same rows, as parameter-server workers send, may then
    overwrite one another (docs/distributed.md). Defaults to `False`."""


class TfKerasOptimizer(RuleOptimizer, tf_keras.optimizers.Optimizer):
    """A tf_keras optimizer that updates variables by its `rule`. Variables
    of a dtype the kernels lack (complex, which the elementwise rule trains)
    go to the next base class's own update: tf_keras' Adagrad's.

    tf_keras' Adagrad, a base of `keras2.Adagrad`, would set the same
    attributes in `__init__` and make the same accumulators in `build`:
    here both are done for every rule, on tf_keras' base class.
    """

    framework = "a tf_keras (Keras 2) optimizer"
    base_arguments = with_arguments(
        tf_keras_optimizer.base_optimizer_keyword_args,
        _weight_decay.ARGUMENT_DOC,
        _half_precision.ARGUMENT_DOC,
        USE_LOCKING_DOC,
    )

    def __init__(
        self,
        learning_rate,
        initial_accumulator_value,
        epsilon,
        weight_decay_rows="all",
        stochastic_rounding=False,
        accumulator_dtype=None,
        use_locking=False,
        **kwargs,
    ):
        initial_accumulator_value, epsilon = self._checked(initial_accumulator_value, epsilon)
        if not isinstance(use_locking, bool):
            raise TypeError(f"use_locking must be True or False, received: {use_locking!r}")
        tf_keras.optimizers.Optimizer.__init__(self, **kwargs)
        self.use_locking = use_locking
        _half_precision.configure(self, stochastic_rounding, accumulator_dtype)
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
        # tf_keras averages a variable only on the steps it has a gradient:
        # a per-row step and a count of the variable's own EMA steps
        # (`tf_adagrad/_moving_average.py`).
        self._ema_states, self._ema_variables = {}, []
        if self.use_ema and not tf.distribute.has_strategy():
            for variable in var_list:
                last_step = _moving_average.last_step_variable(
                    self,
                    variable,
                    lambda shape, name, v=variable: self._add_counter(v, shape, name),
                )
                if last_step is not None:
                    count = self._add_counter(variable, (), "average_steps")
                    self._ema_states[self._var_key(variable)] = (last_step, count)
                    self._ema_variables.append(variable)
        # Saved, so that a resumed run draws on.
        self._rounding_seed = None
        if self.stochastic_rounding:
            self._rounding_seed = tf.Variable(
                tf.constant(_half_precision.new_seed(), tf.int64),
                name="stochastic_rounding_seed",
                trainable=False,
            )
            self._variables.append(self._rounding_seed)

    def _add_counter(self, variable, shape, name):
        with tf.distribute.get_strategy().extended.colocate_vars_with(variable):
            counter = tf.Variable(
                tf.zeros(shape, tf.int64), name=f"{name}/{variable._shared_name}", trainable=False
            )
        self._variables.append(counter)
        return counter

    def _ema_state(self, variable):
        """(average, last step per row, the variable's EMA steps), or None
        where tf_keras' own moving average runs."""
        state = getattr(self, "_ema_states", {}).get(self._var_key(variable))
        if state is None:
            return None
        average = self._model_variables_moving_average[self._index_dict[self._var_key(variable)]]
        return (average, *state)

    def _ema_before_update(self, grads_and_vars):
        """The rows a sparse gradient changes, and a variable's rows left
        behind before a dense update, brought up to date first."""
        for gradient, variable in grads_and_vars:
            state = self._ema_state(variable) if self.use_ema else None
            if state is None:
                continue
            average, last_step, count = state
            if _moving_average.is_lazy(self, variable, last_step, gradient):
                _moving_average.rows_before_update(
                    average, last_step, variable, self.ema_momentum, count, gradient.indices
                )
            else:
                _moving_average.stale_rows_up_to_date(
                    average, last_step, variable, self.ema_momentum, count
                )

    def _update_model_variables_moving_average(self, var_list):
        """tf_keras' moving averages, but for the rows a sparse gradient did
        not change, which wait (`_ema_before_update`)."""
        whole = []
        for variable in var_list:
            state = self._ema_state(variable)
            gradient = self._step_gradients.get(self._var_key(variable))
            if state is not None:
                _, last_step, count = state
                if not _moving_average.is_lazy(self, variable, last_step, gradient):
                    last_step.assign(tf.fill(tf.shape(last_step), count + 1))
                count.assign_add(1)
                if _moving_average.is_lazy(self, variable, last_step, gradient):
                    continue
            whole.append(variable)
        super()._update_model_variables_moving_average(whole)

    def _bring_averages_up_to_date(self, variables):
        if not getattr(self, "use_ema", False) or not getattr(self, "_built", False):
            return
        for variable in variables:
            state = self._ema_state(variable)
            if state is not None:
                average, last_step, count = state
                _moving_average.bring_up_to_date(
                    average, last_step, variable, self.ema_momentum, count
                )

    def _overwrite_model_variables_with_average_value(self, var_list):
        # Every row's average current before it overwrites the weights.
        self._bring_averages_up_to_date(var_list)
        return super()._overwrite_model_variables_with_average_value(var_list)

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        # A checkpoint saves every average up to date.
        if save_type == "checkpoint" and tf.executing_eagerly():
            self._bring_averages_up_to_date(getattr(self, "_ema_variables", []))
        return super()._trackable_children(save_type, **kwargs)

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
        if self.weight_decay is not None or self.use_ema:
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
        if self.use_ema:
            self._ema_before_update(grads_and_vars)
        if tf.distribute.has_strategy() or self.jit_compile or _xla_fallback.in_xla():
            return super()._distributed_apply_gradients_fn(distribution, grads_and_vars, **kwargs)
        together = {
            position
            for position, (gradient, variable) in enumerate(grads_and_vars)
            if not isinstance(gradient, tf.IndexedSlices)
            and self.rule.is_fused(variable.dtype)
            and self.rule.groups(variable.dtype)
            and not _half_precision.rounds_stochastically(self, variable)
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
        rounding_key = _half_precision.rounding_key(
            self, variable, self._index_dict[self._var_key(variable)]
        )
        return self.rule.apply(
            variable,
            self._slot(variable),
            gradient,
            self.learning_rate,
            self.epsilon,
            use_locking=self.use_locking,
            rounding_key=rounding_key,
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
        if self.use_locking:
            config["use_locking"] = True
        config.update(_half_precision.config(self))
        return config
