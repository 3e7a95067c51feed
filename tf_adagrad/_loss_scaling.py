"""Loss scaling that reads and writes only a sparse gradient's values.

A `tf.IndexedSlices` gradient names some rows of a table; dividing it by a
loss scale, or checking it for inf and NaN, needs only those rows. Turning
it into a dense tensor first would cost a pass over the whole table.
"""

import tensorflow as tf


class UnscalableSlices(tf.IndexedSlices):
    """A `tf.IndexedSlices` that `/` by a scalar divides value by value, as
    `/` divides a dense gradient element by element (Keras' base class
    unscales every gradient with `gradient / loss_scale_factor`)."""

    def __truediv__(self, scale):
        return tf.IndexedSlices(self.values / scale, self.indices, self.dense_shape)


def unscalable(gradients):
    """`gradients`, each `tf.IndexedSlices` as an `UnscalableSlices`."""
    return [
        UnscalableSlices(g.values, g.indices, g.dense_shape)
        if isinstance(g, tf.IndexedSlices)
        else g
        for g in gradients
    ]


def values_only(gradients):
    """`gradients`, each `tf.IndexedSlices` replaced by its values."""
    return [g.values if isinstance(g, tf.IndexedSlices) else g for g in gradients]
