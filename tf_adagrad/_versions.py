"""The Keras 3 releases tf_adagrad's optimizers are tested with (`make
compat`): they override private hooks of Keras' optimizer, so another
release is refused at `import tf_adagrad`. The wheel requires the same
releases (build_tools/build_wheel.py reads KERAS_VERSIONS)."""

import re

import keras

# From Keras 3.10 on, the base optimizer's `apply` counts iterations and its
# variables are built as the optimizers expect; 3.15 is the newest tested.
KERAS_VERSIONS = ">=3.10,<3.16"


def _minor(version):
    return tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", version).groups())


def check_keras(version=None):
    """Raises ImportError unless Keras `version` (the installed one by
    default) is within KERAS_VERSIONS."""
    version = keras.__version__ if version is None else version
    first, end = re.fullmatch(r">=(\d+\.\d+),<(\d+\.\d+)", KERAS_VERSIONS).groups()
    if _minor(first) <= _minor(version) < _minor(end):
        return
    last = f"{_minor(end)[0]}.{_minor(end)[1] - 1}"
    raise ImportError(
        f"tf_adagrad supports Keras {first} to {last} (its optimizers override private hooks "
        f"of Keras' optimizer, as tested with those releases); Keras {version} is installed. "
        f"Install a supported Keras: `pip install 'keras{KERAS_VERSIONS}'`."
    )
