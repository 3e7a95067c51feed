"""Shared settings and fixtures.

pytest.ini puts the repository root first on `sys.path`, so the tests import
the source tree's `tf_adagrad` (with the op library `make build` copies
there), not a wheel installed in the venv; tests/test_packaging.py tests the
wheel. Child Pythons started by the tests get the same path through
PYTHONPATH.
"""

import os

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Written by configure.py (`make build`): the build's Bazel settings.
BUILD_SETTINGS = os.path.join(REPO_ROOT, ".tf_configure.bazelrc")

# Quiet TensorFlow's start-up logging in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["PYTHONPATH"] = os.pathsep.join(
    [REPO_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)


def pytest_configure(config):
    import tf_adagrad

    package_dir = os.path.dirname(os.path.abspath(tf_adagrad.__file__))
    if package_dir != os.path.join(REPO_ROOT, "tf_adagrad"):
        raise pytest.UsageError(
            f"the tests must import the source tree's tf_adagrad ({REPO_ROOT}/tf_adagrad), "
            f"but `import tf_adagrad` found {package_dir}; is pytest.ini's `pythonpath = .` in effect?"
        )


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session")
def build_settings():
    """The lines of .tf_configure.bazelrc, the settings of the last build."""
    assert os.path.exists(BUILD_SETTINGS), f"{BUILD_SETTINGS} is missing: run `make build`"
    with open(BUILD_SETTINGS) as f:
        return f.read().splitlines()


@pytest.fixture(scope="session")
def cuda_build(build_settings):
    """Whether configure.py turned the CUDA kernels on for the build."""
    return "build --config=cuda" in build_settings


@pytest.fixture(scope="session")
def parameter_server_cluster(tmp_path_factory):
    """A ParameterServerStrategy cluster on 127.0.0.1 (2 workers, 2
    parameter servers, all with the op library loaded), started once and
    shared by the coordinators of tests/test_distribute.py and
    tests/test_keras2_distribute.py, which it serves one after the other;
    its cluster spec as JSON. Its processes are killed at the session's end."""
    from support.processes import processes, start_parameter_server_cluster

    with processes(tmp_path_factory.mktemp("parameter_server_cluster")) as run:
        yield start_parameter_server_cluster(run)
