"""Builds and runs the standalone CUDA test program, tests/cuda/adagrad_cuda_test.cu.

Two builds of the same program: the one `make build` makes with the op
library's own CUDA toolchain (clang-16 and the CUDA 12 wheels), and one made
here with nvcc when nvcc is on PATH. Each is run when the machine has a GPU;
without one the program exits 77, and the run is skipped with its message.
The nvcc build takes about 35 s, so its tests are marked slow (`make test`
runs them, `make test-fast` does not); conftest.py starts it when
collection ends and runs its tests last, so that it builds while the other
tests run.
"""

import os
import subprocess

import pytest

NO_DEVICE = 77  # the program's exit status when it finds no CUDA device
RUN_TIMEOUT_S = 600


def run_harness(binary):
    """Runs the program; skips when there is no GPU, fails on any failed check."""
    out = subprocess.run([binary], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if out.returncode == NO_DEVICE:
        pytest.skip(f"needs a GPU: {binary} says {out.stdout.strip()!r}")
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-5000:]
    assert " 0 failed" in out.stdout.splitlines()[-1]


def test_harness_built_with_project_toolchain_runs(repo_root, cuda_build):
    if not cuda_build:
        pytest.skip("configure.py found no CUDA toolchain, so the build has no CUDA")
    binary = os.path.join(repo_root, "bazel-bin", "tests", "cuda", "adagrad_cuda_test")
    assert os.path.exists(binary), f"{binary} is missing: run `make build`"
    run_harness(binary)


@pytest.fixture(scope="module")
def nvcc_binary(nvcc_build):
    """The program built with nvcc (conftest.py's nvcc_build: started when
    collection ended, beside the other tests, which run first)."""
    return os.path.join(nvcc_build, "adagrad_cuda_test")


@pytest.mark.slow
def test_harness_compiles_with_nvcc(nvcc_binary):
    assert os.access(nvcc_binary, os.X_OK)


@pytest.mark.slow
def test_harness_built_with_nvcc_runs(nvcc_binary):
    run_harness(nvcc_binary)
