"""tf-adagrad: fused CPU/CUDA Adagrad for TensorFlow and Keras 3.

Importing checks that the op library was built for the installed TensorFlow
(its major and minor version) and raises `OpLibraryError` if not; the op
library (`_tf_adagrad_ops.so`) itself is loaded on first use.
"""

__version__ = "0.1.0"

from tf_adagrad import ops  # noqa: E402
from tf_adagrad.ops import OpLibraryError  # noqa: E402

ops.check_build_at_import()

from tf_adagrad.optimizer import Adagrad  # noqa: E402
from tf_adagrad.saved_model import load_saved_model  # noqa: E402
from tf_adagrad.sharded import sharded_gradients  # noqa: E402

__all__ = [
    "Adagrad",
    "OpLibraryError",
    "load_saved_model",
    "ops",
    "sharded_gradients",
    "__version__",
]
