"""Adagrad for tf_keras' legacy optimizers (`tf_keras.optimizers.legacy`,
`OptimizerV2`) on the fused ops."""

from tf_adagrad.keras2.legacy.adagrad import Adagrad
from tf_adagrad.keras2.legacy.rowwise_adagrad import RowwiseAdagrad

__all__ = ["Adagrad", "RowwiseAdagrad"]
