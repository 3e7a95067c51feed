"""16-bit tables: float32 accumulators for the elementwise rule, and
stochastic rounding of float16 and bfloat16 weights. What the three
adapters share: the arguments, the seed, each variable's rounding key, and
the rounding as plain TensorFlow ops for XLA (the kernels' bits exactly:
kernels/stochastic_rounding.h).
"""

import random

import tensorflow as tf

from tf_adagrad._variables import HALF_DTYPES

ARGUMENT_DOC = """stochastic_rounding: If `True`, new float16 and bfloat16 weights are
    rounded stochastically: up or down with probabilities that make the
    expected stored weight the float32 result, so updates smaller than half
    a unit in the last place still move the weights on average. The random
    bits come from a counter-based generator (Philox) keyed by a seed drawn
    when the optimizer is built (reproducible under
    `keras.utils.set_random_seed`, saved in checkpoints), the step and each
    element's position. Other dtypes are unaffected. Defaults to `False`
    (round to nearest, as Keras does).
accumulator_dtype: Elementwise optimizers only: `None` (the default, as
    Keras: each accumulator has its variable's dtype) or `"float32"`, the
    accumulators of float16 and bfloat16 variables in float32, so that they
    keep growing when the squared gradients fall below 16-bit resolution.
    Other variables are unaffected."""


def checked_stochastic_rounding(value):
    if not isinstance(value, bool):
        raise ValueError(f"stochastic_rounding must be True or False, received: {value!r}")
    return value


def checked_accumulator_dtype(value, rule):
    """None or tf.float32; a rule without the choice (rowwise, whose
    accumulators are float32 already) accepts None only."""
    if value is None:
        return None
    try:
        dtype = tf.as_dtype(value)
    except TypeError:
        dtype = None
    if dtype != tf.float32:
        raise ValueError(f"accumulator_dtype must be None or 'float32', received: {value!r}")
    if not rule.has_accumulator_dtype:
        raise ValueError(
            "accumulator_dtype applies to the elementwise optimizers only; rowwise "
            "accumulators are float32 already (float64 for float64 variables)."
        )
    return dtype


def configure(optimizer, stochastic_rounding, accumulator_dtype):
    """Checks the two arguments and sets them on `optimizer`, with its
    `rule` taking the accumulator dtype (each adapter's `__init__`)."""
    optimizer.stochastic_rounding = checked_stochastic_rounding(stochastic_rounding)
    optimizer.accumulator_dtype = checked_accumulator_dtype(accumulator_dtype, optimizer.rule)
    optimizer.rule = optimizer.rule.with_accumulator_dtype(optimizer.accumulator_dtype)


def config(optimizer):
    """The arguments' `get_config` entries: only where set, so that a
    default configuration stays the framework's own."""
    entries = {}
    if optimizer.stochastic_rounding:
        entries["stochastic_rounding"] = True
    if optimizer.accumulator_dtype is not None:
        entries["accumulator_dtype"] = optimizer.accumulator_dtype.name
    return entries


def new_seed():
    """A seed for the optimizer's random bits, from Python's generator (which
    `keras.utils.set_random_seed` seeds)."""
    return random.randint(0, 2**31 - 1)


def rounds_stochastically(optimizer, variable):
    return getattr(optimizer, "stochastic_rounding", False) and (
        tf.as_dtype(variable.dtype).base_dtype in HALF_DTYPES
    )


def rounding_key(optimizer, variable, variable_index, shard=0):
    """The ops' `rounding_key` (seed, step) for `variable`, the optimizer's
    variable number `variable_index` (and for its `shard`), or None where
    its weights round to nearest. The optimizer's seed sits in the low 32
    bits, the variable and shard above them, so that no two variables draw
    the same bits; the step is the optimizer's iteration count."""
    if not rounds_stochastically(optimizer, variable):
        return None
    salt = ((variable_index << 8) | shard) << 32
    return tf.stack(
        [
            tf.cast(optimizer._rounding_seed, tf.int64) + salt,
            tf.cast(optimizer.iterations, tf.int64),
        ]
    )


# ------------------------------------------------------------ under XLA ---

_MASK = 0xFFFFFFFF


def _philox_bits(key, positions):
    """16 random bits per element of `positions` (int64), as the kernels'
    RandomBits: Philox4x32-10 of counter (position // 8, step), key seed."""
    u64 = tf.uint64

    def const(x):
        return tf.constant(x, u64)

    seed, step = tf.cast(key[0], u64), tf.cast(key[1], u64)
    positions = tf.cast(positions, u64)
    block, lane = positions // const(8), positions % const(8)
    shift32 = const(32)
    c0 = tf.bitwise.bitwise_and(block, const(_MASK))
    c1 = tf.bitwise.right_shift(block, shift32)
    c2 = tf.broadcast_to(tf.bitwise.bitwise_and(step, const(_MASK)), tf.shape(block))
    c3 = tf.broadcast_to(tf.bitwise.right_shift(step, shift32), tf.shape(block))
    k0 = tf.bitwise.bitwise_and(seed, const(_MASK))
    k1 = tf.bitwise.right_shift(seed, shift32)
    for _ in range(10):
        p0 = c0 * const(0xD2511F53)
        p1 = c2 * const(0xCD9E8D57)
        c0, c1, c2, c3 = (
            tf.bitwise.bitwise_xor(
                tf.bitwise.bitwise_xor(tf.bitwise.right_shift(p1, shift32), c1), k0
            ),
            tf.bitwise.bitwise_and(p1, const(_MASK)),
            tf.bitwise.bitwise_xor(
                tf.bitwise.bitwise_xor(tf.bitwise.right_shift(p0, shift32), c3), k1
            ),
            tf.bitwise.bitwise_and(p0, const(_MASK)),
        )
        k0 = tf.bitwise.bitwise_and(k0 + const(0x9E3779B9), const(_MASK))
        k1 = tf.bitwise.bitwise_and(k1 + const(0xBB67AE85), const(_MASK))
    word_index = lane // const(2)
    word = tf.where(
        word_index == const(0),
        c0,
        tf.where(word_index == const(1), c1, tf.where(word_index == const(2), c2, c3)),
    )
    bits = tf.bitwise.right_shift(word, const(16) * (lane % const(2)))
    return tf.cast(tf.bitwise.bitwise_and(bits, const(0xFFFF)), tf.int64)


def _stochastic_bfloat16(x, random_bits):
    bits = tf.cast(tf.bitcast(x, tf.uint32), tf.int64)
    rounded = tf.bitwise.right_shift(bits + random_bits, tf.constant(16, tf.int64))
    value = tf.bitcast(tf.cast(rounded, tf.uint16), tf.bfloat16)
    return tf.where(tf.math.is_nan(x), tf.cast(x, tf.bfloat16), value)


def _stochastic_float16(x, random_bits):
    i64 = tf.int64

    def c(v):
        return tf.constant(v, i64)

    bits = tf.cast(tf.bitcast(x, tf.uint32), i64)
    sign = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, c(16)), c(0x8000))
    magnitude = tf.bitwise.bitwise_and(bits, c(0x7FFFFFFF))
    # Normal float16: 13 bits dropped; the top 13 random bits added.
    rebiased = magnitude - c(112 << 23) + tf.bitwise.right_shift(random_bits, c(3))
    normal = tf.minimum(tf.bitwise.right_shift(rebiased, c(13)), c(0x7C00))
    # Subnormal float16, in units of 2^-24.
    exponent = tf.bitwise.right_shift(magnitude, c(23))
    significand = tf.bitwise.bitwise_or(tf.bitwise.bitwise_and(magnitude, c(0x7FFFFF)), c(0x800000))
    shift = c(126) - exponent
    dither = tf.where(
        shift <= 16,
        tf.bitwise.right_shift(random_bits, tf.maximum(c(16) - shift, c(0))),
        tf.bitwise.left_shift(random_bits, tf.minimum(tf.maximum(shift - c(16), c(0)), c(40))),
    )
    subnormal = tf.where(
        (exponent == 0) | (shift >= 56),
        c(0),
        tf.bitwise.right_shift(significand + dither, tf.minimum(shift, c(62))),
    )
    result = tf.where(magnitude >= c(0x38800000), normal, subnormal)
    value = tf.bitcast(tf.cast(tf.bitwise.bitwise_or(sign, result), tf.uint16), tf.float16)
    special = magnitude >= c(0x7F800000)  # inf and nan round as to nearest
    return tf.where(special, tf.cast(x, tf.float16), value)


def stochastic_round(x, dtype, key, positions):
    """float32 `x` stored as 16-bit `dtype` with the kernels' stochastic
    rounding, element i being table position `positions[i]`."""
    random_bits = _philox_bits(key, positions)
    if dtype == tf.bfloat16:
        return _stochastic_bfloat16(x, random_bits)
    return _stochastic_float16(x, random_bits)
