"""The TensorFlow releases a wheel carries an op library for, one per minor.

Each library is compiled against that release's own headers and flags (its
pip package has them; `make wheel` installs it into .tf_builds/). The first
is the oldest TensorFlow tf_adagrad supports, the last the development one
(requirements-dev.txt). Read by Bazel (WORKSPACE, BUILD) and, as a Python
literal, by build_tools/configure.py and build_tools/compat.py.
"""

TF_RELEASES = {
    "2.18": "2.18.1",
    "2.19": "2.19.1",
    "2.20": "2.20.0",
    "2.21": "2.21.0",
}
