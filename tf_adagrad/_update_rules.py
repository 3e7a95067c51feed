"""The update rules, one per algorithm, that the optimizer adapters run.

A rule owns its slot (name, shape and dtype; the dtype of its learning rate
and epsilon too) and applies a dense gradient, a `tf.IndexedSlices` one, or
a step's dense gradients of one device and dtype at once: on the fused ops,
or as plain TensorFlow ops under XLA (which cannot compile custom ops) and
for the dtypes the kernels lack.
"""

import tensorflow as tf

from tf_adagrad import _xla_fallback, ops
from tf_adagrad._variables import FLOAT_DTYPES, HALF_DTYPES


class UpdateRule:
    """The shared dispatch; subclasses name the ops and the slot."""

    slot_name = None  # in the slot's variable name and OptimizerV2's slot
    slots_attribute = None  # the optimizer's list of slots, as Keras' Adagrad's
    # Dtypes the kernels lack that the rule trains (as the frameworks' own
    # Adagrads do): as plain TensorFlow ops, or by the framework's class.
    fallback_dtypes = ()

    def dtypes(self):
        return FLOAT_DTYPES + self.fallback_dtypes

    def is_fused(self, dtype):
        """Whether a variable of `dtype` updates on the fused ops here."""
        return tf.as_dtype(dtype) in FLOAT_DTYPES and not _xla_fallback.in_xla()

    # Whether the rule offers a choice of accumulator dtype (Elementwise).
    has_accumulator_dtype = False

    def with_accumulator_dtype(self, accumulator_dtype):
        """The rule with 16-bit variables' accumulators in `accumulator_dtype`
        (None: the rule's default)."""
        return self

    def groups(self, variable_dtype):
        """Whether `apply_many` may take a variable of `variable_dtype`
        (accumulators of its own dtype)."""
        return True

    def apply(self, variable, slot, gradient, lr, epsilon, use_locking=False, rounding_key=None):
        """Applies a dense or `tf.IndexedSlices` gradient to `tf.Variable`s;
        lr and epsilon convert to the slot's dtype. With a `rounding_key`
        (seed, step), 16-bit weights round stochastically."""
        if isinstance(gradient, tf.IndexedSlices):
            args = (variable, slot, lr, epsilon, gradient.values, gradient.indices)
            fused, plain = self._fused_sparse, _xla_fallback.sparse_update
        else:
            args = (variable, slot, lr, epsilon, gradient)
            fused, plain = self._fused_dense, _xla_fallback.dense_update
        if self.is_fused(variable.dtype):
            fused(*args, use_locking=use_locking, rounding_key=rounding_key)
        else:
            plain(self._updated_rows, *args, rounding_key=rounding_key)

    def apply_many(self, variables, slots, gradients, lr, epsilon, use_locking=False):
        """Applies dense gradients to variables of one device and a dtype
        that `is_fused` and `groups`, rounded to nearest."""
        for variable, slot, gradient in zip(variables, slots, gradients):
            self._fused_dense(variable, slot, lr, epsilon, gradient, use_locking=use_locking)


class Elementwise(UpdateRule):
    """Adagrad: an accumulator of the variable's shape and dtype; epsilon
    inside the square root (Keras') or outside it (`ApplyAdagradV2`'s)."""

    slot_name = "accumulator"
    slots_attribute = "_accumulators"
    fallback_dtypes = (tf.complex64, tf.complex128)

    has_accumulator_dtype = True

    def __init__(self, epsilon_placement, accumulator_dtype=None):
        self.epsilon_placement = epsilon_placement
        self.accumulator_dtype = accumulator_dtype

    def with_accumulator_dtype(self, accumulator_dtype):
        if accumulator_dtype == self.accumulator_dtype:
            return self
        return Elementwise(self.epsilon_placement, accumulator_dtype)

    def slot_shape(self, variable_shape):
        return variable_shape

    def slot_dtype(self, variable_dtype):
        dtype = tf.as_dtype(variable_dtype)
        if self.accumulator_dtype is not None and dtype in HALF_DTYPES:
            return self.accumulator_dtype
        return dtype

    def groups(self, variable_dtype):
        return self.slot_dtype(variable_dtype) == tf.as_dtype(variable_dtype)

    def _updated_rows(self, *args):
        return _xla_fallback.elementwise_rows(*args, epsilon_placement=self.epsilon_placement)

    def _fused_dense(self, *args, **kwargs):
        ops.apply_adagrad(*args, **kwargs, epsilon_placement=self.epsilon_placement)

    def _fused_sparse(self, *args, **kwargs):
        ops.sparse_apply_adagrad(*args, **kwargs, epsilon_placement=self.epsilon_placement)

    def apply_many(self, variables, slots, gradients, lr, epsilon, use_locking=False):
        # One op for all, which always locks its variables exclusively.
        ops.multi_apply_adagrad(
            variables, slots, lr, epsilon, gradients, epsilon_placement=self.epsilon_placement
        )


class Rowwise(UpdateRule):
    """Rowwise Adagrad: one accumulator per row (the first axis), float32
    (float64 for float64 variables); one op per variable."""

    slot_name = "rowwise_accumulator"
    slots_attribute = "_rowwise_accumulators"

    def slot_shape(self, variable_shape):
        return variable_shape[:1]

    def slot_dtype(self, variable_dtype):
        return ops.rowwise_accumulator_dtype(variable_dtype)

    def _updated_rows(self, *args):
        return _xla_fallback.rowwise_rows(*args)

    def _fused_dense(self, *args, **kwargs):
        ops.rowwise_apply_adagrad(*args, **kwargs)

    def _fused_sparse(self, *args, **kwargs):
        ops.sparse_rowwise_apply_adagrad(*args, **kwargs)


def group_by_device_and_dtype(updates):
    """(variable, slot, gradient) triples as {(device, dtype): [triples]}."""
    groups = {}
    for update in updates:
        groups.setdefault((update[0].device, update[0].dtype.base_dtype), []).append(update)
    return groups


INSIDE_SQRT = Elementwise("inside_sqrt")
OUTSIDE_SQRT = Elementwise("outside_sqrt")
ROWWISE = Rowwise()
