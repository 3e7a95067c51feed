"""Finds, checks and loads the op library (`_tf_adagrad_ops.so`).

`import tf_adagrad` loads it, which registers the `TfAdagrad>...` ops with
TensorFlow, so that a SavedModel holding them loads with plain
`tf.saved_model.load` once the package is imported.
"""

import os
import threading

import tensorflow as tf

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
LIBRARY_PATH = os.path.join(_PACKAGE_DIR, "_tf_adagrad_ops.so")
BUILD_RECORD_PATH = os.path.join(_PACKAGE_DIR, "_build_info.py")
REBUILD_COMMAND = (
    "`make build` in the tf-adagrad source tree (for its .venv); for another "
    "Python environment, in the source tree with that environment's python: "
    "`python build_tools/configure.py && bazel build //:wheel && python -m pip install "
    "--force-reinstall --no-deps bazel-bin/dist/tf_adagrad-*.whl`"
)

_load_lock = threading.Lock()
_library = None


class OpLibraryError(ImportError):
    """The op library is missing, or was built for another TensorFlow."""


# Shown (and raised) as `tf_adagrad.OpLibraryError`, where users catch it.
OpLibraryError.__module__ = "tf_adagrad"


def _major_minor(version):
    return tuple(version.split(".")[:2])


def _recorded_tf_version():
    """The TensorFlow version in the build record, or None without one."""
    try:
        from tf_adagrad import _build_info
    except ImportError:
        return None
    return _build_info.TF_VERSION


def _built_for_tf_version():
    built_for = _recorded_tf_version()
    if built_for is None:
        raise OpLibraryError(
            f"tf_adagrad's op library {LIBRARY_PATH} has no build record "
            f"({BUILD_RECORD_PATH}), so the TensorFlow it was built for is "
            f"unknown (installed: {tf.__version__}). Rebuild it with: "
            f"{REBUILD_COMMAND}"
        )
    return built_for


def _check_built_for_installed_tf(built_for):
    """TensorFlow's C++ ABI changes between minor versions: a library built
    for another one may fail to load or misbehave, so it is refused."""
    if _major_minor(built_for) != _major_minor(tf.__version__):
        raise OpLibraryError(
            f"tf_adagrad's op library {LIBRARY_PATH} was built for "
            f"TensorFlow {built_for} (as recorded in {BUILD_RECORD_PATH}), but "
            f"TensorFlow {tf.__version__} is installed; their major and minor "
            f"versions must match. Rebuild it with: {REBUILD_COMMAND}"
        )


def load_library():
    """Loads the op library once and returns it (the module of generated op
    wrappers); checks first that it was built for the installed TensorFlow.

    Raises:
        OpLibraryError: The library is missing, has no build record, or was
            built for another TensorFlow minor version.
    """
    global _library
    with _load_lock:
        if _library is not None:
            return _library
        if not os.path.exists(LIBRARY_PATH):
            raise OpLibraryError(
                f"tf_adagrad's op library {LIBRARY_PATH} is missing (installed "
                f"TensorFlow: {tf.__version__}). Rebuild it with: {REBUILD_COMMAND}"
            )
        built_for = _built_for_tf_version()
        _check_built_for_installed_tf(built_for)
        try:
            _library = tf.load_op_library(LIBRARY_PATH)
        except tf.errors.NotFoundError as e:
            raise OpLibraryError(
                f"tf_adagrad's op library {LIBRARY_PATH} (built for TensorFlow "
                f"{built_for}) failed to load into TensorFlow {tf.__version__}: "
                f"{e.message}. Rebuild it with: {REBUILD_COMMAND}"
            ) from e
        return _library


def load_at_import():
    """What `import tf_adagrad` does: loads the library when the build
    record is there, so a library built for another TensorFlow minor version
    fails the import with OpLibraryError. Without a build record (a source
    tree not built yet) the import goes on, and the first op call (or
    `tf_adagrad.ops.load_library()`) reports what is missing."""
    if _recorded_tf_version() is not None:
        load_library()
