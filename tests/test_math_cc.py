"""Runs the TF-free C++ test of kernels/adagrad_math.h (built by `make build`)."""

import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(REPO, "bazel-bin", "tests", "cc", "adagrad_math_test")


def test_math_header_without_tensorflow():
    assert os.path.exists(BINARY), f"{BINARY} is missing: run `make build`"
    out = subprocess.run([BINARY], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "all expectations held" in out.stdout
