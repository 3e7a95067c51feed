"""The update rules, one per algorithm, which every optimizer adapter runs.

A rule owns what it keeps per variable (its slot's name, shape and dtype),
the dtype its learning rate and epsilon take, and the application of a
dense gradient, a sparse one (`tf.IndexedSlices`) and a step's many dense
gradients at once: on the fused ops, or as plain TensorFlow ops under XLA
(which cannot compile custom ops) and for the dtypes the kernels lack.
"""

import tensorflow as tf

from tf_adagrad import _xla_fallback, ops
from tf_adagrad._variables import FLOAT_DTYPES


class UpdateRule:
    """An update rule; see `Elementwise` and `Rowwise`."""

    # The slot's name, in the optimizers' variable and slot names, and the
    # optimizer attribute that lists the slots (as Keras' Adagrad lists its
    # accumulators).
    slot_name = None
    slots_attribute = None
    # Dtypes the kernels lack that the rule still trains, as the frameworks'
    # own Adagrads do: as plain TensorFlow ops, or by the framework's class.
    fallback_dtypes = ()

    def slot_shape(self, variable_shape):
        raise NotImplementedError

    def slot_dtype(self, variable_dtype):
        """Also the dtype of the rule's learning rate and epsilon."""
        raise NotImplementedError

    def dtypes(self):
        """The variable dtypes the rule trains."""
        return FLOAT_DTYPES + self.fallback_dtypes

    def is_fused(self, dtype):
        """Whether variables of `dtype` update on the fused ops here (not
        under XLA, and a dtype the kernels take)."""
        return tf.as_dtype(dtype) in FLOAT_DTYPES and not _xla_fallback.in_xla()

    def apply(self, variable, slot, gradient, lr, epsilon, use_locking=False):
        """Applies a dense or `tf.IndexedSlices` gradient to `variable` and
        its slot (`tf.Variable`s); lr and epsilon are scalars that convert
        to the slot's dtype. Nothing is returned."""
        if isinstance(gradient, tf.IndexedSlices):
            args = (variable, slot, lr, epsilon, gradient.values, gradient.indices)
            fused, plain = self._fused_sparse, _xla_fallback.sparse_update
        else:
            args = (variable, slot, lr, epsilon, gradient)
            fused, plain = self._fused_dense, _xla_fallback.dense_update
        if self.is_fused(variable.dtype):
            fused(*args, use_locking=use_locking)
        else:
            plain(self._updated_rows, *args)

    def apply_many(self, variables, slots, gradients, lr, epsilon, use_locking=False):
        """Applies dense gradients to several variables of one device and
        dtype, which `is_fused`."""
        for variable, slot, gradient in zip(variables, slots, gradients):
            self._fused_dense(variable, slot, lr, epsilon, gradient, use_locking=use_locking)


class Elementwise(UpdateRule):
    """Adagrad: an accumulator per element, of the variable's shape and dtype;
    epsilon inside the square root (Keras' formula) or outside it
    (TensorFlow's `ApplyAdagradV2`)."""

    slot_name = "accumulator"
    slots_attribute = "_accumulators"
    fallback_dtypes = (tf.complex64, tf.complex128)

    def __init__(self, epsilon_placement):
        self.epsilon_placement = epsilon_placement

    def _updated_rows(self, *args):
        return _xla_fallback.elementwise_rows(*args, epsilon_placement=self.epsilon_placement)

    def _fused_dense(self, *args, **kwargs):
        ops.apply_adagrad(*args, **kwargs, epsilon_placement=self.epsilon_placement)

    def _fused_sparse(self, *args, **kwargs):
        ops.sparse_apply_adagrad(*args, **kwargs, epsilon_placement=self.epsilon_placement)

    def slot_shape(self, variable_shape):
        return variable_shape

    def slot_dtype(self, variable_dtype):
        return tf.as_dtype(variable_dtype)

    def apply_many(self, variables, slots, gradients, lr, epsilon, use_locking=False):
        # One op for all; it always holds the variables' locks exclusively.
        ops.multi_apply_adagrad(
            variables, slots, lr, epsilon, gradients, epsilon_placement=self.epsilon_placement
        )


class Rowwise(UpdateRule):
    """Rowwise Adagrad: one accumulator per row (the first axis), float32
    for 16-bit and float32 variables, float64 for float64 ones."""

    slot_name = "rowwise_accumulator"
    slots_attribute = "_rowwise_accumulators"

    def _updated_rows(self, *args):
        return _xla_fallback.rowwise_rows(*args)

    def _fused_dense(self, *args, **kwargs):
        ops.rowwise_apply_adagrad(*args, **kwargs)

    def _fused_sparse(self, *args, **kwargs):
        ops.sparse_rowwise_apply_adagrad(*args, **kwargs)

    def slot_shape(self, variable_shape):
        return variable_shape[:1]

    def slot_dtype(self, variable_dtype):
        return ops.rowwise_accumulator_dtype(variable_dtype)


def group_by_device_and_dtype(updates):
    """`(variable, slot, gradient)` triples of `tf.Variable`s, as
    {(device, dtype): [triples]}, for `UpdateRule.apply_many`."""
    groups = {}
    for update in updates:
        variable = update[0]
        groups.setdefault((variable.device, variable.dtype.base_dtype), []).append(update)
    return groups


INSIDE_SQRT = Elementwise("inside_sqrt")
OUTSIDE_SQRT = Elementwise("outside_sqrt")
ROWWISE = Rowwise()
