"""tf-adagrad: fused CPU/CUDA Adagrad for TensorFlow and Keras 3.

Importing loads the op library for the installed TensorFlow's minor version
(`_tf_adagrad_ops_tf2_21.so`), which registers the `TfAdagrad>...` ops with
TensorFlow, so a SavedModel holding them loads with `tf.saved_model.load`
after `import tf_adagrad`. A TensorFlow the package has no library for
raises `OpLibraryError`, a Keras 3 release outside the tested ones
ImportError.
"""

__version__ = "0.1.0"

import importlib.util

from tf_adagrad import _loader, _versions

_versions.check_keras()
_loader.load_at_import()

from tf_adagrad import ops  # noqa: E402
from tf_adagrad._loader import OpLibraryError  # noqa: E402
from tf_adagrad.loss_scale_optimizer import LossScaleOptimizer  # noqa: E402
from tf_adagrad.optimizer import Adagrad  # noqa: E402
from tf_adagrad.rowwise_adagrad import RowwiseAdagrad  # noqa: E402
from tf_adagrad.sharded import sharded_gradients  # noqa: E402

# With tf_keras installed, its optimizers (tf_adagrad.keras2) are imported
# too, which registers them with tf_keras' serialization, so that models
# compiled with them load after `import tf_adagrad`.
if importlib.util.find_spec("tf_keras") is not None:
    from tf_adagrad import keras2  # noqa: E402, F401


def __getattr__(name):
    # Without tf_keras, `tf_adagrad.keras2` imports it here, to raise the
    # ImportError that says what to install rather than an AttributeError.
    if name == "keras2":
        return importlib.import_module("tf_adagrad.keras2")
    raise AttributeError(f"module 'tf_adagrad' has no attribute {name!r}")


__all__ = [
    "Adagrad",
    "LossScaleOptimizer",
    "OpLibraryError",
    "RowwiseAdagrad",
    "ops",
    "sharded_gradients",
    "__version__",
]
