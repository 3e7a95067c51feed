"""`tf_adagrad.Adagrad`: Keras 3's Adagrad on the fused ops."""

import functools

import keras
import tensorflow as tf
from tensorflow.python.distribute.sharded_variable import ShardedVariable
from tensorflow.python.ops import control_flow_util

from tf_adagrad import ops


@keras.saving.register_keras_serializable(package="tf_adagrad")
class Adagrad(keras.optimizers.Optimizer):
    """Optimizer that implements the Adagrad algorithm, on fused kernels.

    A drop-in replacement for `keras.optimizers.Adagrad` (same arguments,
    same defaults, same math, same variables), for the TensorFlow backend.
    A step runs the dense updates of all variables in one fused op per
    device and dtype (the work split across threads by elements), and each
    sparse update in one fused op, instead of a chain of whole-tensor ops
    per variable. A `tf.IndexedSlices` gradient, such as an `Embedding`
    layer's, updates only the rows it names: rows that share an index are
    summed first, so the result equals a dense step with the densified
    gradient, and the rest of the table is never read. The update writes in
    place: it never makes later reads of the table copy it (TensorFlow's own
    sparse ops switch a variable to copy-on-read, so that every step of an
    `Embedding` layer, which reads its whole table, would copy the table).
    Keras 3's Adagrad instead reads the whole table every step, computes
    over all of it, and writes the named rows.

    Adagrad is an optimizer with parameter-specific learning rates, which
    are adapted relative to how frequently a parameter gets updated during
    training. The more updates a parameter receives, the smaller the
    updates. For each variable `v`, its accumulator `a` and gradient `g`:

    ```
    a = a + g * g
    v = v - learning_rate * g / sqrt(a + epsilon)
    ```

    float16 and bfloat16 variables are updated in float32 and rounded once.

    Args:
        learning_rate: A float, a
            `keras.optimizers.schedules.LearningRateSchedule` instance, or a
            callable that takes no arguments and returns the actual value to
            use. The learning rate. Defaults to `0.001`. Adagrad tends to
            benefit from higher initial learning rates than other optimizers;
            the original paper's form is `1.0`.
        initial_accumulator_value: Floating point value. Starting value of the
            accumulators (the per-parameter sums of squared gradients). Must
            be non-negative. Defaults to `0.1`.
        epsilon: Small floating point value added to the accumulator inside
            the square root, for numerical stability. Defaults to `1e-7`.
        weight_decay: Float. If set, weight decay is applied.
        clipnorm: Float. If set, the gradient of each weight is individually
            clipped so that its norm is no higher than this value.
        clipvalue: Float. If set, the gradient of each weight is clipped to be
            no higher than this value.
        global_clipnorm: Float. If set, the gradient of all weights is clipped
            so that their global norm is no higher than this value.
        use_ema: Boolean, defaults to `False`. If `True`, an exponential
            moving average (EMA) of the model's weights is kept, and
            periodically written over the weights.
        ema_momentum: Float, defaults to `0.99`. Only used if `use_ema=True`:
            `new_average = ema_momentum * old_average +
            (1 - ema_momentum) * current_variable_value`.
        ema_overwrite_frequency: Int or `None`, defaults to `None`. Only used
            if `use_ema=True`. Every `ema_overwrite_frequency` iterations the
            model variables are overwritten by their moving average. If
            `None`, call `optimizer.finalize_variable_values()` at the end of
            training (`fit()` does this after the last epoch).
        loss_scale_factor: Float or `None`. If a float, the loss is multiplied
            by it before computing gradients, and the gradients by its
            inverse before updating variables. Useful against underflow in
            mixed precision training; `keras.optimizers.LossScaleOptimizer`
            sets one automatically.
        gradient_accumulation_steps: Int or `None`. If an int, variables are
            updated every `gradient_accumulation_steps` steps only, with the
            average of the gradients since the last update.
        name: String. The name of the optimizer, used for the names of its
            variables.

    Under XLA (`jit_compile=True`, which `fit()` picks by default on a GPU
    without a distribution strategy) the fused kernels cannot be compiled,
    so the same math runs as plain TensorFlow ops instead; sparse gradients
    still touch only their rows.

    Usage:

    >>> model.compile(optimizer=tf_adagrad.Adagrad(learning_rate=0.05),
    ...               loss="binary_crossentropy")

    Reference:

    - [Duchi et al., 2011](
        http://www.jmlr.org/papers/volume12/duchi11a/duchi11a.pdf).
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
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        **kwargs,
    ):
        backend = keras.backend.backend()
        if backend != "tensorflow":
            raise RuntimeError(
                "tf_adagrad.Adagrad runs TensorFlow ops, so it needs the "
                f"TensorFlow Keras backend; the active backend is {backend!r}. "
                "Set KERAS_BACKEND=tensorflow before importing keras, or use "
                "keras.optimizers.Adagrad."
            )
        if not initial_accumulator_value >= 0:
            raise ValueError(
                "`initial_accumulator_value` must be non-negative. Received: "
                f"initial_accumulator_value={initial_accumulator_value}"
            )
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            **kwargs,
        )
        self.initial_accumulator_value = initial_accumulator_value
        self.epsilon = epsilon

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        # Same variable names and order as keras.optimizers.Adagrad, so
        # checkpoints and .keras files load into either optimizer.
        self._accumulators = self.add_optimizer_variables(
            var_list,
            "accumulator",
            initializer=keras.initializers.Constant(self.initial_accumulator_value),
        )

    def add_variable_from_reference(self, reference_variable, name=None, initializer="zeros"):
        reference = _backing_variable(reference_variable)
        if not isinstance(reference, ShardedVariable):
            return super().add_variable_from_reference(reference_variable, name, initializer)
        # Keras would make one unsharded variable on one parameter server.
        # Shard the accumulator like the variable instead, each shard beside
        # its variable shard, so that each shard's update is local to one
        # parameter server.
        initializer = keras.initializers.get(initializer)
        dtype = reference_variable.dtype

        def create_shards_beside_reference_shards(next_creator, **kwargs):
            shards = []
            for i, reference_shard in enumerate(reference.variables):
                shard_kwargs = dict(kwargs)
                shard_kwargs.update(
                    name=f"{kwargs['name']}/part_{i}",
                    shape=reference_shard.shape,
                    initial_value=functools.partial(initializer, reference_shard.shape, dtype),
                    colocate_with=reference_shard,
                )
                shards.append(next_creator(**shard_kwargs))
            return ShardedVariable(shards)

        with tf.variable_creator_scope(create_shards_beside_reference_shards):
            return super().add_variable_from_reference(reference_variable, name, initializer)

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        # Keras hands every variable to `strategy.extended.update`, which
        # cannot colocate with a ShardedVariable (ParameterServerStrategy
        # with a `variable_partitioner`). Such variables are updated shard by
        # shard instead; each shard's op runs where that shard lives.
        sharded = [(g, v) for g, v in grads_and_vars if isinstance(v, ShardedVariable)]
        unsharded = [(g, v) for g, v in grads_and_vars if not isinstance(v, ShardedVariable)]
        super()._distributed_tf_update_step(distribution, unsharded, learning_rate)
        for gradient, variable in sharded:
            if gradient is not None:
                self.update_step(gradient, variable, learning_rate)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        """All of a step's updates: the dense gradients in one
        `TfAdagrad>MultiApplyDense` per device and dtype, each sparse
        gradient (and each sharded variable) on its own.

        Under a `tf.distribute` strategy, Keras' TensorFlow backend reduces
        the gradients and updates each variable through the strategy; that
        path, and XLA's, stay per variable.
        """
        if tf.distribute.has_strategy() or _in_xla():
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        dense_groups = {}
        for grad, variable in zip(grads, trainable_variables):
            if isinstance(grad, tf.IndexedSlices) or isinstance(_backing_variable(variable), ShardedVariable):
                self.update_step(grad, variable, learning_rate)
            else:
                tf_variable = ops._as_tf_variable(variable, "variable")
                key = (tf_variable.device, tf_variable.dtype)
                dense_groups.setdefault(key, []).append((grad, variable, tf_variable))
        for (_, dtype), updates in dense_groups.items():
            accumulators = [
                ops._as_tf_variable(self._accumulators[self._get_variable_index(variable)], "accumulator")
                for _, variable, _ in updates
            ]
            ops.multi_apply_adagrad(
                [tf_variable for _, _, tf_variable in updates],
                accumulators,
                tf.cast(learning_rate, dtype),
                self._epsilon_as(dtype),
                [tf.cast(grad, dtype) for grad, _, _ in updates],
            )

    def update_step(self, gradient, variable, learning_rate):
        """Update step given gradient and the associated model variable."""
        accumulator = self._accumulators[self._get_variable_index(variable)]
        variable = _backing_variable(variable)
        accumulator = _backing_variable(accumulator)
        if isinstance(variable, ShardedVariable):
            for shard_gradient, shard, accumulator_shard in zip(
                _split_by_shard(gradient, variable), variable.variables, accumulator.variables
            ):
                self._update_variable(shard_gradient, shard, accumulator_shard, learning_rate)
        else:
            self._update_variable(gradient, variable, accumulator, learning_rate)

    def _update_variable(self, gradient, variable, accumulator, learning_rate):
        variable = ops._as_tf_variable(variable, "variable")
        accumulator = ops._as_tf_variable(accumulator, "accumulator")
        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype)
        epsilon = self._epsilon_as(dtype)
        in_xla = _in_xla()
        if isinstance(gradient, tf.IndexedSlices):
            values = tf.cast(gradient.values, dtype)
            if in_xla:
                _sparse_update_in_tf_ops(variable, accumulator, lr, epsilon, values, gradient.indices)
            else:
                ops.sparse_apply_adagrad(variable, accumulator, lr, epsilon, values, gradient.indices)
        else:
            gradient = tf.cast(gradient, dtype)
            if in_xla:
                _dense_update_in_tf_ops(variable, accumulator, lr, epsilon, gradient)
            else:
                ops.apply_adagrad(variable, accumulator, lr, epsilon, gradient)

    def _epsilon_as(self, dtype):
        # Python numbers convert straight to the dtype (not through float32).
        return tf.cast(tf.convert_to_tensor(self.epsilon, dtype_hint=dtype), dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon,
            }
        )
        return config


def _backing_variable(variable):
    return variable._value if isinstance(variable, keras.Variable) else variable


def _split_by_shard(gradient, variable):
    """`gradient` of a ShardedVariable (sharded on axis 0), one piece per shard.

    A dense gradient is sliced. An IndexedSlices gradient is partitioned by
    row, keeping position order within each shard (so duplicates are summed
    in the same order as unsharded), after a check that every index lies in
    the whole variable: an out-of-range index fails before any shard is
    written.
    """
    shard_rows = [shard.shape[0] for shard in variable.variables]
    if not isinstance(gradient, tf.IndexedSlices):
        return tf.split(gradient, shard_rows, axis=0)
    indices = gradient.indices
    num_rows = sum(shard_rows)
    in_range = tf.logical_and(indices >= 0, indices < num_rows)
    first_bad = tf.where(tf.logical_not(in_range))[:1, 0]
    name = variable.variables[0].name.split("/part_0")[0]
    check = tf.debugging.Assert(
        tf.reduce_all(in_range),
        [
            tf.strings.format(
                f"Expected every index of the gradient of the sharded variable {name} in "
                f"[0, {num_rows}); received indices{{}} = {{}}",
                (first_bad, tf.gather(indices, first_bad)),
            )
        ],
    )
    with tf.control_dependencies([check]):
        shard_starts = tf.constant(
            [sum(shard_rows[:i]) for i in range(len(shard_rows))], dtype=indices.dtype
        )
        shard_ids = tf.searchsorted(shard_starts[1:], indices, side="right", out_type=tf.int32)
        local_indices = indices - tf.gather(shard_starts, shard_ids)
    num_shards = len(shard_rows)
    return [
        tf.IndexedSlices(values, shard_indices)
        for values, shard_indices in zip(
            tf.dynamic_partition(gradient.values, shard_ids, num_shards),
            tf.dynamic_partition(local_indices, shard_ids, num_shards),
        )
    ]


def _in_xla():
    """Whether ops built now are compiled by XLA, which cannot run custom ops."""
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


# The fused kernels' math as plain TF ops, for XLA, which cannot compile
# custom ops. 16-bit types compute in float32, as the kernels do.


def _compute_dtype(dtype):
    return tf.float32 if dtype in (tf.float16, tf.bfloat16) else dtype


def _updated_rows(var_rows, accum_rows, lr, epsilon, grad_rows):
    dtype = var_rows.dtype
    compute = _compute_dtype(dtype)
    lr, epsilon, grad_rows = (tf.cast(x, compute) for x in (lr, epsilon, grad_rows))
    accum_rows = tf.cast(accum_rows, compute) + grad_rows * grad_rows
    var_rows = tf.cast(var_rows, compute) - lr * grad_rows / tf.sqrt(accum_rows + epsilon)
    return tf.cast(var_rows, dtype), tf.cast(accum_rows, dtype)


def _dense_update_in_tf_ops(variable, accumulator, lr, epsilon, gradient):
    new_var, new_accum = _updated_rows(
        variable.read_value(), accumulator.read_value(), lr, epsilon, gradient
    )
    accumulator.assign(new_accum)
    variable.assign(new_var)


def _sparse_update_in_tf_ops(variable, accumulator, lr, epsilon, values, indices):
    """Dense-equivalent sparse update with static shapes (XLA has no tf.unique).

    Rows are sorted stably by index and each run of equal indices is summed
    in position order, like the kernel. Every position then computes its
    row's new value from the run's sum, so positions that share an index
    scatter identical rows and the result does not depend on write order.
    Only the named rows are read and written.
    """
    order = tf.argsort(indices, stable=True)
    sorted_indices = tf.gather(indices, order)
    num_positions = tf.shape(indices)[0]
    starts_run = tf.concat([[True], sorted_indices[1:] != sorted_indices[:-1]], axis=0)
    starts_run = starts_run[:num_positions]  # no positions, no runs
    run_ids = tf.cumsum(tf.cast(starts_run, tf.int32)) - 1
    # Summed in the compute type, as the kernel does (16-bit sums would round).
    summed = tf.math.unsorted_segment_sum(
        tf.cast(tf.gather(values, order), _compute_dtype(values.dtype)),
        run_ids,
        num_segments=num_positions,
    )
    grad_rows = tf.gather(summed, run_ids)
    new_var, new_accum = _updated_rows(
        tf.gather(variable, sorted_indices),
        tf.gather(accumulator, sorted_indices),
        lr,
        epsilon,
        grad_rows,
    )
    accumulator.scatter_update(tf.IndexedSlices(new_accum, sorted_indices))
    variable.scatter_update(tf.IndexedSlices(new_var, sorted_indices))
