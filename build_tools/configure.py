#!/usr/bin/env python3
"""Writes the workspace root's .tf_configure.bazelrc from the installed TensorFlow.

Every compiler and linker flag comes from ``tf.sysconfig``; nothing is
hard-coded. Run it with the Python whose TensorFlow the ops must match
(``make build`` uses ``.venv/bin/python``).

It also records, for the wheel (``//:wheel``), this machine's platform tag,
for example ``linux_x86_64`` (the wheel is ``py3-none-linux_x86_64``: the op
library does not use Python's ABI), and this Python, which runs the wheel
builder.

For the release wheel (`make wheel`), it also reads the TensorFlow of each
release in build_tools/tf_releases.bzl from its own virtual environment,
.tf_builds/tfX.Y/, and writes it as `--repo_env=TF_X_Y_...` and
`--define=tf_version_X_Y`; `--release` first creates the environments that
are missing (`pip install tensorflow==X.Y.Z`, a download of about 600 MB
each, once). Every release's compile flags must equal the installed
TensorFlow's, which the whole build shares.

It also looks for the CUDA toolchain: clang (``CUDA_CLANG``, Debian's
clang-16) and the CUDA 12 wheels of requirements-dev.txt in this Python's
site-packages. When all are there, it defines ``--config=cuda`` and makes it
the default, so the op library gets its GPU kernels.
"""

import argparse
import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time

# The workspace root, one folder up from build_tools/.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(ROOT, ".tf_configure.bazelrc")
# The virtual environments of the releases' TensorFlows, one per minor.
RELEASE_ENVS = os.path.join(ROOT, ".tf_builds")


def _split_flags(flags, prefix):
    """Returns the values of the flags that start with ``prefix``."""
    return [f[len(prefix) :] for f in flags if f.startswith(prefix)]


def tf_build_settings():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    compile_flags = tf.sysconfig.get_compile_flags()
    link_flags = tf.sysconfig.get_link_flags()
    (include_dir,) = _split_flags(compile_flags, "-I")
    (lib_dir,) = _split_flags(link_flags, "-L")
    (lib_name,) = _split_flags(link_flags, "-l:")
    other_compile_flags = [f for f in compile_flags if not f.startswith("-I")]
    return {
        "version": tf.__version__,
        "include_dir": include_dir,
        "lib_dir": lib_dir,
        "lib_name": lib_name,
        "compile_flags": other_compile_flags,
    }


def wheel_settings():
    """The wheel's platform tag (PEP 425) for this machine, and this Python."""
    return {
        "platform_tag": sysconfig.get_platform().replace("-", "_").replace(".", "_"),
        "build_python": sys.executable,
    }


def tf_releases():
    """{"2.18": "2.18.1", ...}: TF_RELEASES of build_tools/tf_releases.bzl."""
    path = os.path.join(ROOT, "build_tools", "tf_releases.bzl")
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "TF_RELEASES":
            return ast.literal_eval(node.value)
    raise SystemExit(f"configure.py: {path} sets no TF_RELEASES")


def release_env(minor):
    return os.path.join(RELEASE_ENVS, f"tf{minor}")


def release_python(minor):
    return os.path.join(release_env(minor), "bin", "python")


def release_record(minor):
    """Where a release's environment records its TensorFlow's build
    settings (read once, so `make build` need not import every release)."""
    return os.path.join(release_env(minor), "tf_settings.json")


def create_release_env(minor, version):
    """A virtual environment of this Python with TensorFlow `version` (and
    what it requires) only."""
    env = release_env(minor)
    started = time.monotonic()
    print(f"configure.py: installing TensorFlow {version} into {env}", flush=True)
    shutil.rmtree(env, ignore_errors=True)
    # The base interpreter, not this venv's, so that the new one sees
    # nothing of the development environment.
    base_python = os.path.join(sys.base_prefix, "bin", f"python{sys.version_info[0]}")
    subprocess.run([base_python, "-m", "venv", env], check=True)
    subprocess.run(
        [release_python(minor), "-m", "pip", "install", "--quiet"]
        + ["--only-binary=:all:", f"tensorflow=={version}"],
        check=True,
    )
    record_release_settings(minor)
    print(f"configure.py: TensorFlow {version} installed in {time.monotonic() - started:.0f} s")


def record_release_settings(minor):
    """Imports the release's TensorFlow in its environment and records its
    build settings; the record also marks the environment complete."""
    python = release_python(minor)
    out = subprocess.run(
        [python, os.path.abspath(__file__), "--print-tf-settings"], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(
            f"configure.py: TensorFlow in {python} does not import:\n{out.stderr[-2000:]}"
        )
    with open(release_record(minor), "w") as f:
        f.write(out.stdout.splitlines()[-1] + "\n")


def release_settings(create_missing, dev_settings):
    """The build settings of each release whose environment is complete
    (after creating the missing ones if `create_missing`), by minor."""
    settings = {}
    for minor, version in tf_releases().items():
        if not os.path.exists(release_record(minor)):
            if not create_missing:
                continue
            create_release_env(minor, version)
        with open(release_record(minor)) as f:
            found = json.load(f)
        if found["version"] != version:
            raise SystemExit(
                f"configure.py: {release_env(minor)} has TensorFlow {found['version']}, but "
                f"build_tools/tf_releases.bzl names {version}; remove {release_env(minor)} and "
                "run `make wheel` again"
            )
        if found["compile_flags"] != dev_settings["compile_flags"]:
            raise SystemExit(
                f"configure.py: TensorFlow {version} compiles ops with "
                f"{found['compile_flags']}, the installed TensorFlow "
                f"{dev_settings['version']} with {dev_settings['compile_flags']}; the build "
                "shares one set of flags, so these releases cannot be built together"
            )
        settings[minor] = found
    return settings


CUDA_CLANG = "clang++-16"

# What the CUDA build needs from each wheel, under site-packages/nvidia/.
CUDA_WHEEL_FILES = {
    "nvidia-cuda-nvcc-cu12": ["cuda_nvcc/bin/ptxas", "cuda_nvcc/nvvm/libdevice/libdevice.10.bc"],
    "nvidia-cuda-runtime-cu12": [
        "cuda_runtime/include/cuda_runtime.h",
        "cuda_runtime/lib/libcudart.so.12",
    ],
    "nvidia-cuda-cccl-cu12": ["cuda_cccl/include/cub/cub.cuh"],
    "nvidia-nvfatbin-cu12": ["nvfatbin/lib/libnvfatbin.so.12"],
}


def cuda_settings():
    """Returns the CUDA toolchain's locations, or the reason it is unusable."""
    clang = shutil.which(CUDA_CLANG)
    if clang is None:
        return None, f"{CUDA_CLANG} is not on PATH"
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return None, "no nvidia-* wheels are installed"
    nvidia_dir = list(spec.submodule_search_locations)[0]
    for wheel, files in CUDA_WHEEL_FILES.items():
        for path in files:
            if not os.path.exists(os.path.join(nvidia_dir, path)):
                return None, f"{wheel} is missing (no {path} in {nvidia_dir})"
    return {"clang": clang, "nvidia_dir": nvidia_dir, "python": sys.executable}, None


def tf_lines(settings, prefix, version_define):
    return [
        f"build --repo_env={prefix}_HEADER_DIR={settings['include_dir']}",
        f"build --repo_env={prefix}_SHARED_LIBRARY_DIR={settings['lib_dir']}",
        f"build --repo_env={prefix}_SHARED_LIBRARY_NAME={settings['lib_name']}",
        f"build --define={version_define}={settings['version']}",
    ]


def bazelrc_lines(settings, releases, wheel, cuda):
    lines = ["# Written by build_tools/configure.py from tf.sysconfig; do not edit."]
    lines += tf_lines(settings, "TF", "tf_version")
    for minor, release in releases.items():
        name = minor.replace(".", "_")
        lines += tf_lines(release, f"TF_{name}", f"tf_version_{name}")
    lines += [f"build --define={name}={value}" for name, value in wheel.items()]
    for flag in settings["compile_flags"]:
        # The C++ standard flag applies to C++ only; the rest (ABI, Eigen
        # alignment) must match TF's in every translation unit.
        option = "cxxopt" if "std=" in flag else "copt"
        lines.append(f"build --{option}={flag}")
    if cuda:
        lines += [
            "# The CUDA toolchain is here: build the GPU kernels too.",
            "build:cuda --define=using_cuda=true",
            f"build:cuda --repo_env=TF_ADAGRAD_CUDA_CLANG={cuda['clang']}",
            f"build:cuda --repo_env=TF_ADAGRAD_CUDA_NVIDIA_DIR={cuda['nvidia_dir']}",
            f"build:cuda --repo_env=TF_ADAGRAD_CUDA_PYTHON={cuda['python']}",
            "build --config=cuda",
        ]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--release",
        action="store_true",
        help="first create the missing environments of the releases' TensorFlows",
    )
    parser.add_argument(
        "--print-tf-settings",
        action="store_true",
        help="print this Python's TensorFlow build settings as JSON, and stop",
    )
    args = parser.parse_args()
    settings = tf_build_settings()
    if args.print_tf_settings:
        print(json.dumps(settings))
        return
    releases = release_settings(args.release, settings)
    wheel = wheel_settings()
    cuda, why_not = cuda_settings()
    with open(OUTPUT, "w") as f:
        f.write("\n".join(bazelrc_lines(settings, releases, wheel, cuda)) + "\n")
    print(f"configure.py: TensorFlow {settings['version']} at {settings['include_dir']}")
    for release in releases.values():
        print(f"configure.py: release TensorFlow {release['version']} at {release['include_dir']}")
    print(f"configure.py: wheel tag py3-none-{wheel['platform_tag']}")
    if cuda:
        print(
            f"configure.py: CUDA kernels on: {cuda['clang']} with the CUDA 12 wheels in {cuda['nvidia_dir']}"
        )
    else:
        print(f"configure.py: CUDA kernels off: {why_not}")
    print(f"configure.py: wrote {OUTPUT}")


if __name__ == "__main__":
    sys.exit(main())
