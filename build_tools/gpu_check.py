#!/usr/bin/env python3
"""Runs tf_adagrad's GPU tests with TensorFlow on a CUDA host that has
Python 3.12 but no TensorFlow and no network.

TensorFlow 2.21 and what it needs travel as a payload, made on the build
host (the one that ran `make build`): one xz-compressed tar, split into
parts for hosts that take copies of limited size. Python's standard library
only, so that the GPU host's `python3` runs it as it is.

On the build host:

    python3 build_tools/gpu_check.py --prepare   # download, strip, stub, pack, split; prints the steps
    python3 build_tools/gpu_check.py --steps     # the steps again, for the op library built now
    python3 build_tools/gpu_check.py --dry-run   # all of it on this host's CPU, with Python 3.12

On the GPU host, in a copy of the tree with .device_payload/ (the manifest
and the parts) and the op library:

    python3 build_tools/gpu_check.py --run       # unpack, check, probe the GPU, run the tests

Where the tree can only be copied a part at a time, copy it with the
manifest and one part, run `--store-part K` (which checks the part and keeps
it outside the tree), and so on; with the last part, copy the op library
too and run `--store-part K --run`.

The payload holds (under one root): `site/`, the Python packages TensorFlow
imports that the host lacks or has in versions TensorFlow's requirements
exclude (every one of TensorFlow's and Keras' runtime requirements but
numpy, which the host must have in an allowed version), at the versions
`make build` installed into .venv; `lib/`, the CUDA 12 runtime and stub
libraries (below); `cuda_nvcc/`, ptxas and libdevice for XLA. The op library
is not in it: it is copied as itself, so rebuilding it does not mean making
or copying the payload again.

TensorFlow registers a GPU only if it can dlopen the CUDA runtime, cuBLAS,
cuBLASLt, cuFFT, cuSOLVER, cuSPARSE and cuDNN. The fused ops need only the
runtime (the real one is in the payload); the others are stubs with the
right sonames, so the payload is about 300 MiB. A matrix product on the GPU
then fails, so the Keras fit() tests, whose Dense layers need cuBLAS, skip
with that reason; `--with-cublas` puts the real cuBLAS in instead (about
230 MiB more).
"""

import argparse
import fnmatch
import glob
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.relpath(os.path.abspath(__file__), REPO)
VENV = os.path.join(REPO, ".venv")
PAYLOAD_DIR = os.path.join(REPO, ".device_payload")
# Downloads and the dry run's stand-in for the GPU host's Python: kept
# across runs.
CACHE_DIR = os.path.join(PAYLOAD_DIR, "cache")
WHEEL_DIR = os.path.join(CACHE_DIR, "wheels")
SIM_VENV = os.path.join(CACHE_DIR, "host-python")
STAGING_DIR = os.path.join(PAYLOAD_DIR, "staging")
MANIFEST = os.path.join(PAYLOAD_DIR, "manifest.json")
# The op library `make build` copies into the source tree (named by the
# development TensorFlow's minor version), and its build record.
OP_LIBRARY_FILES = sorted(
    os.path.relpath(path, REPO)
    for path in glob.glob(os.path.join(REPO, "tf_adagrad", "_tf_adagrad_ops_tf*.so"))
) + ["tf_adagrad/_build_info.py"]
# Where the GPU host keeps the parts that --store-part took in, and the
# unpacked payload.
HOLD_DIR = "/tmp/tf_adagrad_gpu_check"

# Bump when the payload's layout or contents change for the same inputs.
PAYLOAD_FORMAT = 2
# The parts' size: a part, the op library (~8 MiB), the manifest and the
# source tree (~1 MiB) fit in one copy of 64 MiB.
PART_MIB = 48
XZ_PRESET = 6

PYTHON_TAG = "3.12"  # the GPU host's python3
PLATFORM_ARGS = [
    "--only-binary=:all:",
    "--python-version",
    PYTHON_TAG,
    "--implementation",
    "cp",
    "--abi",
    "cp" + PYTHON_TAG.replace(".", ""),
] + [
    arg
    for tag in (
        "manylinux_2_28_x86_64",
        "manylinux_2_27_x86_64",
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
    )
    for arg in ("--platform", tag)
]

# What the GPU host's Python must have of TensorFlow's requirements (`--run`
# checks its version against them); the dry run's stand-in host gets this
# version.
HOST_PROVIDES = {"numpy": "2.5.2"}
# TensorFlow's and Keras' requirements that importing TensorFlow and running
# the tests do not need, and why.
NOT_IN_PAYLOAD = {
    "libclang": "used by TensorFlow's code generators at build time, never imported",
    "setuptools": "an install-time requirement; TensorFlow's runtime does not import it",
    "wheel": "astunparse's install-time requirement",
}
# The CUDA 12 libraries (from TensorFlow's CUDA 12.5 build) that TensorFlow
# must dlopen before it registers a GPU: soname -> why a stub will do.
STUB_LIBRARIES = {
    "libcublas.so.12": "cuBLAS: matrix products (the Dense layers of the fit() tests); the ops never call it",
    "libcublasLt.so.12": "cuBLASLt: fused matrix products; the ops never call it",
    "libcufft.so.11": "cuFFT: FFT ops; never called by the tests",
    "libcusolver.so.11": "cuSOLVER: linear algebra ops; never called by the tests",
    "libcusparse.so.12": "cuSPARSE: sparse matrix ops; never called by the tests",
    "libcudnn.so.9": "cuDNN: convolutions and RNNs; never called by the tests",
}
CUBLAS_LIBRARIES = ["libcublas.so.12", "libcublasLt.so.12"]
# Pinned CUDA wheels: the runtime TensorFlow 2.21 was built with (also in
# requirements-dev.txt), ptxas and libdevice for XLA, and cuBLAS for
# --with-cublas (the version tensorflow[and-cuda] names).
CUDA_RUNTIME_WHEEL = "nvidia-cuda-runtime-cu12==12.5.82"
CUDA_NVCC_WHEEL = "nvidia-cuda-nvcc-cu12==12.5.82"
CUBLAS_WHEEL = "nvidia-cublas-cu12==12.5.3.2"

# Left out of site/ (globs relative to it), each checked by --dry-run.
STRIPPED = [
    "tensorflow/include",  # C++ headers, for building op libraries
    "tensorflow/python/profiler/internal/_pywrap_profiler_plugin.so",  # remote profiling client (86 MB)
    "tensorflow/compiler/mlir/stablehlo/stablehlo_extension.so",  # StableHLO Python bindings
    "tensorflow-*.dist-info/RECORD",
    "*/tests",  # packages' own test suites (h5py's)
]
# Python modules put in place of left-out extensions that `import tensorflow`
# imports but the tests never call: path in site/ -> source.
STUB_MODULES = {
    "tensorflow/python/profiler/internal/_pywrap_profiler_plugin.py": (
        f'"""Left out of the GPU check\'s payload by {os.path.basename(__file__)}: the remote profiler client\n'
        '(tf.profiler.experimental.client), which `import tensorflow` imports and the tests never use."""\n\n\n'
        "def __getattr__(name):\n"
        '    raise ImportError(f"the profiler plugin was left out of this payload, so it has no {name}")\n'
    ),
}

# The op tests run on the GPU host after tests/test_gpu_ops.py: with a GPU
# there, their variables are created on it (TensorFlow's default device), so
# they check the GPU kernels, elementwise and rowwise, against the NumPy
# reference too.
HOST_TESTS = [
    "tests/test_gpu_ops.py",
    "tests/test_ops.py",
    "tests/test_ops_multi.py",
    "tests/test_ops_errors.py",
    "tests/test_rowwise_ops.py",
]
# Time limits, so that a hung GPU or driver cannot hold the host.
TEST_TIMEOUT_S = 900
PROBE_TIMEOUT_S = 120


class Failure(Exception):
    """A step failed; the message says what was expected and what came."""


def log(message):
    print(f"[gpu_check] {message}", flush=True)


def mib(n):
    return f"{n / 2**20:.1f} MiB"


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_text(path):
    with open(path) as f:
        return f.read()


def run(command, **kwargs):
    log("$ " + " ".join(command))
    result = subprocess.run(command, **kwargs)
    if result.returncode != 0:
        raise Failure(
            f"expected `{' '.join(command)}` to succeed, it exited with {result.returncode}"
        )
    return result


# ---------------------------------------------------------------------------
# Versions, requirements and markers (what `packaging` does, for the few
# forms found in these packages' metadata).


def normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def version_tuple(version):
    """The numeric release of a version: '3.14.0' -> (3, 14, 0); pre- and
    post-release suffixes are ignored, which is enough for these checks."""
    numbers = []
    for piece in version.split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        numbers.append(int(match.group()))
    return tuple(numbers)


def satisfies(version, specifier):
    """Whether `version` meets a specifier such as '<3.15.0,>=3.11.0'."""
    have = version_tuple(version)
    for clause in filter(None, (c.strip() for c in specifier.split(","))):
        op, want = re.match(r"(~=|==|!=|<=|>=|<|>)\s*(.+)", clause).groups()
        want_tuple = version_tuple(want)
        width = max(len(have), len(want_tuple))
        a, b = have + (0,) * (width - len(have)), want_tuple + (0,) * (width - len(want_tuple))
        if op == "~=":
            ok = a >= b and have[: len(want_tuple) - 1] == want_tuple[:-1]
        else:
            ok = {"==": a == b, "!=": a != b, "<=": a <= b, ">=": a >= b, "<": a < b, ">": a > b}[
                op
            ]
        if not ok:
            return False
    return True


MARKER_ENVIRONMENT = {
    "python_version": PYTHON_TAG,
    "python_full_version": PYTHON_TAG + ".3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def marker_holds(marker):
    """Evaluates an environment marker for the GPU host's Python; a marker
    naming an extra is false (no extras are installed)."""

    def compare(match):
        name, op, value = match.groups()
        if name == "extra":
            return "False"
        if name not in MARKER_ENVIRONMENT:
            raise Failure(
                f"expected a marker on {sorted(MARKER_ENVIRONMENT)} or extra, got {marker!r}"
            )
        have = MARKER_ENVIRONMENT[name]
        if name.endswith("version"):
            return str(satisfies(have, op + value))
        return str({"==": have == value, "!=": have != value}.get(op, False))

    expression = re.sub(r"(\w+)\s*(==|!=|<=|>=|<|>)\s*[\"']([^\"']*)[\"']", compare, marker)
    if not re.fullmatch(r"[\sA-Za-z()]*", expression) or set(
        re.findall(r"[A-Za-z]+", expression)
    ) - {
        "True",
        "False",
        "and",
        "or",
        "not",
    }:
        raise Failure(f"expected a marker of comparisons joined by and/or, got {marker!r}")
    return eval(expression, {"__builtins__": {}})  # only True/False/and/or/not/parentheses are left


def parse_requirement(line):
    """'h5py<3.15.0,>=3.11.0; marker' -> ('h5py', '<3.15.0,>=3.11.0', marker)."""
    requirement, _, marker = line.partition(";")
    match = re.match(
        r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*\(?([^)]*)\)?", requirement
    )
    return normalize(match.group(1)), match.group(2).replace(" ", ""), marker.strip()


def read_metadata(text):
    """(name, version, [requirement lines]) from a METADATA file's text."""
    name = re.search(r"^Name: *(.+)$", text, re.M).group(1).strip()
    version = re.search(r"^Version: *(.+)$", text, re.M).group(1).strip()
    return normalize(name), version, re.findall(r"^Requires-Dist: *(.+)$", text, re.M)


def venv_distributions():
    """What `make build` installed into .venv: {name: (version, requirements)}."""
    found = glob.glob(
        os.path.join(VENV, "lib", "python3*", "site-packages", "*.dist-info", "METADATA")
    )
    if not found:
        raise Failure(
            f"expected TensorFlow installed in {VENV} (run `make build` first), found no packages there"
        )
    distributions = {}
    for path in found:
        with open(path, encoding="utf-8") as f:
            name, version, requires = read_metadata(f.read())
        distributions[name] = (version, requires)
    return distributions


def runtime_closure(distributions):
    """TensorFlow's runtime requirements and theirs, for the GPU host's
    Python: {name: version from .venv}, less what the host provides and
    what is not needed."""
    wanted, queue = {}, ["tensorflow"]
    while queue:
        name = queue.pop()
        if name in wanted or name in HOST_PROVIDES or name in NOT_IN_PAYLOAD:
            continue
        if name not in distributions:
            raise Failure(
                f"expected {name} (a requirement of TensorFlow or of one of its requirements) in {VENV}"
            )
        version, requires = distributions[name]
        wanted[name] = version
        for line in requires:
            requirement, _, marker = parse_requirement(line)
            if not marker or marker_holds(marker):
                queue.append(requirement)
    return wanted


# ---------------------------------------------------------------------------
# --prepare


def pip_command():
    """A pip to download with: .venv's (recent), else this Python's."""
    venv_python = os.path.join(VENV, "bin", "python")
    return [venv_python if os.path.exists(venv_python) else sys.executable, "-m", "pip"]


def run_pip(arguments, python=None):
    """pip, its output less the warnings some index configurations repeat for
    every package (a find-links folder that does not exist)."""
    command = [python, "-m", "pip"] if python else pip_command()
    log("$ " + " ".join(command + arguments))
    result = subprocess.run(command + arguments, capture_output=True, text=True)
    for line in (result.stdout + result.stderr).splitlines():
        if "is ignored: it is neither a file nor a directory" not in line:
            print(line, flush=True)
    if result.returncode != 0:
        raise Failure(
            f"expected `pip {' '.join(arguments)}` to succeed, it exited with {result.returncode}"
        )


def wheel_for(requirement):
    """The downloaded wheel of 'name==version', or None."""
    name, _, version = requirement.partition("==")
    pattern = re.sub(r"[-_.]+", "_", name) + "-" + version + "-*.whl"
    found = [
        p
        for p in glob.glob(os.path.join(WHEEL_DIR, "*.whl"))
        if fnmatch.fnmatch(os.path.basename(p).lower(), pattern.lower())
    ]
    return found[0] if found else None


def download(requirements):
    missing = [r for r in requirements if wheel_for(r) is None]
    if missing:
        os.makedirs(WHEEL_DIR, exist_ok=True)
        run_pip(["download", "--no-deps", "--quiet", "-d", WHEEL_DIR] + PLATFORM_ARGS + missing)
    else:
        log(
            f"all {len(requirements)} wheels already downloaded in {os.path.relpath(WHEEL_DIR, REPO)}"
        )
    wheels = {}
    for requirement in requirements:
        path = wheel_for(requirement)
        if path is None:
            raise Failure(
                f"expected pip to download a cp312 manylinux wheel of {requirement}, found none"
            )
        wheels[requirement] = path
    return wheels


def is_stripped(relative):
    """Whether a wheel's file (its path in site/) matches STRIPPED."""
    parts = relative.split("/")
    for pattern in STRIPPED:
        depth = pattern.count("/") + 1
        for start in range(len(parts) - depth + 1):
            if fnmatch.fnmatch("/".join(parts[start : start + depth]), pattern):
                # Anchored patterns match from site/'s top; "*/x" anywhere below a package.
                if start == 0 or pattern.startswith("*/"):
                    return True
    return False


def unpack_wheel(path, destination, select=None):
    """Unpacks a wheel's files (those `select` maps to a name, if given)
    into `destination`, less STRIPPED ones; returns bytes written and left out."""
    kept = left_out = 0
    with zipfile.ZipFile(path) as wheel:
        for info in wheel.infolist():
            if info.is_dir():
                continue
            name = info.filename
            data = re.match(r"[^/]+\.data/([^/]+)/(.*)", name)
            if data and select is None:
                if data.group(1) not in ("purelib", "platlib"):
                    left_out += info.file_size  # scripts, headers, data: for an installer
                    continue
                name = data.group(2)
            if select is not None:
                name = select(name)
                if name is None:
                    continue
            elif is_stripped(name):
                left_out += info.file_size
                continue
            target = os.path.join(destination, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with wheel.open(info) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 2**20)
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(target, mode or 0o644)
            kept += info.file_size
    return kept, left_out


def make_stub(soname, directory, reason):
    """A shared object with nothing in it but its soname and a note of why."""
    source = os.path.join(directory, soname + ".c")
    with open(source, "w") as f:
        text = f"stub made by {SCRIPT}: {reason}".replace('"', "'")
        f.write(f'const char gpu_check_stub[] = "{text}";\n')
    run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            f"-Wl,-soname,{soname}",
            "-o",
            os.path.join(directory, soname),
            source,
        ]
    )
    os.remove(source)


def payload_key(wheels, options):
    """What the payload is made of: it is rebuilt when this changes."""
    description = {
        "format": PAYLOAD_FORMAT,
        "wheels": sorted((os.path.basename(p), os.path.getsize(p)) for p in wheels.values()),
        "stripped": STRIPPED,
        "stub_modules": STUB_MODULES,
        "stubs": sorted(options["stubs"]),
        "part_bytes": options["part_bytes"],
        "xz_preset": XZ_PRESET,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def stage(wheels, site_wheels, options):
    """Lays out the payload's tree in STAGING_DIR; returns its description."""
    shutil.rmtree(STAGING_DIR, ignore_errors=True)
    site, lib, nvcc = (os.path.join(STAGING_DIR, d) for d in ("site", "lib", "cuda_nvcc"))
    for d in (site, lib, nvcc):
        os.makedirs(d)
    kept = left_out = 0
    for requirement in site_wheels:
        k, out = unpack_wheel(wheels[requirement], site)
        kept, left_out = kept + k, left_out + out
    for relative, source in STUB_MODULES.items():
        with open(os.path.join(site, relative), "w") as f:
            f.write(source)
    log(
        f"site/: {len(site_wheels)} packages, {mib(kept)}; left out {mib(left_out)} ({', '.join(STRIPPED)})"
    )

    def only(prefix, keep):
        return lambda name: (
            name[len(prefix) :] if name.startswith(prefix) and keep(name[len(prefix) :]) else None
        )

    unpack_wheel(
        wheels[CUDA_RUNTIME_WHEEL],
        lib,
        only("nvidia/cuda_runtime/lib/", lambda n: n == "libcudart.so.12"),
    )
    unpack_wheel(
        wheels[CUDA_NVCC_WHEEL],
        nvcc,
        only("nvidia/cuda_nvcc/", lambda n: n == "bin/ptxas" or n.startswith("nvvm/libdevice/")),
    )
    os.chmod(os.path.join(nvcc, "bin", "ptxas"), 0o755)
    if options["with_cublas"]:
        unpack_wheel(
            wheels[CUBLAS_WHEEL], lib, only("nvidia/cublas/lib/", lambda n: n in CUBLAS_LIBRARIES)
        )
    for soname in options["stubs"]:
        make_stub(soname, lib, STUB_LIBRARIES[soname])
    for expected in [
        "libcudart.so.12",
        "../cuda_nvcc/bin/ptxas",
        "../cuda_nvcc/nvvm/libdevice/libdevice.10.bc",
    ]:
        if not os.path.exists(os.path.join(lib, expected)):
            raise Failure(
                f"expected {os.path.normpath(os.path.join('lib', expected))} in the payload, it is missing"
            )
    info = {
        "tensorflow": site_wheels_version(site_wheels, "tensorflow"),
        "python": PYTHON_TAG,
        "site_packages": {r.split("==")[0]: r.split("==")[1] for r in site_wheels},
        "host_provides": HOST_PROVIDES,
        "not_in_payload": NOT_IN_PAYLOAD,
        "stripped": STRIPPED,
        "stub_modules": sorted(STUB_MODULES),
        "stubs": {s: STUB_LIBRARIES[s] for s in options["stubs"]},
        "real_cuda_libraries": ["libcudart.so.12"]
        + (CUBLAS_LIBRARIES if options["with_cublas"] else []),
        "cuda_wheels": [CUDA_RUNTIME_WHEEL, CUDA_NVCC_WHEEL]
        + ([CUBLAS_WHEEL] if options["with_cublas"] else []),
    }
    with open(os.path.join(STAGING_DIR, "payload-info.json"), "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
    return info


def site_wheels_version(site_wheels, name):
    return next(r.split("==")[1] for r in site_wheels if r.split("==")[0] == name)


def tree_bytes(root):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)


def pack_and_split(source_dir, out_dir, part_bytes):
    """tar | xz of `source_dir`, written as parts of `part_bytes` into
    `out_dir`; returns (parts, whole sha256, compressed bytes)."""
    xz = shutil.which("xz")
    threads = str(os.cpu_count() or 1)
    compressor = subprocess.Popen(
        [xz, f"-{XZ_PRESET}", f"-T{threads}", "-c"] if xz else [sys.executable, "-c", PY_XZ_FILTER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    errors = []

    def write_tar():
        def owned_by_root(member):
            member.uid = member.gid = 0
            member.uname = member.gname = ""
            return member

        try:
            with tarfile.open(
                fileobj=compressor.stdin, mode="w|", format=tarfile.PAX_FORMAT
            ) as tar:
                for name in sorted(os.listdir(source_dir)):
                    tar.add(os.path.join(source_dir, name), arcname=name, filter=owned_by_root)
        except Exception as e:  # reported by the main thread
            errors.append(e)
        finally:
            compressor.stdin.close()

    writer = threading.Thread(target=write_tar)
    writer.start()
    whole, parts, part, part_digest, written = hashlib.sha256(), [], None, None, 0
    while True:
        chunk = compressor.stdout.read(2**20)
        if not chunk:
            break
        whole.update(chunk)
        while chunk:
            if part is None:
                name = f"part-{len(parts):02d}"
                part, part_digest, written = (
                    open(os.path.join(out_dir, name), "wb"),
                    hashlib.sha256(),
                    0,
                )
                parts.append({"name": name})
            take = chunk[: part_bytes - written]
            part.write(take)
            part_digest.update(take)
            written += len(take)
            chunk = chunk[len(take) :]
            if written == part_bytes:
                part.close()
                parts[-1].update(bytes=written, sha256=part_digest.hexdigest())
                part = None
    if part is not None:
        part.close()
        parts[-1].update(bytes=written, sha256=part_digest.hexdigest())
    writer.join()
    if compressor.wait() != 0 or errors:
        raise Failure(
            f"expected packing to succeed; the compressor exited {compressor.returncode}, errors: {errors}"
        )
    return parts, whole.hexdigest(), sum(p["bytes"] for p in parts)


# Python's own xz, where the xz program is missing (single-threaded: slow).
PY_XZ_FILTER = (
    "import lzma, shutil, sys; "
    f"shutil.copyfileobj(sys.stdin.buffer, lzma.LZMAFile(sys.stdout.buffer, 'w', preset={XZ_PRESET}), 2**20)"
)


def op_library_record():
    if not any(f.endswith(".so") for f in OP_LIBRARY_FILES):
        raise Failure(
            "expected the op library tf_adagrad/_tf_adagrad_ops_tf*.so (run `make build` first), "
            "found none"
        )
    record = {}
    for relative in OP_LIBRARY_FILES:
        path = os.path.join(REPO, relative)
        if not os.path.exists(path):
            raise Failure(
                f"expected the op library's {relative} (run `make build` first), it is missing"
            )
        record[relative] = sha256_of(path)
    return record


def read_manifest(path=MANIFEST):
    if not os.path.exists(path):
        raise Failure(
            f"expected a payload manifest at {path}: run `python3 {SCRIPT} --prepare` first"
        )
    with open(path) as f:
        return json.load(f)


def write_manifest(manifest, path=MANIFEST):
    with open(path + ".new", "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    os.replace(path + ".new", path)


def prepare(with_cublas=False, part_mib=PART_MIB):
    """Downloads, stages, packs and splits the payload (unless the one in
    .device_payload is already made of the same inputs); returns the manifest."""
    started = time.monotonic()
    distributions = venv_distributions()
    tf_version = distributions.get("tensorflow", (None,))[0]
    if tf_version is None:
        raise Failure(f"expected TensorFlow in {VENV} (run `make build`), found none")
    closure = runtime_closure(distributions)
    site_wheels = sorted(f"{name}=={version}" for name, version in closure.items())
    cuda_wheels = [CUDA_RUNTIME_WHEEL, CUDA_NVCC_WHEEL] + ([CUBLAS_WHEEL] if with_cublas else [])
    wheels = download(site_wheels + cuda_wheels)
    options = {
        "with_cublas": with_cublas,
        "stubs": [s for s in STUB_LIBRARIES if not (with_cublas and s in CUBLAS_LIBRARIES)],
        "part_bytes": part_mib * 2**20,
    }
    key = payload_key(wheels, options)
    manifest = read_manifest() if os.path.exists(MANIFEST) else {}
    up_to_date = manifest.get("key") == key and all(
        os.path.exists(os.path.join(PAYLOAD_DIR, p["name"]))
        and os.path.getsize(os.path.join(PAYLOAD_DIR, p["name"])) == p["bytes"]
        for p in manifest.get("parts", [])
    )
    if up_to_date:
        log(
            f"payload {manifest['payload_sha256'][:12]} is up to date ({len(manifest['parts'])} parts)"
        )
    else:
        for old in glob.glob(os.path.join(PAYLOAD_DIR, "part-*")):
            os.remove(old)
        info = stage(wheels, site_wheels, options)
        unpacked = tree_bytes(STAGING_DIR)
        log(
            f"packing {mib(unpacked)} with xz -{XZ_PRESET} into parts of {mib(options['part_bytes'])} (minutes)"
        )
        pack_started = time.monotonic()
        parts, whole_sha, compressed = pack_and_split(
            STAGING_DIR, PAYLOAD_DIR, options["part_bytes"]
        )
        shutil.rmtree(STAGING_DIR)
        manifest = {
            "key": key,
            "format": PAYLOAD_FORMAT,
            "compression": "xz",
            "payload_sha256": whole_sha,
            "payload_bytes": compressed,
            "unpacked_bytes": unpacked,
            "parts": parts,
            "pack_seconds": round(time.monotonic() - pack_started),
            "info": info,
        }
    manifest["op_library"] = op_library_record()
    write_manifest(manifest)
    log(
        f"payload: {mib(manifest['payload_bytes'])} in {len(manifest['parts'])} parts "
        f"({mib(manifest['unpacked_bytes'])} unpacked), stubs: {', '.join(manifest['info']['stubs'])}; "
        f"prepared in {time.monotonic() - started:.0f} s"
    )
    return manifest


# ---------------------------------------------------------------------------
# On the GPU host: --store-part and --run


def store_part(index, hold_dir, keep_source=False):
    """Checks that part `index` came whole with this copy of the tree and
    moves it into `hold_dir`, where `--run` finds it after later copies
    (which may hold other parts, or none)."""
    manifest = read_manifest()
    if not 0 <= index < len(manifest["parts"]):
        raise Failure(f"expected a part number in [0, {len(manifest['parts'])}), got {index}")
    part = manifest["parts"][index]
    source = os.path.join(PAYLOAD_DIR, part["name"])
    if not os.path.exists(source):
        raise Failure(
            f"expected {os.path.relpath(source, REPO)} in this copy of the tree: copy it with the manifest"
        )
    got = sha256_of(source)
    if got != part["sha256"]:
        raise Failure(
            f"expected {part['name']} with sha256 {part['sha256']}, got {got} ({os.path.getsize(source)} bytes)"
        )
    os.makedirs(hold_dir, exist_ok=True)
    held = os.path.join(hold_dir, "manifest.json")
    if os.path.exists(held) and read_manifest(held)["payload_sha256"] != manifest["payload_sha256"]:
        log(f"the parts held in {hold_dir} belong to another payload: dropping them")
        for old in glob.glob(os.path.join(hold_dir, "part-*")):
            os.remove(old)
    (shutil.copyfile if keep_source else shutil.move)(source, os.path.join(hold_dir, part["name"]))
    write_manifest(manifest, held)
    present = [
        i
        for i, p in enumerate(manifest["parts"])
        if os.path.exists(os.path.join(hold_dir, p["name"]))
    ]
    missing = [i for i in range(len(manifest["parts"])) if i not in present]
    log(
        f"part {index} of 0..{len(manifest['parts']) - 1} ({part['bytes']} bytes) arrived, sha256 ok; "
        f"held in {hold_dir}: {present}; still to copy: {missing or 'none'}"
    )


def part_paths(manifest, hold_dir):
    """Where each part is: in `hold_dir` (taken in by --store-part for this
    payload) or in this tree's .device_payload/."""
    held = os.path.join(hold_dir, "manifest.json")
    places = [PAYLOAD_DIR]
    if os.path.exists(held) and read_manifest(held)["payload_sha256"] == manifest["payload_sha256"]:
        places.insert(0, hold_dir)
    paths, missing = [], []
    for i, part in enumerate(manifest["parts"]):
        found = [
            os.path.join(place, part["name"])
            for place in places
            if os.path.exists(os.path.join(place, part["name"]))
        ]
        if found:
            paths.append(found[0])
        else:
            missing.append(i)
    if missing:
        raise Failure(
            f"expected all {len(manifest['parts'])} parts in {os.path.relpath(PAYLOAD_DIR, REPO)}/ or in "
            f"{hold_dir}, parts {missing} are missing: copy them (see --steps)"
        )
    for path, part in zip(paths, manifest["parts"]):
        if os.path.getsize(path) != part["bytes"]:
            raise Failure(f"expected {path} of {part['bytes']} bytes, got {os.path.getsize(path)}")
    return paths


class PartsReader(io.RawIOBase):
    """The parts, read one after another as one stream, hashed on the way."""

    def __init__(self, paths):
        self.paths, self.current, self.digest = list(paths), None, hashlib.sha256()

    def readable(self):
        return True

    def readinto(self, buffer):
        while True:
            if self.current is None:
                if not self.paths:
                    return 0
                self.current = open(self.paths.pop(0), "rb")
            n = self.current.readinto(buffer)
            if n:
                self.digest.update(memoryview(buffer)[:n])
                return n
            self.current.close()
            self.current = None


def unpack_payload(manifest, hold_dir):
    """Reassembles, checks and unpacks the payload into hold_dir/root (once
    per payload: a second --run reuses it)."""
    root = os.path.join(hold_dir, "root")
    done = os.path.join(root, ".unpacked")
    if os.path.exists(done) and read_text(done) == manifest["payload_sha256"]:
        log(f"payload {manifest['payload_sha256'][:12]} already unpacked in {root}")
        return root
    paths = part_paths(manifest, hold_dir)
    started = time.monotonic()
    shutil.rmtree(root, ignore_errors=True)
    reader = PartsReader(paths)
    stream = io.BufferedReader(reader, 2**20)
    extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        with tarfile.open(fileobj=stream, mode="r|xz") as tar:
            tar.extractall(root, **extra)
        while stream.read(2**20):  # the rest of the stream, so the whole is hashed
            pass
    except (tarfile.TarError, lzma.LZMAError, EOFError) as e:
        shutil.rmtree(root, ignore_errors=True)
        raise Failure(
            f"expected the parts to reassemble into the payload's tar.xz, unpacking failed: {e!r}"
        ) from e
    got = reader.digest.hexdigest()
    if got != manifest["payload_sha256"]:
        shutil.rmtree(root, ignore_errors=True)
        raise Failure(
            f"expected the reassembled payload's sha256 to be {manifest['payload_sha256']}, got {got}"
        )
    with open(done, "w") as f:
        f.write(manifest["payload_sha256"])
    log(
        f"payload reassembled, sha256 ok, unpacked into {root} in {time.monotonic() - started:.0f} s"
    )
    return root


def host_test_environment(root):
    env = dict(os.environ)
    nvcc = os.path.join(root, "cuda_nvcc")

    def prepend(name, value):
        env[name] = value + (os.pathsep + env[name] if env.get(name) else "")

    # The payload's packages first, then the op library's source tree, then
    # the host's own packages (numpy, pytest).
    prepend("PYTHONPATH", os.path.join(root, "site") + os.pathsep + REPO)
    prepend("LD_LIBRARY_PATH", os.path.join(root, "lib"))
    prepend("PATH", os.path.join(nvcc, "bin"))  # XLA's ptxas: CUDA 12.5's, before any other
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_gpu_cuda_data_dir={nvcc}").strip()
    env["PYTHONNOUSERSITE"] = "1"
    # Memory as needed, not most of the GPU's up front.
    env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def check_requirements(root, manifest, report):
    """The host's versions of what TensorFlow needs against TensorFlow's and
    Keras' requirements: what is taken from the host must satisfy them; what
    the payload holds shadows the host's, which is shown."""
    from importlib import metadata

    requirements = {}
    for name in ("tensorflow", "keras"):
        found = glob.glob(os.path.join(root, "site", f"{name}-*.dist-info", "METADATA"))
        with open(found[0], encoding="utf-8") as f:
            for line in read_metadata(f.read())[2]:
                requirement, specifier, marker = parse_requirement(line)
                if not marker or marker_holds(marker):
                    requirements.setdefault(requirement, []).append(f"{name}: {specifier or 'any'}")
    in_payload = manifest["info"]["site_packages"]
    problems = []
    report(f"{'package':18} {'this host':13} {'payload':11} required by")
    for name in sorted(requirements):
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        specifiers = [s.split(": ")[1] for s in requirements[name] if s.split(": ")[1] != "any"]
        fits = have is not None and all(satisfies(have, s) for s in specifiers)
        payload_version = in_payload.get(name)
        if payload_version is None and name in HOST_PROVIDES and not fits:
            problems.append(
                f"{name}: expected a version meeting {', '.join(specifiers)}, this host has {have}"
            )
        note = "" if payload_version or fits or name in NOT_IN_PAYLOAD else "  MISSING"
        if payload_version and have and not fits:
            note = "  (this host's is outside the requirement: the payload's is used)"
        report(
            f"{name:16} {have or '-':13} {payload_version or '-':11} {'; '.join(requirements[name])}{note}"
        )
    if problems:
        raise Failure("; ".join(problems))


PROBE = r"""
import ctypes, os, subprocess, time
# What TensorFlow dlopens before it registers a GPU, as it will find it.
lib = os.path.join(os.environ["GPU_CHECK_ROOT"], "lib")
for name in sorted(os.listdir(lib)):
    handle = ctypes.CDLL(name)
    kind = "stub" if hasattr(handle, "gpu_check_stub") else "real"
    print(f"dlopen {name}: ok ({kind}, {os.path.getsize(os.path.join(lib, name))} bytes)")
print("ptxas:", subprocess.run(["ptxas", "--version"], capture_output=True, text=True).stdout.splitlines()[-1])
started = time.monotonic()
import tensorflow as tf
imported = time.monotonic() - started
print("tensorflow", tf.__version__, "from", tf.__file__, f"(imported in {imported:.1f} s)")
info = tf.sysconfig.get_build_info()
print("built for CUDA", info.get("cuda_version"), "cuDNN", info.get("cudnn_version"))
gpus = tf.config.list_physical_devices("GPU")
print("GPUs:", gpus)
for gpu in gpus:
    print("  ", tf.config.experimental.get_device_details(gpu))
import numpy, keras, tf_adagrad, tf_adagrad.ops
print("numpy", numpy.__version__, "from", numpy.__file__, "| keras", keras.__version__)
tf_adagrad.ops.load_library()
print("op library loaded:", tf_adagrad._loader.LIBRARY_PATH)
from tensorflow.python.framework import kernels
for op in ("ApplyDense", "ApplySparse", "MultiApplyDense", "RowwiseApplyDense", "RowwiseApplySparse"):
    devices = [k.device_type for k in kernels.get_registered_kernels_for_op("TfAdagrad>" + op).kernel]
    print(f"  TfAdagrad>{op}: {devices.count('CPU')} CPU kernels, {devices.count('GPU')} GPU kernels")
if gpus:
    with tf.device("/GPU:0"):
        v = tf.Variable([1.0, 2.0, 3.0])
        a = tf.Variable([0.1, 0.1, 0.1])
        tf_adagrad.ops.apply_adagrad(v, a, 0.1, 1e-7, tf.constant([1.0, 1.0, 1.0]))
        rows = tf.Variable([[1.0, 2.0], [3.0, 4.0]])
        row_accum = tf.Variable([0.1, 0.1])
        tf_adagrad.ops.rowwise_apply_adagrad(rows, row_accum, 0.1, 1e-7, tf.ones((2, 2)))
    print("a dense step on", v.device, "->", v.numpy().tolist())
    print("a rowwise dense step on", rows.device, "->", rows.numpy().tolist())
xla_step = tf.function(lambda x: tf.math.rsqrt(x + 1.0) * x, jit_compile=True)
with tf.device("/CPU:0"):
    print("XLA on the CPU:", xla_step(tf.constant([1.0, 3.0])).numpy().tolist())
if gpus:
    try:
        with tf.device("/GPU:0"):
            print("XLA on the GPU (ptxas, libdevice):", xla_step(tf.constant([1.0, 3.0])).numpy().tolist())
    except Exception as e:
        print("XLA on the GPU failed:", str(e).splitlines()[0])
    try:
        with tf.device("/GPU:0"):
            tf.linalg.matmul(tf.ones((2, 2)), tf.ones((2, 2))).numpy()
        print("cuBLAS: a matmul on the GPU ran")
    except Exception as e:
        print("cuBLAS: a matmul on the GPU failed (expected with the stub):", str(e).splitlines()[0])
"""


def host_run(hold_dir, log_dir, require_gpu=True, test_timeout=TEST_TIMEOUT_S):
    """Unpacks the payload and runs the GPU tests with it; returns pytest's
    exit status. The log (a failure's reason included) and a JUnit report
    go to `log_dir`."""
    os.makedirs(log_dir, exist_ok=True)
    log_path = os.path.join(log_dir, "gpu_check.log")
    with open(log_path, "w") as log_file:

        def report(line):
            print(line, flush=True)
            log_file.write(line + "\n")
            log_file.flush()

        try:
            status = run_tests_with_payload(hold_dir, require_gpu, test_timeout, log_dir, report)
        except (Failure, subprocess.TimeoutExpired) as e:
            report(f"GPU check FAILED: {e}")
            raise
        finally:
            log(f"the log: {log_path}")
        return status


def run_tests_with_payload(hold_dir, require_gpu, test_timeout, log_dir, report):
    started = time.monotonic()
    report(f"python {sys.version.split()[0]} at {sys.executable}; repository {REPO}")
    if sys.version_info[:2] != tuple(int(x) for x in PYTHON_TAG.split(".")):
        raise Failure(
            f"expected Python {PYTHON_TAG} (the payload is cp312), got {sys.version.split()[0]}"
        )
    manifest = read_manifest()
    for relative, want in manifest["op_library"].items():
        path = os.path.join(REPO, relative)
        if not os.path.exists(path):
            raise Failure(
                f"expected the op library's {relative} in this copy of the tree (it is git-ignored: copy it too)"
            )
        if sha256_of(path) != want:
            raise Failure(
                f"expected {relative} with sha256 {want} (as the manifest says), got {sha256_of(path)}: "
                f"run `python3 {SCRIPT} --steps` on the build host after a rebuild, and copy both again"
            )
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,compute_cap",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
        )
        report(f"nvidia-smi: {(smi.stdout or smi.stderr).strip()}")
    else:
        report("nvidia-smi: not found")
    root = unpack_payload(manifest, hold_dir)
    report(
        f"payload {manifest['payload_sha256'][:12]}: stubs {', '.join(manifest['info']['stubs'])}"
    )
    check_requirements(root, manifest, report)
    env = host_test_environment(root)
    # dso_loader=1 logs every library TensorFlow opens, and every one it cannot.
    probe_env = dict(
        env, TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="dso_loader=1", GPU_CHECK_ROOT=root
    )
    probe = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env=probe_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=PROBE_TIMEOUT_S,
    )
    for line in probe.stdout.splitlines():
        report("probe| " + line)
    if probe.returncode != 0:
        raise Failure(
            f"expected TensorFlow to import and load the op library, the probe exited {probe.returncode}"
        )
    if require_gpu and "GPUs: []" in probe.stdout:
        raise Failure(
            "expected TensorFlow to see the GPU, it sees none (see the probe's log above)"
        )
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-ra",
        "-p",
        "no:cacheprovider",
        "--durations=10",
        f"--junitxml={os.path.join(log_dir, 'gpu_check.xml')}",
    ] + HOST_TESTS
    report("$ " + " ".join(command))
    tests = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    timer = threading.Timer(test_timeout, tests.kill)
    timer.start()
    for line in tests.stdout:
        report(line.rstrip("\n"))
    status = tests.wait()
    timer.cancel()
    if status < 0:
        report(f"the tests were stopped after {test_timeout} s")
        status = 1
    report(f"GPU check: pytest exited {status}; {time.monotonic() - started:.0f} s in all")
    return status


# ---------------------------------------------------------------------------
# --steps and --dry-run (on the build host)


def steps(manifest):
    """What to copy to the GPU host and what to run there."""
    parts = manifest["parts"]
    last = len(parts) - 1
    part_size = max(p["bytes"] for p in parts)
    op_library = ", ".join(OP_LIBRARY_FILES)
    op_library_bytes = sum(
        os.path.getsize(os.path.join(REPO, f))
        for f in OP_LIBRARY_FILES
        if os.path.exists(os.path.join(REPO, f))
    )
    return "\n".join(
        [
            f"Payload {manifest['payload_sha256'][:12]}: {mib(manifest['payload_bytes'])} in {len(parts)} parts "
            f"of at most {mib(part_size)} ({mib(manifest['unpacked_bytes'])} unpacked); "
            f"stubs: {', '.join(manifest['info']['stubs'])}.",
            "",
            f"The GPU host needs Linux x86-64, an NVIDIA driver for CUDA 12.5 or newer, and Python {PYTHON_TAG} "
            "with numpy and pytest.",
            "",
            "Copy this tree to the GPU host with .device_payload/manifest.json, the parts "
            f"(.device_payload/part-*) and the op library ({op_library}), which git ignores; "
            "then, in the copy:",
            "",
            f"    python3 {SCRIPT} --run",
            "",
            f"Where a copy must be small (a part is {mib(part_size)}, the op library {mib(op_library_bytes)}, "
            "the tree about 1 MiB), copy the tree with .device_payload/manifest.json and one part at a time, "
            "and after each copy run, in it:",
            "",
            f"    python3 {SCRIPT} --store-part K       # K = 0 .. {last - 1}: checks part K, keeps it in "
            f"{HOLD_DIR}",
            "",
            "and with the last part copy the op library too and run:",
            "",
            f"    python3 {SCRIPT} --store-part {last} --run",
            "",
            f"--run unpacks the payload into {HOLD_DIR}/root (once; a second --run reuses it), prints what "
            "TensorFlow finds (libraries, GPUs, the op library's kernels, one step on the GPU), then runs "
            f"{', '.join(HOST_TESTS)}. It writes .device_payload/gpu_check.log and gpu_check.xml (a JUnit "
            "report), and exits non-zero if TensorFlow sees no GPU or a test fails.",
        ]
    )


def host_python():
    """A Python 3.12 standing in for the GPU host's: a venv with numpy at
    HOST_PROVIDES' version (and the newest h5py, outside TensorFlow's
    requirement, so that the payload's must shadow it) plus pytest."""
    python = os.path.join(SIM_VENV, "bin", "python")
    ready = os.path.join(SIM_VENV, ".ready")
    packages = [f"numpy=={HOST_PROVIDES['numpy']}", "h5py==3.16.0", "pytest"]
    if os.path.exists(ready) and read_text(ready) == " ".join(packages):
        return python
    candidates = sorted(glob.glob("/root/.pyenv/versions/3.12*/bin/python3.12")) + [
        shutil.which("python3.12") or ""
    ]
    base = next((c for c in candidates if c and os.path.exists(c)), None)
    if base is None:
        raise Failure(
            "expected a Python 3.12 (pyenv's, or python3.12 on PATH) to stand in for the GPU host's, found none"
        )
    shutil.rmtree(SIM_VENV, ignore_errors=True)
    run([base, "-m", "venv", SIM_VENV])
    run_pip(["install", "--quiet"] + packages, python=python)
    with open(ready, "w") as f:
        f.write(" ".join(packages))
    return python


def dry_run(with_cublas=False, part_mib=PART_MIB, keep=False):
    """Everything on this host: prepare, then the GPU host's steps, a part at
    a time, with a Python 3.12 standing in for the host's, on the CPU."""
    times = {}
    started = time.monotonic()
    manifest = prepare(with_cublas, part_mib)
    times["prepare"] = time.monotonic() - started
    python = host_python()
    hold_dir = tempfile.mkdtemp(prefix="gpu_check_dry_run_")
    try:
        step_started = time.monotonic()
        for i in range(len(manifest["parts"])):
            run(
                [python, SCRIPT, "--store-part", str(i), "--hold-dir", hold_dir, "--keep-source"],
                cwd=REPO,
            )
        times["parts"] = time.monotonic() - step_started
        run_started = time.monotonic()
        run(
            [
                python,
                SCRIPT,
                "--run",
                "--hold-dir",
                hold_dir,
                "--log-dir",
                hold_dir,
                "--allow-no-gpu",
            ],
            cwd=REPO,
        )
        times["run"] = time.monotonic() - run_started
        kept_log = os.path.join(PAYLOAD_DIR, "dry-run.log")
        shutil.copyfile(os.path.join(hold_dir, "gpu_check.log"), kept_log)
        log(f"the run's log: {os.path.relpath(kept_log, REPO)}")
        summary = [
            line
            for line in read_text(kept_log).splitlines()
            if re.match(r"=+ .*(passed|failed|error)", line)
        ]
    finally:
        if keep:
            log(f"kept {hold_dir}")
        else:
            shutil.rmtree(hold_dir, ignore_errors=True)
    log(
        f"DRY RUN PASSED in {time.monotonic() - started:.0f} s "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in times.items())}); tests: {summary[-1] if summary else '?'}"
    )
    print(steps(manifest))


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--prepare",
        action="store_true",
        help="build host: download, strip, stub, pack and split the payload",
    )
    parser.add_argument(
        "--steps",
        action="store_true",
        help="build host: print what to copy and run, for the op library built now",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="build host: all of it on the CPU, with Python 3.12",
    )
    parser.add_argument(
        "--store-part",
        type=int,
        metavar="K",
        help="GPU host: check part K of this copy and keep it in --hold-dir",
    )
    parser.add_argument(
        "--run", action="store_true", help="GPU host: unpack the payload and run the tests"
    )
    parser.add_argument(
        "--with-cublas",
        action="store_true",
        help="--prepare: put the real cuBLAS in the payload instead of stubs",
    )
    parser.add_argument(
        "--part-mib",
        type=int,
        default=PART_MIB,
        help=f"--prepare: the parts' size in MiB (default {PART_MIB})",
    )
    parser.add_argument(
        "--hold-dir",
        default=HOLD_DIR,
        help=f"GPU host: where parts are kept and the payload unpacked (default {HOLD_DIR})",
    )
    parser.add_argument(
        "--log-dir",
        default=PAYLOAD_DIR,
        help="GPU host: where --run writes gpu_check.log and gpu_check.xml (default .device_payload/)",
    )
    parser.add_argument(
        "--keep-source", action="store_true", help=argparse.SUPPRESS
    )  # the dry run keeps the tree's parts
    parser.add_argument(
        "--allow-no-gpu", action="store_true", help=argparse.SUPPRESS
    )  # the dry run has none
    parser.add_argument("--keep", action="store_true", help="keep the dry run's unpacked payload")
    args = parser.parse_args()
    actions = [args.prepare, args.steps, args.store_part is not None, args.run, args.dry_run]
    # `--store-part K --run` takes in the last part, then runs the tests.
    if sum(actions) != 1 and not (sum(actions) == 2 and args.store_part is not None and args.run):
        parser.error("expected one of --prepare, --steps, --dry-run, --store-part K [--run], --run")
    try:
        if args.prepare:
            prepare(args.with_cublas, args.part_mib)
            print(steps(read_manifest()))
        elif args.steps:
            manifest = read_manifest()
            manifest["op_library"] = op_library_record()
            write_manifest(manifest)
            print(steps(manifest))
        elif args.dry_run:
            dry_run(args.with_cublas, args.part_mib, args.keep)
        else:
            if args.store_part is not None:
                store_part(args.store_part, args.hold_dir, args.keep_source)
            if args.run:
                return host_run(args.hold_dir, args.log_dir, require_gpu=not args.allow_no_gpu)
    except (Failure, subprocess.TimeoutExpired) as e:
        log(f"FAILED: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
