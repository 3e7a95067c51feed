"""Checks and conversions of the optimizers' and ops' arguments."""

import numbers

import numpy as np
import tensorflow as tf


def non_negative_real(name, value):
    """`value` as a Python number, if it is a real number >= 0: a Python
    number, a NumPy scalar or a scalar tensor (as Keras takes them).

    Raises:
        ValueError: naming the argument and showing the value received;
            strings, booleans, negative numbers and NaN are refused.
    """
    number = value
    if isinstance(value, (np.generic, np.ndarray, tf.Tensor, tf.Variable)):
        number = tf.get_static_value(value) if tf.is_tensor(value) else np.asarray(value)
        is_real_scalar = (
            number is not None
            and np.ndim(number) == 0
            and np.issubdtype(np.asarray(number).dtype, np.number)
            and not np.iscomplexobj(number)
        )
        number = np.asarray(number).item() if is_real_scalar else None
    # bool is an int to Python, and NaN fails `>= 0`.
    if isinstance(number, bool) or not isinstance(number, numbers.Real) or not number >= 0:
        raise ValueError(
            f"{name} must be a real number >= 0, received: {value!r} ({type(value).__name__})"
        )
    return number


def scalar_as(value, dtype):
    """A scalar hyperparameter (a Python number or a tensor) as a tensor of
    `dtype`. Python numbers convert straight to `dtype`, not through float32,
    as Keras' and TensorFlow's own optimizers convert them."""
    return tf.cast(tf.convert_to_tensor(value, dtype_hint=dtype), dtype)


def passed_on(init_locals):
    """An `__init__`'s arguments, from its `locals()` before it makes any
    other local: its named parameters and its `**kwargs`, to pass on whole
    to the base class (the public classes spell out their signatures and
    defaults; their adapter takes them all)."""
    named = {k: v for k, v in init_locals.items() if k not in ("self", "__class__", "kwargs")}
    return {**named, **init_locals.get("kwargs", {})}
