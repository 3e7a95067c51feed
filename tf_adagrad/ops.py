"""Python wrappers for the fused Adagrad ops.

Both ops apply Keras 3's Adagrad formula, epsilon inside the square root:

    accum += grad * grad
    var   -= lr * grad / sqrt(accum + epsilon)

float16 and bfloat16 variables are computed in float32 and rounded once.
"""

import os
import threading

import keras
import tensorflow as tf

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
LIBRARY_PATH = os.path.join(_PACKAGE_DIR, "_tf_adagrad_ops.so")
BUILD_RECORD_PATH = os.path.join(_PACKAGE_DIR, "_build_info.py")
REBUILD_COMMAND = (
    "`make build` in the tf-adagrad source tree (for its .venv); for another "
    "Python environment, in the source tree with that environment's python: "
    "`python configure.py && bazel build //:wheel && python -m pip install "
    "--force-reinstall --no-deps bazel-bin/dist/tf_adagrad-*.whl`"
)

_load_lock = threading.Lock()
_library = None


class OpLibraryError(ImportError):
    """The op library is missing, or was built for another TensorFlow."""


def _major_minor(version):
    return tuple(version.split(".")[:2])


def _recorded_tf_version():
    """The TensorFlow version in the build record, or None without one."""
    try:
        from tf_adagrad import _build_info
    except ImportError:
        return None
    return _build_info.TF_VERSION


def _built_for_tf_version():
    built_for = _recorded_tf_version()
    if built_for is None:
        raise OpLibraryError(
            f"tf_adagrad's op library {LIBRARY_PATH} has no build record "
            f"({BUILD_RECORD_PATH}), so the TensorFlow it was built for is "
            f"unknown (installed: {tf.__version__}). Rebuild it with: "
            f"{REBUILD_COMMAND}"
        )
    return built_for


def _check_built_for_installed_tf(built_for):
    """TensorFlow's C++ ABI changes between minor versions: a library built
    for another one may fail to load or misbehave, so it is refused."""
    if _major_minor(built_for) != _major_minor(tf.__version__):
        raise OpLibraryError(
            f"tf_adagrad's op library {LIBRARY_PATH} was built for "
            f"TensorFlow {built_for} (as recorded in {BUILD_RECORD_PATH}), but "
            f"TensorFlow {tf.__version__} is installed; their major and minor "
            f"versions must match. Rebuild it with: {REBUILD_COMMAND}"
        )


def check_build_at_import():
    """Raises OpLibraryError if the build record names another TensorFlow
    minor version than the installed one. Cheap: the op library itself is
    not loaded. Without a build record (a source tree not built yet) it
    passes, and the first op call reports what is missing."""
    built_for = _recorded_tf_version()
    if built_for is not None:
        _check_built_for_installed_tf(built_for)


def _load_library():
    """Loads the op library once; checks it matches the installed TF first."""
    global _library
    with _load_lock:
        if _library is not None:
            return _library
        if not os.path.exists(LIBRARY_PATH):
            raise OpLibraryError(
                f"tf_adagrad's op library {LIBRARY_PATH} is missing (installed "
                f"TensorFlow: {tf.__version__}). Rebuild it with: {REBUILD_COMMAND}"
            )
        built_for = _built_for_tf_version()
        _check_built_for_installed_tf(built_for)
        try:
            _library = tf.load_op_library(LIBRARY_PATH)
        except tf.errors.NotFoundError as e:
            raise OpLibraryError(
                f"tf_adagrad's op library {LIBRARY_PATH} (built for TensorFlow "
                f"{built_for}) failed to load into TensorFlow {tf.__version__}: "
                f"{e.message}. Rebuild it with: {REBUILD_COMMAND}"
            ) from e
        return _library


def load_library():
    """Loads the op library now and registers its ops with TensorFlow.

    The library otherwise loads on the first update. Load it first where
    TensorFlow meets the ops without this package's Python: before
    `tf.saved_model.load` of a model saved with a training step (or use
    `tf_adagrad.load_saved_model`), and in every worker and parameter
    server process of a cluster before it starts its `tf.distribute.Server`.

    Raises:
        OpLibraryError: The library is missing or was built for another
            TensorFlow; the message names the file, both versions and the
            command that rebuilds it.
    """
    _load_library()


def _as_tf_variable(var, arg_name):
    """The tf.Variable behind a tf.Variable or a keras.Variable."""
    if isinstance(var, tf.Variable):
        return var
    if isinstance(var, keras.Variable):
        # Keras' own backing variable: `.value` would autocast under a
        # mixed-precision scope and hand back a tensor instead.
        backing = var._value
        if backing is None:
            raise ValueError(f"`{arg_name}` ({var.path}) is not initialized yet.")
        return backing
    raise TypeError(
        f"`{arg_name}` must be a tf.Variable or a keras.Variable, got {type(var).__name__}."
    )


def _prepare(var, accum, lr, epsilon, grad):
    var = _as_tf_variable(var, "var")
    accum = _as_tf_variable(accum, "accum")
    dtype = var.dtype
    grad = tf.convert_to_tensor(grad)
    if grad.dtype != dtype:
        raise TypeError(f"`grad` must have the dtype of `var` ({dtype.name}), got {grad.dtype.name}.")
    # Hyperparameters follow the variable's dtype, as in Keras; Python
    # numbers convert straight to it (not through float32).
    lr = tf.cast(tf.convert_to_tensor(lr, dtype_hint=dtype), dtype)
    epsilon = tf.cast(tf.convert_to_tensor(epsilon, dtype_hint=dtype), dtype)
    return var.handle, accum.handle, lr, epsilon, grad


# The wrappers have no tensor-dependent Python control flow, so AutoGraph
# has nothing to convert; left to it, it would try (and warn) on os.path.
@tf.autograph.experimental.do_not_convert
def apply_adagrad(var, accum, lr, epsilon, grad, use_locking=False):
    """Applies one dense Adagrad step to `var` and `accum` in place.

    Args:
        var: A `tf.Variable` or `keras.Variable` of a floating dtype
            (float16, bfloat16, float32, float64).
        accum: The accumulator: a variable of `var`'s shape and dtype.
        lr: The learning rate; a scalar, cast to `var`'s dtype.
        epsilon: Added to `accum` inside the square root; a scalar.
        grad: A tensor of `var`'s shape and dtype.
        use_locking: If `True`, the update holds the variables' locks
            exclusively, so concurrent updates do not interleave.

    Inside `tf.function`, automatic control dependencies order the update
    with the function's other uses of the variables; nothing is returned.
    """
    var_handle, accum_handle, lr, epsilon, grad = _prepare(var, accum, lr, epsilon, grad)
    _load_library().tf_adagrad_apply_dense(
        var=var_handle, accum=accum_handle, lr=lr, epsilon=epsilon, grad=grad, use_locking=use_locking
    )


@tf.autograph.experimental.do_not_convert
def sparse_apply_adagrad(var, accum, lr, epsilon, grad, indices, use_locking=False):
    """Applies an Adagrad step to the rows of `var` and `accum` named by `indices`.

    Rows of `grad` that share an index are summed before the update, so the
    result equals `apply_adagrad` with the densified gradient (what
    `tf.convert_to_tensor(tf.IndexedSlices(grad, indices, var.shape))`
    gives), deterministically. Only the rows named by `indices` are read or
    written.

    Args:
        var: A `tf.Variable` or `keras.Variable` of rank >= 1.
        accum: The accumulator: a variable of `var`'s shape and dtype.
        lr: The learning rate; a scalar, cast to `var`'s dtype.
        epsilon: Added to `accum` inside the square root; a scalar.
        grad: A tensor of shape `[len(indices)] + var.shape[1:]`.
        indices: A 1-D int32 or int64 tensor of row numbers in
            `[0, var.shape[0])`; an index out of range raises
            `InvalidArgumentError` and nothing is updated.
        use_locking: If `True`, the update holds the variables' locks
            exclusively; otherwise concurrent sparse updates may interleave.

    Nothing is returned.
    """
    var_handle, accum_handle, lr, epsilon, grad = _prepare(var, accum, lr, epsilon, grad)
    indices = tf.convert_to_tensor(indices)
    if indices.dtype not in (tf.int32, tf.int64):
        raise TypeError(f"`indices` must be int32 or int64, got {indices.dtype.name}.")
    _load_library().tf_adagrad_apply_sparse(
        var=var_handle,
        accum=accum_handle,
        lr=lr,
        epsilon=epsilon,
        grad=grad,
        indices=indices,
        use_locking=use_locking,
    )


@tf.autograph.experimental.do_not_convert
def multi_apply_adagrad(variables, accumulators, lr, epsilon, grads):
    """Applies one dense Adagrad step to several variables in one op.

    The same update as `apply_adagrad(variables[i], accumulators[i], lr,
    epsilon, grads[i])` for every `i`, in one op call whose work is split
    across threads by elements, not by variable (on a GPU: one kernel launch
    per 64 variables), so many small variables cost about as much as one
    large one. Every input is checked before any variable is written. All
    variables must be on one device.

    Args:
        variables: A non-empty list of `tf.Variable` or `keras.Variable`, all
            of one floating dtype (float16, bfloat16, float32, float64).
        accumulators: A list of the same length: `accumulators[i]` has the
            shape and dtype of `variables[i]`.
        lr: The learning rate; a scalar, cast to the variables' dtype.
        epsilon: Added to the accumulators inside the square root; a scalar.
        grads: A list of the same length: `grads[i]` has the shape and dtype
            of `variables[i]`.

    Every dense update holds its variables' locks exclusively (taken in
    address order), so there is no `use_locking` argument. Nothing is
    returned.
    """
    variables, accumulators, grads = list(variables), list(accumulators), list(grads)
    if not variables:
        raise ValueError("`variables` must hold at least one variable, got an empty list.")
    if len(accumulators) != len(variables) or len(grads) != len(variables):
        raise ValueError(
            f"`variables`, `accumulators` and `grads` must have the same length, got "
            f"{len(variables)}, {len(accumulators)} and {len(grads)}."
        )
    variables = [_as_tf_variable(v, f"variables[{i}]") for i, v in enumerate(variables)]
    accumulators = [_as_tf_variable(a, f"accumulators[{i}]") for i, a in enumerate(accumulators)]
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
    lr = tf.cast(tf.convert_to_tensor(lr, dtype_hint=dtype), dtype)
    epsilon = tf.cast(tf.convert_to_tensor(epsilon, dtype_hint=dtype), dtype)
    _load_library().tf_adagrad_multi_apply_dense(
        var=[v.handle for v in variables],
        accum=[a.handle for a in accumulators],
        lr=lr,
        epsilon=epsilon,
        grad=converted,
    )
