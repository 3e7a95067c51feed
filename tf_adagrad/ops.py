"""Python wrappers for the fused Adagrad ops.

Every op applies Adagrad with epsilon where `epsilon_placement` says:

    accum += grad * grad
    var   -= lr * grad / sqrt(accum + epsilon)     # "inside_sqrt" (default):
                                                   # Keras 3 and tf_keras
    var   -= lr * grad / (sqrt(accum) + epsilon)   # "outside_sqrt": TensorFlow's
                                                   # ApplyAdagradV2, tf_keras'
                                                   # legacy optimizer

float16 and bfloat16 variables are computed in float32 and rounded once:
to nearest even, or stochastically with a `rounding_key` (seed, step),
which keeps small updates on average. An elementwise accumulator of a
16-bit variable may be float32.

`moving_average_rows` keeps an exponential moving average of a table's
rows lazily, each row brought up to date only when it changes.

Two ops decay weights as Keras' optimizers do before an update,
`var -= var * (weight_decay * lr)`: every element (`decay_weights`), or the
distinct rows a sparse gradient names (`decay_rows`).

The rowwise ops keep one accumulator per row of `var` (rows are the first
axis; a scalar is one row), as FBGEMM's exact rowwise Adagrad:

    accum[r] += mean(grad[r] * grad[r])
    var[r]   -= lr * grad[r] / (sqrt(accum[r]) + epsilon)

with `accum` and the row's arithmetic in `rowwise_accumulator_dtype(var.dtype)`.
"""

import tensorflow as tf

from tf_adagrad import _loader
from tf_adagrad._arguments import scalar_as
from tf_adagrad._loader import OpLibraryError
from tf_adagrad._variables import as_tf_variable, require_dtype

__all__ = [
    "EPSILON_PLACEMENTS",
    "OpLibraryError",
    "apply_adagrad",
    "decay_rows",
    "decay_weights",
    "load_library",
    "moving_average_rows",
    "multi_apply_adagrad",
    "rowwise_accumulator_dtype",
    "rowwise_apply_adagrad",
    "sparse_apply_adagrad",
    "sparse_rowwise_apply_adagrad",
]


def load_library():
    """Loads the op library, if `import tf_adagrad` has not already, and
    returns it: the module of TensorFlow's generated wrappers of the raw ops.

    `import tf_adagrad` loads it, which registers the ops with TensorFlow;
    calling this again costs nothing. A process that meets the ops without
    running this package's Python (a worker or parameter server of a
    cluster, before it starts its `tf.distribute.Server`) imports
    tf_adagrad, or calls this, first.

    Raises:
        OpLibraryError: The library is missing or was built for another
            TensorFlow; the message names the file, both versions and the
            command that rebuilds it.
    """
    return _loader.load_library()


# The values of the ops' `epsilon_placement` attribute.
EPSILON_PLACEMENTS = ("inside_sqrt", "outside_sqrt")


def _check_epsilon_placement(epsilon_placement):
    if epsilon_placement not in EPSILON_PLACEMENTS:
        raise ValueError(
            f"`epsilon_placement` must be one of {', '.join(map(repr, EPSILON_PLACEMENTS))}, "
            f"got {epsilon_placement!r}."
        )


def _rounding_keys(rounding_key):
    """The ops' `rounding_key` list input: empty (round to nearest), or one
    [2] int64 tensor (seed, step)."""
    if rounding_key is None:
        return []
    key = tf.convert_to_tensor(rounding_key)
    if not key.dtype.is_integer:
        raise TypeError(
            f"`rounding_key` must hold two integers (seed, step), got dtype {key.dtype.name}."
        )
    return [tf.cast(key, tf.int64)]


def _run(op, var, accum, lr, epsilon, grad, coefficient_dtype_of=None, rounding_key=None, **more):
    """Checks the inputs of a single-variable op and runs it: `op` names its
    generated wrapper, `more` holds its other inputs and attributes. lr and
    epsilon take the dtype `coefficient_dtype_of(var.dtype)` (by default
    `var`'s, as in Keras); `grad` must have `var`'s dtype."""
    var = as_tf_variable(var, "var")
    accum = as_tf_variable(accum, "accum")
    require_dtype(var, "`var`")
    grad = tf.convert_to_tensor(grad)
    if grad.dtype != var.dtype:
        raise TypeError(
            f"`grad` must have the dtype of `var` ({var.dtype.name}), got {grad.dtype.name}."
        )
    if "indices" in more:
        more["indices"] = _check_indices(more["indices"])
    coefficient_dtype = coefficient_dtype_of(var.dtype) if coefficient_dtype_of else var.dtype
    getattr(_loader.load_library(), op)(
        var=var.handle,
        accum=accum.handle,
        lr=scalar_as(lr, coefficient_dtype),
        epsilon=scalar_as(epsilon, coefficient_dtype),
        grad=grad,
        rounding_key=_rounding_keys(rounding_key),
        **more,
    )


def _check_indices(indices):
    indices = tf.convert_to_tensor(indices)
    if indices.dtype not in (tf.int32, tf.int64):
        raise TypeError(f"`indices` must be int32 or int64, got {indices.dtype.name}.")
    return indices


# The wrappers have no tensor-dependent Python control flow, so AutoGraph
# has nothing to convert; left to it, it would try (and warn) on the
# loader's os.path calls.
@tf.autograph.experimental.do_not_convert
def apply_adagrad(
    var,
    accum,
    lr,
    epsilon,
    grad,
    use_locking=False,
    epsilon_placement="inside_sqrt",
    rounding_key=None,
):
    """Applies one dense Adagrad step to `var` and `accum` in place.

    Args:
        var: A `tf.Variable` or `keras.Variable` of a floating dtype
            (float16, bfloat16, float32, float64).
        accum: The accumulator: a variable of `var`'s shape and dtype (or
            float32, for a float16 or bfloat16 `var`).
        lr: The learning rate; a scalar, cast to `var`'s dtype.
        epsilon: A scalar, added to `accum` inside the square root or to
            the square root, by `epsilon_placement`.
        grad: A tensor of `var`'s shape and dtype.
        use_locking: If `True`, the update holds the variables' locks
            exclusively, so concurrent updates do not interleave.
        epsilon_placement: `"inside_sqrt"` (Keras' formula) or
            `"outside_sqrt"` (TensorFlow's `ApplyAdagradV2`'s).
        rounding_key: `None` to round a 16-bit `var`'s new weights to
            nearest, or two integers `(seed, step)` to round them
            stochastically: up with probability equal to the distance from
            the value below, so that the expected weight is the float32
            result. The random bits depend only on the seed, the step and
            each element's position. Only for a float16 or bfloat16 `var`.

    Inside `tf.function`, automatic control dependencies order the update
    with the function's other uses of the variables; nothing is returned.
    """
    _check_epsilon_placement(epsilon_placement)
    _run(
        "tf_adagrad_apply_dense",
        *(var, accum, lr, epsilon, grad),
        rounding_key=rounding_key,
        use_locking=use_locking,
        epsilon_placement=epsilon_placement,
    )


@tf.autograph.experimental.do_not_convert
def sparse_apply_adagrad(
    var,
    accum,
    lr,
    epsilon,
    grad,
    indices,
    use_locking=False,
    epsilon_placement="inside_sqrt",
    rounding_key=None,
):
    """Applies an Adagrad step to the rows of `var` and `accum` named by `indices`.

    Rows of `grad` that share an index are summed before the update, so the
    result equals `apply_adagrad` with the densified gradient (what
    `tf.convert_to_tensor(tf.IndexedSlices(grad, indices, var.shape))`
    gives), deterministically. Only the rows named by `indices` are read or
    written.

    Args:
        var: A `tf.Variable` or `keras.Variable` of rank >= 1.
        accum: The accumulator, as in `apply_adagrad`.
        lr: The learning rate; a scalar, cast to `var`'s dtype.
        epsilon: A scalar, placed by `epsilon_placement`.
        grad: A tensor of shape `[len(indices)] + var.shape[1:]`.
        indices: A 1-D int32 or int64 tensor of row numbers in
            `[0, var.shape[0])`; an index out of range raises
            `InvalidArgumentError` and nothing is updated.
        use_locking: If `True`, the update holds the variables' locks
            exclusively; otherwise concurrent sparse updates may interleave.
        epsilon_placement: `"inside_sqrt"` or `"outside_sqrt"`, as in
            `apply_adagrad`.
        rounding_key: As in `apply_adagrad`.

    Nothing is returned.
    """
    _check_epsilon_placement(epsilon_placement)
    _run(
        "tf_adagrad_apply_sparse",
        *(var, accum, lr, epsilon, grad),
        rounding_key=rounding_key,
        indices=indices,
        use_locking=use_locking,
        epsilon_placement=epsilon_placement,
    )


@tf.autograph.experimental.do_not_convert
def multi_apply_adagrad(
    variables, accumulators, lr, epsilon, grads, epsilon_placement="inside_sqrt"
):
    """Applies one dense Adagrad step to several variables in one op.

    The same update as `apply_adagrad(variables[i], accumulators[i], lr,
    epsilon, grads[i], epsilon_placement=epsilon_placement)` for every `i`,
    in one op call whose work is split across threads by elements, not by
    variable (on a GPU: one kernel launch per 64 variables), so many small
    variables cost about as much as one large one. Every input is checked before any variable is written. All
    variables must be on one device.

    Args:
        variables: A non-empty list of `tf.Variable` or `keras.Variable`, all
            of one floating dtype (float16, bfloat16, float32, float64).
        accumulators: A list of the same length: `accumulators[i]` has the
            shape and dtype of `variables[i]`.
        lr: The learning rate; a scalar, cast to the variables' dtype.
        epsilon: A scalar, placed by `epsilon_placement`.
        grads: A list of the same length: `grads[i]` has the shape and dtype
            of `variables[i]`.
        epsilon_placement: `"inside_sqrt"` or `"outside_sqrt"`, as in
            `apply_adagrad`.

    Every dense update holds its variables' locks exclusively (taken in
    address order), so there is no `use_locking` argument. Nothing is
    returned.
    """
    _check_epsilon_placement(epsilon_placement)
    variables, accumulators, grads = list(variables), list(accumulators), list(grads)
    if not variables:
        raise ValueError("`variables` must hold at least one variable, got an empty list.")
    if len(accumulators) != len(variables) or len(grads) != len(variables):
        raise ValueError(
            f"`variables`, `accumulators` and `grads` must have the same length, got "
            f"{len(variables)}, {len(accumulators)} and {len(grads)}."
        )
    variables = [as_tf_variable(v, f"variables[{i}]") for i, v in enumerate(variables)]
    accumulators = [as_tf_variable(a, f"accumulators[{i}]") for i, a in enumerate(accumulators)]
    require_dtype(variables[0], "`variables[0]`")
    dtype = variables[0].dtype
    for i, variable in enumerate(variables):
        if variable.dtype != dtype:
            raise TypeError(
                f"`variables` must all have one dtype: `variables[0]` is {dtype.name}, "
                f"`variables[{i}]` is {variable.dtype.name}."
            )
    converted = []
    for i, grad in enumerate(grads):
        grad = tf.convert_to_tensor(grad)
        if grad.dtype != dtype:
            raise TypeError(
                f"`grads[{i}]` must have the dtype of `variables[{i}]` ({dtype.name}), got {grad.dtype.name}."
            )
        converted.append(grad)
    _loader.load_library().tf_adagrad_multi_apply_dense(
        var=[v.handle for v in variables],
        accum=[a.handle for a in accumulators],
        lr=scalar_as(lr, dtype),
        epsilon=scalar_as(epsilon, dtype),
        grad=converted,
        epsilon_placement=epsilon_placement,
    )


def rowwise_accumulator_dtype(dtype):
    """The dtype of a rowwise accumulator for variables of `dtype`: float64
    for float64 variables, float32 for float16, bfloat16 and float32 ones."""
    return tf.float64 if tf.as_dtype(dtype) == tf.float64 else tf.float32


@tf.autograph.experimental.do_not_convert
def rowwise_apply_adagrad(var, accum, lr, epsilon, grad, use_locking=False, rounding_key=None):
    """Applies one dense rowwise Adagrad step to `var` and `accum` in place.

    Args:
        var: A `tf.Variable` or `keras.Variable` of a floating dtype
            (float16, bfloat16, float32, float64).
        accum: The rowwise accumulator: a variable of shape `var.shape[:1]`
            (`()` for a scalar `var`) and dtype
            `rowwise_accumulator_dtype(var.dtype)`.
        lr: The learning rate; a scalar, cast to the accumulator's dtype.
        epsilon: A scalar added to the square root of the accumulator.
        grad: A tensor of `var`'s shape and dtype.
        use_locking: If `True`, the update holds the variables' locks
            exclusively, so concurrent updates do not interleave.
        rounding_key: As in `apply_adagrad`.

    Nothing is returned.
    """
    # The row's arithmetic, lr and epsilon are in the accumulator's dtype.
    _run(
        "tf_adagrad_rowwise_apply_dense",
        *(var, accum, lr, epsilon, grad),
        coefficient_dtype_of=rowwise_accumulator_dtype,
        rounding_key=rounding_key,
        use_locking=use_locking,
    )


@tf.autograph.experimental.do_not_convert
def sparse_rowwise_apply_adagrad(
    var, accum, lr, epsilon, grad, indices, use_locking=False, rounding_key=None
):
    """Applies a rowwise Adagrad step to the rows of `var` and `accum` named
    by `indices`.

    Rows of `grad` that share an index are summed before the update, so the
    result equals `rowwise_apply_adagrad` with the densified gradient,
    deterministically. Rows not named by `indices` are not read or written.

    Args:
        var: A `tf.Variable` or `keras.Variable` of rank >= 1.
        accum: The rowwise accumulator, as in `rowwise_apply_adagrad`.
        lr: The learning rate; a scalar, cast to the accumulator's dtype.
        epsilon: A scalar added to the square root of the accumulator.
        grad, indices, use_locking, rounding_key: As in
            `sparse_apply_adagrad`.

    Nothing is returned.
    """
    _run(
        "tf_adagrad_rowwise_apply_sparse",
        *(var, accum, lr, epsilon, grad),
        coefficient_dtype_of=rowwise_accumulator_dtype,
        rounding_key=rounding_key,
        indices=indices,
        use_locking=use_locking,
    )


def _decay_arguments(var, lr, weight_decay):
    var = as_tf_variable(var, "var")
    require_dtype(var, "`var`")
    return dict(
        var=var.handle, lr=scalar_as(lr, var.dtype), weight_decay=scalar_as(weight_decay, var.dtype)
    )


@tf.autograph.experimental.do_not_convert
def decay_weights(var, lr, weight_decay):
    """Decays every element of `var` in place, as Keras' optimizers apply
    `weight_decay` before an update: `var -= var * (weight_decay * lr)`.

    One pass over `var` (a read and a write of each element), where Keras'
    own `variable.assign_sub(variable * wd * lr)` writes temporaries of the
    variable's size. Inside a `tf.function` (as in `fit()`) TensorFlow
    folds Keras' two scalars first, as here, so float32 and float64 results
    are the same bits; run eagerly, Keras' may differ in the last bit.
    For float16 and bfloat16 variables `weight_decay * lr` is rounded to
    the variable's dtype (as Keras' casts round it), and each element is
    computed in float32 and rounded once.

    Args:
        var: A `tf.Variable` or `keras.Variable` of a floating dtype
            (float16, bfloat16, float32, float64), of any shape.
        lr: The learning rate; a scalar, cast to `var`'s dtype.
        weight_decay: The decay rate; a scalar, cast to `var`'s dtype.

    The op holds the variable's lock exclusively. Nothing is returned.
    """
    _loader.load_library().tf_adagrad_decay_weights(**_decay_arguments(var, lr, weight_decay))


@tf.autograph.experimental.do_not_convert
def decay_rows(var, lr, weight_decay, indices, use_locking=False):
    """Decays the rows of `var` named by `indices`, each distinct row once:
    `var[r] -= var[r] * (weight_decay * lr)`. Other rows are not read or
    written.

    Args:
        var: A `tf.Variable` or `keras.Variable` of rank >= 1.
        lr, weight_decay: As in `decay_weights`.
        indices: A 1-D int32 or int64 tensor of row numbers in
            `[0, var.shape[0])`, repeats allowed; an index out of range
            raises `InvalidArgumentError` and nothing is written.
        use_locking: As in `sparse_apply_adagrad`.

    Nothing is returned.
    """
    _loader.load_library().tf_adagrad_decay_rows(
        **_decay_arguments(var, lr, weight_decay),
        indices=_check_indices(indices),
        use_locking=use_locking,
    )


@tf.autograph.experimental.do_not_convert
def moving_average_rows(average, last_step, var, momentum, step, indices, use_locking=False):
    """Brings the exponential moving average of the rows of `var` named by
    `indices` up to `step`, each distinct row once.

    For each such row `r`, with `k = step - last_step[r]` (the steps since
    its average was last brought up to date, during which `var[r]` did not
    change):

        average[r] = var[r] + momentum**k * (average[r] - var[r])
        last_step[r] = step

    which is `k` steps of Keras' `average = momentum * average + (1 -
    momentum) * var` (up to rounding; `momentum**k` is computed in float64).
    A row with `k <= 0` keeps its average (only `last_step` is set).
    Other rows are not read or written, so an optimizer can keep an exact
    moving average of an embedding table at the cost of the rows in the
    batch.

    Args:
        average: A variable of `var`'s shape and dtype: the averages.
        last_step: An int64 variable of shape `var.shape[:1]`: the step each
            row's average was brought to.
        var: A `tf.Variable` or `keras.Variable` of rank >= 1 and a floating
            dtype; only read.
        momentum: A scalar, cast to `var`'s dtype.
        step: An int64 scalar.
        indices: A 1-D int32 or int64 tensor of row numbers in
            `[0, var.shape[0])`, repeats allowed; an index out of range
            raises `InvalidArgumentError` and nothing is written. `None`:
            every row, in one pass (`TfAdagrad>MovingAverageAllRows`).
        use_locking: As in `sparse_apply_adagrad`.

    Nothing is returned.
    """
    average = as_tf_variable(average, "average")
    last_step = as_tf_variable(last_step, "last_step")
    var = as_tf_variable(var, "var")
    require_dtype(var, "`var`")
    arguments = dict(
        average=average.handle,
        last_step=last_step.handle,
        var=var.handle,
        momentum=scalar_as(momentum, var.dtype),
        step=tf.cast(step, tf.int64),
        use_locking=use_locking,
    )
    library = _loader.load_library()
    if indices is None:
        library.tf_adagrad_moving_average_all_rows(**arguments)
    else:
        library.tf_adagrad_moving_average_rows(**arguments, indices=_check_indices(indices))
