"""Adagrad for tf_keras (Keras 2) on the fused ops: four optimizers.

- `tf_adagrad.keras2.Adagrad` replaces `tf_keras.optimizers.Adagrad`
  (epsilon inside the square root), on tf_keras' `Optimizer`;
- `tf_adagrad.keras2.legacy.Adagrad` replaces
  `tf_keras.optimizers.legacy.Adagrad` (TensorFlow's `ApplyAdagradV2` math,
  epsilon outside the square root), on `OptimizerV2`;
- `tf_adagrad.keras2.RowwiseAdagrad` and
  `tf_adagrad.keras2.legacy.RowwiseAdagrad` keep one accumulator per row,
  as `tf_adagrad.RowwiseAdagrad` does for Keras 3, on the same two base
  classes.

For `tf.keras` to be tf_keras, set `TF_USE_LEGACY_KERAS=1` before
TensorFlow is imported.

All four are registered with tf_keras' serialization, so models compiled
with them load with `tf_keras.models.load_model` once `tf_adagrad` is
imported (which imports this package when tf_keras is installed).
"""

try:
    import tf_keras  # noqa: F401
except ModuleNotFoundError as error:
    if error.name != "tf_keras":
        raise
    raise ImportError(
        "tf_adagrad.keras2 needs tf-keras (Keras 2), which is not installed. Install it with "
        "`pip install tf-keras==2.21.*`, or install tf_adagrad's wheel with its keras2 extra: "
        '`pip install "<path to tf_adagrad-*.whl>[keras2]"`; then set TF_USE_LEGACY_KERAS=1 '
        "before TensorFlow is imported for `tf.keras` to be tf_keras."
    ) from error

from tf_adagrad.keras2 import legacy  # noqa: E402
from tf_adagrad.keras2.adagrad import Adagrad  # noqa: E402
from tf_adagrad.keras2.rowwise_adagrad import RowwiseAdagrad  # noqa: E402

__all__ = ["Adagrad", "RowwiseAdagrad", "legacy"]
