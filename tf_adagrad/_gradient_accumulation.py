"""Gradient accumulation (`gradient_accumulation_steps`) that keeps a sparse
gradient's rows instead of adding it into a buffer of the table's size.

Keras' base class gives every variable an accumulator of the variable's
shape and adds each gradient into it densely, so a step of an `Embedding`
table costs the whole table. Here each variable's accumulator holds:

- `indices` and `values`: the rows of the `tf.IndexedSlices` gradients of
  the period so far, each step's rows of one index summed first, appended
  (int64 indices; values in the variable's dtype), so its memory grows with
  the rows touched, not with the table;
- `dense`: the sum of the dense gradients of the period, empty until a dense
  gradient arrives (or a step runs under XLA); then of the variable's shape,
  as Keras' accumulator.

All three are `tf.Variable`s of dynamic shape (none is allocated at the
table's size when the optimizer is built), tracked by the optimizer for
`tf.train.Checkpoint` and written by its `save_own_variables`.

On the update step each row's sum over the period, in step order (the
order of Keras' dense additions, so the same bits), divided by the number
of steps, makes one `tf.IndexedSlices` of distinct rows; a dense gradient
gets the sum Keras computes. XLA cannot change a variable's shape,
so there the period's gradients are summed densely in `dense` (allocated
when the step is traced), as Keras does.
"""

import tensorflow as tf

from tf_adagrad import _xla_fallback

# The name Keras' base class gives its accumulators (`build`).
KERAS_NAME = "gradient_accumulator"


class RowAccumulator(tf.__internal__.tracking.AutoTrackable):
    """One variable's accumulated gradient: its sparse rows and its dense sum."""

    def __init__(self, variable, name):
        self.shape = tf.TensorShape(variable.shape)
        self.dtype = tf.as_dtype(variable.dtype)
        row_shape = self.shape[1:]
        with tf.init_scope():
            self.indices = tf.Variable(
                tf.zeros([0], tf.int64),
                shape=tf.TensorShape([None]),
                trainable=False,
                name=f"{name}_indices",
            )
            self.values = tf.Variable(
                tf.zeros([0, *row_shape], self.dtype),
                shape=tf.TensorShape([None]).concatenate(row_shape),
                trainable=False,
                name=f"{name}_values",
            )
            self.dense = tf.Variable(
                tf.zeros([0], self.dtype),
                shape=tf.TensorShape(None),
                trainable=False,
                name=f"{name}_dense",
            )

    def state(self):
        """The state's variables, by name, for `.keras` files."""
        return {"indices": self.indices, "values": self.values, "dense": self.dense}

    def allocate_dense(self):
        """Gives `dense` the variable's shape, zeros, if it is still empty:
        eagerly, when a step that needs it is traced (or run eagerly), so
        that no graph changes its shape (XLA cannot, and Grappler folds a
        variable's shape from its assignments)."""
        with tf.init_scope():
            if int(tf.size(self.dense)) != self.shape.num_elements():
                self.dense.assign(tf.zeros(self.shape, self.dtype))

    def _dense_sum(self):
        """The dense gradients' sum so far (`allocate_dense` first)."""
        return tf.reshape(self.dense.read_value(), self.shape)

    def _densified_rows(self):
        return tf.math.unsorted_segment_sum(
            self.values.read_value(), self.indices.read_value(), self.shape[0]
        )

    def add(self, gradient):
        """A step inside the period: `gradient` added to the sum."""
        if isinstance(gradient, tf.IndexedSlices) and not _xla_fallback.in_xla():
            indices, values = _summed_rows(gradient.indices, tf.cast(gradient.values, self.dtype))
            self.indices.assign(tf.concat([self.indices.read_value(), indices], 0))
            self.values.assign(tf.concat([self.values.read_value(), values], 0))
            return
        self.allocate_dense()
        gradient = _dense(gradient, self.dtype, self.shape)
        self.dense.assign(self._dense_sum() + gradient)

    def average(self, gradient, steps):
        """The period's mean gradient, `gradient` (the last step's)
        included: a `tf.IndexedSlices` if `gradient` is one (outside XLA),
        else dense."""
        if isinstance(gradient, tf.IndexedSlices) and not _xla_fallback.in_xla():
            row_shape = self.shape[1:]
            dense_rows = tf.reshape(self.dense.read_value(), [-1, *row_shape])
            last_indices, last_values = _summed_rows(
                gradient.indices, tf.cast(gradient.values, self.dtype)
            )
            # Each row's sum in step order, as Keras' dense accumulator
            # adds: the same bits.
            indices, values = _summed_rows(
                tf.concat(
                    [
                        tf.range(tf.shape(dense_rows, out_type=tf.int64)[0]),
                        self.indices.read_value(),
                        last_indices,
                    ],
                    0,
                ),
                tf.concat([dense_rows, self.values.read_value(), last_values], 0),
            )
            dense_shape = tf.constant(self.shape.as_list(), tf.int64)
            return tf.IndexedSlices(values / steps, indices, dense_shape)
        self.allocate_dense()
        gradient = _dense(gradient, self.dtype, self.shape)
        # Adding the (usually empty) rows' zeros changes no sum.
        accumulated = self._dense_sum() + self._densified_rows()
        return (gradient + accumulated) / steps

    def reset(self):
        """Zero, for the next period: the rows dropped (outside XLA; XLA
        keeps their shape and zeroes their values), `dense` kept at its
        shape."""
        if _xla_fallback.in_xla():
            self.values.assign(tf.zeros_like(self.values))
        else:
            self.indices.assign(tf.zeros([0], tf.int64))
            self.values.assign(tf.zeros([0, *self.shape[1:]], self.dtype))
        self.dense.assign(tf.zeros_like(self.dense.read_value()))


def _summed_rows(indices, values):
    """(distinct indices, int64; each one's rows summed in position order
    from zero, as densifying sums them)."""
    distinct, positions = tf.unique(tf.cast(indices, tf.int64))
    return distinct, tf.math.unsorted_segment_sum(values, positions, tf.size(distinct))


def _dense(gradient, dtype, shape):
    if isinstance(gradient, tf.IndexedSlices):
        gradient = tf.math.unsorted_segment_sum(gradient.values, gradient.indices, shape[0])
    return tf.cast(gradient, dtype)


class StoreView:
    """The entries of a `.keras` store whose names are numbers: those that
    Keras' base class writes and reads (one per optimizer variable)."""

    def __init__(self, store):
        self.store = store

    def keys(self):
        return [k for k in self.store.keys() if k.isdigit()]

    def __getitem__(self, key):
        return self.store[key]

    def __setitem__(self, key, value):
        self.store[key] = value
