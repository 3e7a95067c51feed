"""Runs the TF-free C++ tests of the kernels' headers (built by `make build`):
the plain build, and the same math under AddressSanitizer and
UndefinedBehaviorSanitizer."""

import os
import subprocess

import pytest


@pytest.fixture
def run(repo_root):
    """Runs one of the test programs Bazel built into bazel-bin/tests/cc/."""

    def run_program(name, *args):
        binary = os.path.join(repo_root, "bazel-bin", "tests", "cc", name)
        assert os.path.exists(binary), f"{binary} is missing: run `make build`"
        return subprocess.run([binary, *args], capture_output=True, text=True, timeout=300)

    return run_program


def test_math_header_without_tensorflow(run):
    out = run("adagrad_math_test")
    assert out.returncode == 0, out.stderr
    assert "all expectations held" in out.stdout


def test_math_header_under_sanitizers(run):
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
def test_sanitizers_are_active(run, bug, report):
    """The sanitized build reports a planted bug, so a clean run above means
    something."""
    out = run("adagrad_math_sanitize_test", bug)
    assert out.returncode != 0
    assert report in out.stderr
