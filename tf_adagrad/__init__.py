"""tf-adagrad: fused CPU/CUDA Adagrad for TensorFlow and Keras 3.

The op library (`_tf_adagrad_ops.so`) is loaded on first use, not at import.
"""

from tf_adagrad import ops
from tf_adagrad.ops import OpLibraryError
from tf_adagrad.optimizer import Adagrad

__version__ = "0.1.0"

__all__ = ["Adagrad", "OpLibraryError", "ops", "__version__"]
