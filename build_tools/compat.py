#!/usr/bin/env python3
"""`make compat`: the release wheel in every supported environment.

For each TensorFlow release of build_tools/tf_releases.bzl, under Python
3.11 and 3.12, and for each other Keras 3 minor version that tf_adagrad
supports: a virtual environment of its own in .compat/
(kept between runs; recreated when what it asks for changes), with that
TensorFlow, the wheel from bazel-bin/release_dist/ with its `keras2` extra,
and the Keras and tf_keras that pip chooses for them. There pytest runs
tests/compat/smoke_suite.py against the installed wheel. Prints a line per
step and, at the end, a table: cell, versions, result, time; writes it to
.compat/results.md too. Exits non-zero if a cell failed.

The first run downloads TensorFlow for each cell (about 600 MB each, through
pip's cache).
"""

import argparse
import glob
import os
import platform
import shutil
import subprocess
import sys
import time

from configure import tf_releases  # build_tools/, beside this script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPAT_DIR = os.path.join(ROOT, ".compat")
SMOKE_SUITE = os.path.join(ROOT, "tests", "compat", "smoke_suite.py")
PYTHONS = ["3.11", "3.12"]
# Every other Keras 3 minor version that tf_adagrad supports
# (tf_adagrad/_versions.py; pip chooses the newest, 3.15, in the cells
# above), each with the newest TensorFlow that accepts it (tensorflow 2.21
# requires keras>=3.12), under Python 3.11: (TensorFlow minor, Keras).
OTHER_KERAS = [
    ("2.20", "3.10.0"),
    ("2.20", "3.11.3"),
    ("2.21", "3.12.0"),
    ("2.21", "3.13.2"),
    ("2.21", "3.14.1"),
]


def cells():
    """(name, Python, TensorFlow release, Keras pin or None) of the matrix."""
    matrix = []
    for minor, release in tf_releases().items():
        for python in PYTHONS:
            matrix.append((f"tf{minor}-py{python}", python, release, None))
    for minor, keras in OTHER_KERAS:
        matrix.append(
            (f"tf{minor}-py{PYTHONS[0]}-keras{keras}", PYTHONS[0], tf_releases()[minor], keras)
        )
    return matrix


def find_python(version):
    """pyenv's Python `version` (such as "3.12"), else pythonX.Y on PATH."""
    roots = [os.environ.get("PYENV_ROOT"), os.path.expanduser("~/.pyenv")]
    candidates = []
    for root in filter(None, roots):
        pattern = os.path.join(root, "versions", f"{version}.*", "bin", f"python{version}")
        candidates += sorted(glob.glob(pattern), reverse=True)
    candidates.append(shutil.which(f"python{version}"))
    for python in filter(None, candidates):
        out = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
        )
        if out.returncode == 0 and out.stdout.strip() == version:
            return python
    raise SystemExit(f"compat.py: no Python {version} here (pyenv's or python{version} on PATH)")


def child_env():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("TF_USE_LEGACY_KERAS", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def run(args, log, **kwargs):
    """Runs `args`, appending its output to `log`; True if it succeeded."""
    with open(log, "a") as f:
        f.write(f"$ {' '.join(args)}\n")
        f.flush()
        out = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, env=child_env(), **kwargs)
    return out.returncode == 0


def prepare(cell, wheel, log):
    """The cell's venv with its TensorFlow (and Keras pin) and the wheel."""
    name, python, release, keras = cell
    venv = os.path.join(COMPAT_DIR, name)
    venv_python = os.path.join(venv, "bin", "python")
    wanted = [f"tensorflow=={release}"] + ([f"keras=={keras}"] if keras else []) + ["pytest"]
    stamp = os.path.join(venv, ".requirements")
    current = open(stamp).read().split() if os.path.exists(stamp) else None
    if current != wanted:
        shutil.rmtree(venv, ignore_errors=True)
        if not run([find_python(python), "-m", "venv", venv], log):
            return None
        with open(stamp, "w") as f:
            f.write("\n".join(wanted) + "\n")
    pip = [venv_python, "-m", "pip", "install", "--quiet", "--only-binary=:all:"]
    # What the wheel asks for, then this build of the wheel itself (pip
    # keeps an installed wheel of the same version).
    if not run([*pip, *wanted, f"{wheel}[keras2]"], log) or not run(
        [*pip, "--force-reinstall", "--no-deps", wheel], log
    ):
        return None
    if not run([venv_python, "-m", "pip", "check"], log):
        return None
    return venv_python


VERSIONS = (
    "import importlib.metadata as m, sys; "
    "print('%d.%d.%d' % sys.version_info[:3], *(m.version(d) for d in "
    "('tensorflow', 'keras', 'tf-keras')))"
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", action="append", help="run only these cells (by name)")
    args = parser.parse_args()
    wheels = glob.glob(os.path.join(ROOT, "bazel-bin", "release_dist", "*.whl"))
    if len(wheels) != 1:
        raise SystemExit(
            f"compat.py: expected one wheel in bazel-bin/release_dist/ (`make wheel`), found {wheels}"
        )
    (wheel,) = wheels
    os.makedirs(COMPAT_DIR, exist_ok=True)
    matrix = [c for c in cells() if not args.cell or c[0] in args.cell]
    print(f"compat.py: {os.path.basename(wheel)}, {len(matrix)} cells", flush=True)
    rows = []
    for cell in matrix:
        name = cell[0]
        log = os.path.join(COMPAT_DIR, f"{name}.log")
        open(log, "w").close()
        started = time.monotonic()
        print(f"compat.py: {name}: installing", flush=True)
        venv_python = prepare(cell, wheel, log)
        installed = time.monotonic()
        versions, result = ["?"] * 4, "install failed"
        if venv_python:
            out = subprocess.run([venv_python, "-c", VERSIONS], capture_output=True, text=True)
            versions = out.stdout.split() if out.returncode == 0 else versions
            print(f"compat.py: {name}: smoke suite", flush=True)
            work = os.path.join(COMPAT_DIR, f"{name}.smoke")
            shutil.rmtree(work, ignore_errors=True)
            os.makedirs(work)
            shutil.copy(SMOKE_SUITE, work)
            # pytest's settings of its own, so that the source tree's
            # (pytest.ini puts the tree on sys.path) do not apply.
            with open(os.path.join(work, "pytest.ini"), "w") as f:
                f.write("[pytest]\n")
            passed = run(
                [venv_python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "smoke_suite.py"],
                log,
                cwd=work,
            )
            with open(log) as f:
                summary = [
                    line for line in f.read().splitlines() if " in " in line and "==" not in line
                ]
            tail = summary[-1] if summary else ""
            result = ("passed" if passed else "FAILED") + (
                f" ({tail.split(' in ')[0]})" if tail else ""
            )
        finished = time.monotonic()
        rows.append(
            (
                name,
                *versions,
                result,
                f"{installed - started:.0f} s",
                f"{finished - installed:.0f} s",
            )
        )
        print(f"compat.py: {name}: {result} ({finished - started:.0f} s; log {log})", flush=True)

    header = ("cell", "Python", "TensorFlow", "Keras", "tf_keras", "result", "install", "smoke")
    table = [
        f"`make compat`, {time.strftime('%Y-%m-%d')}, {platform.machine()} "
        f"{platform.system()}, {os.cpu_count()} cores",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    with open(os.path.join(COMPAT_DIR, "results.md"), "w") as f:
        f.write("\n".join(table) + "\n")
    print("\n".join(table))
    return 0 if all(row[5].startswith("passed") for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
