"""tf-adagrad: fused CPU/CUDA Adagrad for TensorFlow and Keras 3.

The op library (`_tf_adagrad_ops.so`) is loaded on first use, not at import.
"""

from tf_adagrad import ops
from tf_adagrad.ops import OpLibraryError
from tf_adagrad.optimizer import Adagrad
from tf_adagrad.saved_model import load_saved_model
from tf_adagrad.sharded import sharded_gradients

__version__ = "0.1.0"

__all__ = [
    "Adagrad",
    "OpLibraryError",
    "load_saved_model",
    "ops",
    "sharded_gradients",
    "__version__",
]
