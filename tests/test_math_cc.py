"""Runs the TF-free C++ tests of kernels/adagrad_math.h (built by `make build`):
the plain build, and the same math under AddressSanitizer and
UndefinedBehaviorSanitizer."""

import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARIES = os.path.join(REPO, "bazel-bin", "tests", "cc")


def run(name, *args):
    binary = os.path.join(BINARIES, name)
    assert os.path.exists(binary), f"{binary} is missing: run `make build`"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=300)


def test_math_header_without_tensorflow():
    out = run("adagrad_math_test")
    assert out.returncode == 0, out.stderr
    assert "all expectations held" in out.stdout


def test_math_header_under_sanitizers():
    out = run("adagrad_math_sanitize_test")
    assert out.returncode == 0, out.stderr
    assert "expectations held" in out.stdout
    assert out.stderr == ""  # no sanitizer report


@pytest.mark.parametrize(
    "bug, report",
    [
        ("--plant-overflow", "ERROR: AddressSanitizer: heap-buffer-overflow"),
        ("--plant-signed-overflow", "runtime error: signed integer overflow"),
    ],
)
def test_sanitizers_are_active(bug, report):
    """The sanitized build reports a planted bug, so a clean run above means
    something."""
    out = run("adagrad_math_sanitize_test", bug)
    assert out.returncode != 0
    assert report in out.stderr
