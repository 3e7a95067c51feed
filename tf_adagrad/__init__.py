"""tf-adagrad: fused CPU/CUDA Adagrad for TensorFlow and Keras 3.

The op library (`_tf_adagrad_ops.so`) is loaded on first use, not at import.
"""

from tf_adagrad import ops
from tf_adagrad.ops import OpLibraryError

__version__ = "0.1.0"

__all__ = ["OpLibraryError", "ops", "__version__"]
