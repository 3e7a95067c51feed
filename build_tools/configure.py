#!/usr/bin/env python3
"""Writes the workspace root's .tf_configure.bazelrc from the installed TensorFlow.

Every compiler and linker flag comes from ``tf.sysconfig``; nothing is
hard-coded. Run it with the Python whose TensorFlow the ops must match
(``make build`` uses ``.venv/bin/python``).

It also records, for the wheel (``//:wheel``), this machine's platform tag,
for example ``linux_x86_64`` (the wheel is ``py3-none-linux_x86_64``: the op
library does not use Python's ABI), and this Python, which runs the wheel
builder.

It also looks for the CUDA toolchain: clang (``CUDA_CLANG``, Debian's
clang-16) and the CUDA 12 wheels of requirements-dev.txt in this Python's
site-packages. When all are there, it defines ``--config=cuda`` and makes it
the default, so the op library gets its GPU kernels.
"""

import importlib.util
import os
import shutil
import sys
import sysconfig

# The workspace root, one folder up from build_tools/.
OUTPUT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".tf_configure.bazelrc"
)


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


def bazelrc_lines(settings, wheel, cuda):
    lines = [
        "# Written by build_tools/configure.py from tf.sysconfig; do not edit.",
        f"build --repo_env=TF_HEADER_DIR={settings['include_dir']}",
        f"build --repo_env=TF_SHARED_LIBRARY_DIR={settings['lib_dir']}",
        f"build --repo_env=TF_SHARED_LIBRARY_NAME={settings['lib_name']}",
        f"build --define=tf_version={settings['version']}",
    ]
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
    settings = tf_build_settings()
    wheel = wheel_settings()
    cuda, why_not = cuda_settings()
    with open(OUTPUT, "w") as f:
        f.write("\n".join(bazelrc_lines(settings, wheel, cuda)) + "\n")
    print(f"configure.py: TensorFlow {settings['version']} at {settings['include_dir']}")
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
