"""Norm clipping that counts a `tf.IndexedSlices` gradient as its densified
self without densifying it: the rows of each index are summed first for the
norm (O(rows in the batch)), and the clipped gradient stays sparse, its
values scaled. Dense gradients follow the same formulas.

Keras' own clipping takes a sparse gradient's norm as given (duplicates not
summed), or densifies it to the table's size (global norm).
"""

import tensorflow as tf


def squared_norm(gradient):
    """The squared L2 norm of `gradient`'s dense equivalent."""
    if isinstance(gradient, tf.IndexedSlices):
        rows, positions = tf.unique(gradient.indices)
        gradient = tf.math.unsorted_segment_sum(gradient.values, positions, tf.size(rows))
    return tf.reduce_sum(tf.square(gradient))


def scaled(gradient, scale):
    """`gradient` times the scalar `scale`, sparse if it was."""
    scale = tf.cast(scale, gradient.dtype)
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(gradient.values * scale, gradient.indices, gradient.dense_shape)
    return gradient * scale


def clip_by_norm(gradient, clip_norm):
    """`gradient` scaled to an L2 norm of at most `clip_norm`. A zero gradient
    stays zero; a non-finite norm gives a non-finite gradient, as Keras'."""
    norm_squared = squared_norm(gradient)
    positive = norm_squared > 0
    # Two branches, so that the square root's gradient at 0 is never taken.
    norm = tf.where(positive, tf.sqrt(tf.where(positive, norm_squared, 1)), norm_squared)
    clip_norm = _as(clip_norm, norm.dtype)
    return scaled(gradient, clip_norm / tf.maximum(norm, clip_norm))


def clip_by_global_norm(gradients, clip_norm):
    """`gradients` (None kept) scaled together so that their global L2 norm
    is at most `clip_norm`; a non-finite global norm makes every gradient
    NaN, as Keras' `clip_by_global_norm` does."""
    present = [g for g in gradients if g is not None]
    norm_dtype = tf.float64 if any(g.dtype == tf.float64 for g in present) else tf.float32
    norm = tf.sqrt(tf.add_n([tf.cast(squared_norm(g), norm_dtype) for g in present]))
    clip_norm = _as(clip_norm, norm_dtype)
    # norm - norm is 0 for a finite norm and NaN otherwise.
    scale = clip_norm * tf.minimum(1.0 / norm, 1.0 / clip_norm) + (norm - norm)
    return [None if g is None else scaled(g, scale) for g in gradients]


def _as(number, dtype):
    """A Python number straight in `dtype` (a cast would pass it through
    float32 first); a tensor cast."""
    return tf.cast(number, dtype) if tf.is_tensor(number) else tf.constant(number, dtype)


def has_sparse(gradients):
    return any(isinstance(g, tf.IndexedSlices) for g in gradients)
