"""The variable behind a Keras variable, for the ops that take handles."""

import keras
import tensorflow as tf


def backing_variable(variable):
    """What a `keras.Variable` wraps (a `tf.Variable`, or a `ShardedVariable`
    under a partitioning `ParameterServerStrategy`); anything else as is.

    Keras' own backing variable: its `.value` would autocast under a
    mixed-precision scope and hand back a tensor instead.
    """
    return variable._value if isinstance(variable, keras.Variable) else variable


def as_tf_variable(variable, arg_name):
    """The `tf.Variable` behind a `tf.Variable` or an initialized
    `keras.Variable`; `arg_name` names the argument in the error."""
    backing = backing_variable(variable)
    if isinstance(backing, tf.Variable):
        return backing
    if isinstance(variable, keras.Variable):
        if backing is None:
            raise ValueError(f"`{arg_name}` ({variable.path}) is not initialized yet.")
        raise TypeError(
            f"`{arg_name}` ({variable.path}) must be backed by one tf.Variable, "
            f"got a {type(backing).__name__}."
        )
    raise TypeError(
        f"`{arg_name}` must be a tf.Variable or a keras.Variable, got {type(variable).__name__}."
    )


# The dtypes the TfAdagrad ops are registered for.
FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)
# The 16-bit ones: computed in float32, rounded once on store.
HALF_DTYPES = (tf.float16, tf.bfloat16)


def require_dtype(variable, description, dtypes=FLOAT_DTYPES):
    """Raises TypeError unless `variable` has one of `dtypes` (by default
    those the ops accept); `description` names it in the message (e.g.
    "`var`")."""
    dtype = tf.as_dtype(variable.dtype)
    if dtype not in dtypes:
        name = variable.path if isinstance(variable, keras.Variable) else variable.name
        accepted = ", ".join(d.name for d in dtypes)
        raise TypeError(
            f"{description} ({name}) must have one of the dtypes {accepted}; got {dtype.name}."
        )
