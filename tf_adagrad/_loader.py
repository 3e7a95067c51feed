"""Finds, checks and loads the op library for the installed TensorFlow
(`_tf_adagrad_ops_tf2_21.so` for TensorFlow 2.21).

`import tf_adagrad` loads it, which registers the `TfAdagrad>...` ops with
TensorFlow, so that a SavedModel holding them loads with plain
`tf.saved_model.load` once the package is imported.
"""

import os
import threading

import tensorflow as tf

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
BUILD_RECORD_PATH = os.path.join(_PACKAGE_DIR, "_build_info.py")
REBUILD_COMMAND = (
    "`make build` in the tf-adagrad source tree (for its .venv); for another "
    "Python environment, in the source tree with that environment's python: "
    "`python build_tools/configure.py && bazel build //:wheel && python -m pip install "
    "--force-reinstall --no-deps bazel-bin/dist/tf_adagrad-*.whl`"
)


def _major_minor(version):
    return ".".join(version.split(".")[:2])


def library_path(tf_minor):
    """The op library for TensorFlow `tf_minor` ("2.21"): one per minor
    version, since TensorFlow's C++ ABI changes between them."""
    return os.path.join(_PACKAGE_DIR, f"_tf_adagrad_ops_tf{tf_minor.replace('.', '_')}.so")


# The library for the installed TensorFlow.
LIBRARY_PATH = library_path(_major_minor(tf.__version__))

_load_lock = threading.Lock()
_library = None


class OpLibraryError(ImportError):
    """The op library is missing, or was built for another TensorFlow."""


# Shown (and raised) as `tf_adagrad.OpLibraryError`, where users catch it.
OpLibraryError.__module__ = "tf_adagrad"


def _recorded_tf_versions():
    """{minor: release} of the build record ({"2.21": "2.21.0"}), or None
    without one."""
    try:
        from tf_adagrad import _build_info
    except ImportError:
        return None
    return _build_info.TF_VERSIONS


def _built_for_tf_versions():
    built_for = _recorded_tf_versions()
    if built_for is None:
        raise OpLibraryError(
            f"tf_adagrad's op library {LIBRARY_PATH} has no build record "
            f"({BUILD_RECORD_PATH}), so the TensorFlow it was built for is "
            f"unknown (installed: {tf.__version__}). Rebuild it with: "
            f"{REBUILD_COMMAND}"
        )
    return built_for


def _supported_range(built_for):
    """ "2.18 to 2.21" and its pip requirement, of the recorded minors."""
    minors = sorted(built_for, key=lambda minor: tuple(int(p) for p in minor.split(".")))
    major, last = minors[-1].split(".")
    names = minors[0] if len(minors) == 1 else f"{minors[0]} to {minors[-1]}"
    return names, f"tensorflow>={minors[0]},<{major}.{int(last) + 1}"


def _check_built_for_installed_tf(built_for):
    """A library loads only into the TensorFlow minor version it was built
    for: one built for another may fail to load or misbehave."""
    if _major_minor(tf.__version__) in built_for:
        return
    names, requirement = _supported_range(built_for)
    releases = ", ".join(built_for[minor] for minor in sorted(built_for))
    raise OpLibraryError(
        f"tf_adagrad's op libraries in {_PACKAGE_DIR} were built for TensorFlow "
        f"{names} ({releases}, as recorded in {BUILD_RECORD_PATH}), but TensorFlow "
        f"{tf.__version__} is installed; a library loads only into the TensorFlow "
        f"minor version it was built for. Install a supported TensorFlow "
        f"(`pip install '{requirement}'`), or build tf_adagrad for this one with: "
        f"{REBUILD_COMMAND}"
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
        built_for = _built_for_tf_versions()
        _check_built_for_installed_tf(built_for)
        if not os.path.exists(LIBRARY_PATH):
            raise OpLibraryError(
                f"tf_adagrad's op library {LIBRARY_PATH} is missing (installed "
                f"TensorFlow: {tf.__version__}). Rebuild it with: {REBUILD_COMMAND}"
            )
        try:
            _library = tf.load_op_library(LIBRARY_PATH)
        except tf.errors.NotFoundError as e:
            built_against = built_for[_major_minor(tf.__version__)]
            raise OpLibraryError(
                f"tf_adagrad's op library {LIBRARY_PATH} (built for TensorFlow "
                f"{built_against}) failed to load into TensorFlow {tf.__version__}: "
                f"{e.message}. Rebuild it with: {REBUILD_COMMAND}"
            ) from e
        return _library


def load_at_import():
    """What `import tf_adagrad` does: loads the library when the build
    record is there, so a library built for another TensorFlow minor version
    fails the import with OpLibraryError. Without a build record (a source
    tree not built yet) the import goes on, and the first op call (or
    `tf_adagrad.ops.load_library()`) reports what is missing."""
    if _recorded_tf_versions() is not None:
        load_library()
