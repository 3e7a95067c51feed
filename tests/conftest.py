"""Shared settings and fixtures.

pytest.ini puts the repository root first on `sys.path`, so the tests import
the source tree's `tf_adagrad` (with the op library `make build` copies
there), not a wheel installed in the venv; tests/test_packaging.py tests the
wheel. Child Pythons started by the tests get the same path through
PYTHONPATH.
"""

import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUPPORT_DIR = os.path.join(REPO_ROOT, "tests", "support")
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


# The nvcc build of the CUDA harness (the nvcc_binary fixture of
# tests/test_cuda_harness.py) keeps one core busy for about 35 s and needs
# nothing from the other tests: when a selected test needs it, it starts as
# soon as collection ends and runs beside the other tests, which run first;
# the tests that need it run last. (process, output directory, log path).
NVCC_BUILD = pytest.StashKey[tuple]()


def needs_nvcc_build(item):
    return "nvcc_binary" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(session, config, items):
    items[:] = [i for i in items if not needs_nvcc_build(i)] + [
        i for i in items if needs_nvcc_build(i)
    ]


def pytest_collection_finish(session):
    if session.config.option.collectonly or shutil.which("nvcc") is None:
        return
    if not any(needs_nvcc_build(item) for item in session.items):
        return
    out_dir = tempfile.mkdtemp(prefix="tf_adagrad_nvcc_build_")
    log_path = os.path.join(out_dir, "build.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [os.path.join(REPO_ROOT, "tests", "cuda", "run_on_gpu.sh"), "--compile-only", out_dir],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as one
        )
    session.config.stash[NVCC_BUILD] = (process, out_dir, log_path)


def pytest_sessionfinish(session):
    """Ends the nvcc build if it still runs (the session stopped early) and
    removes its files."""
    build = session.config.stash.get(NVCC_BUILD, None)
    if build is None:
        return
    process, out_dir, _ = build
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    shutil.rmtree(out_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def nvcc_build(request):
    """The nvcc build started when collection ended: waits for it; its
    output directory. Skips without nvcc on PATH."""
    if shutil.which("nvcc") is None:
        pytest.skip("no nvcc on PATH")
    process, out_dir, log_path = request.config.stash[NVCC_BUILD]
    try:
        process.wait(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    with open(log_path) as f:
        assert process.returncode == 0, f.read()
    return out_dir


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


@pytest.fixture(scope="session")
def mirrored_scenario_results(tmp_path_factory):
    """The MirroredStrategy scenario of tests/support/distributed_training.py
    (Keras 3, 2 logical CPUs), run once for tests/test_distribute.py and
    tests/test_rowwise_optimizer.py; its results by group."""
    from support.processes import load_groups, run_to_completion

    tmp_path = tmp_path_factory.mktemp("mirrored")
    out = tmp_path / "mirrored.npz"
    run_to_completion(
        tmp_path,
        "mirrored",
        os.path.join(SUPPORT_DIR, "distributed_training.py"),
        "mirrored",
        "--out",
        str(out),
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
    )
    return load_groups(out)


@pytest.fixture(scope="session")
def out_of_range_outcomes():
    """{case: outcome} of every case of tests/support/out_of_range_cases.py
    (sparse updates with an index outside the table), run in a child
    process once for tests/test_ops_errors.py and
    tests/test_optimizer_model.py."""
    from support.out_of_range_cases import CASES, run_cases

    return run_cases(list(CASES))


def run_keras2_cases(group, work_dir, prefixes=None):
    """Runs a group of tests/support/keras2_cases.py in a tf_keras child
    process, all its cases or those whose names begin with one of
    `prefixes`; {case name: result}."""
    out = os.path.join(work_dir, f"{group}.pkl")
    script = os.path.join(SUPPORT_DIR, "keras2_cases.py")
    selection = [] if prefixes is None else [",".join(sorted(prefixes))]
    completed = subprocess.run(
        [sys.executable, script, group, str(work_dir), out, *selection],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-6000:]
    with open(out, "rb") as f:
        return pickle.load(f)


def keras2_cases_read(session):
    """The case-name prefixes that the session's selected tests read from
    keras2_train_results, as their `keras2_cases` markers name them; None
    (every case) if one of those tests has no such marker."""
    prefixes = set()
    for item in session.items:
        if "keras2_train_results" not in getattr(item, "fixturenames", ()):
            continue
        marker = item.get_closest_marker("keras2_cases")
        if marker is None:
            return None
        prefixes.update(marker.args)
    return prefixes


@pytest.fixture(scope="session")
def keras2_work_dir(tmp_path_factory):
    """Where the tf_keras child of keras2_train_results saves its models."""
    return tmp_path_factory.mktemp("keras2")


@pytest.fixture(scope="session")
def keras2_train_results(request, keras2_work_dir):
    """The results of the "train" cases of tests/support/keras2_cases.py,
    which tests/test_keras2_optimizers.py and tests/test_keras2_rowwise.py
    check: one tf_keras child process for both, running the cases that the
    selected tests read (all of them in a whole run; the fast lane leaves
    the slow ones out)."""
    return run_keras2_cases("train", keras2_work_dir, keras2_cases_read(request.session))


@pytest.fixture(scope="session")
def keras2_load_results(keras2_train_results, keras2_work_dir):
    """The "load" cases, in a fresh process that sees only the files the
    "train" cases saved."""
    return run_keras2_cases("load", keras2_work_dir)
