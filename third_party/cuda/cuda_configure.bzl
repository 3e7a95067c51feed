"""Repository rule laying out the CUDA 12 toolchain for clang.

build_tools/configure.py finds the pieces and passes them as --repo_env (under
--config=cuda): clang (Debian's clang-16), and the `nvidia` folder of the
.venv's site-packages, where the nvidia-*-cu12 wheels put ptxas, libdevice,
the CUDA runtime's headers and library, CUB, and libnvfatbin. This rule
arranges them as the CUDA installation clang expects (`--cuda-path`):

    cuda/bin/ptxas, cuda/bin/fatbinary, cuda/include/, cuda/nvvm/libdevice/,
    cuda/lib/libcudart.so.12

Without --config=cuda it makes an empty repository.
"""

_ENV_CLANG = "TF_ADAGRAD_CUDA_CLANG"
_ENV_NVIDIA_DIR = "TF_ADAGRAD_CUDA_NVIDIA_DIR"
_ENV_PYTHON = "TF_ADAGRAD_CUDA_PYTHON"

# Headers of these wheels are merged into cuda/include.
_HEADER_PACKAGES = ["cuda_runtime", "cuda_nvcc", "cuda_cccl"]

_BUILD = """
package(default_visibility = ["//visibility:public"])

exports_files(["clang++"])

# Everything clang reads or runs from the CUDA installation.
filegroup(
    name = "toolkit",
    srcs = glob(["cuda/**"]),
)

cc_import(
    name = "cudart",
    shared_library = "cuda/lib/libcudart.so.12",
)
"""

def _cuda_configure_impl(ctx):
    clang = ctx.os.environ.get(_ENV_CLANG, "")
    if not clang:
        ctx.file("BUILD", "# CUDA is off: build_tools/configure.py found no CUDA toolchain.\n")
        return
    nvidia = ctx.os.environ[_ENV_NVIDIA_DIR]
    python = ctx.os.environ[_ENV_PYTHON]

    ctx.symlink(clang, "clang++")
    ctx.symlink(nvidia + "/cuda_nvcc/bin/ptxas", "cuda/bin/ptxas")
    ctx.symlink(nvidia + "/cuda_nvcc/nvvm/libdevice", "cuda/nvvm/libdevice")
    ctx.symlink(nvidia + "/cuda_runtime/lib/libcudart.so.12", "cuda/lib/libcudart.so.12")
    ctx.symlink(Label("//third_party/cuda:fatbinary.py"), "cuda/bin/fatbinary.py")
    ctx.file(
        "cuda/bin/fatbinary",
        content = "#!/bin/sh\nexec '{python}' \"$(dirname \"$0\")/fatbinary.py\" --nvfatbin '{lib}' \"$@\"\n".format(
            python = python,
            lib = nvidia + "/nvfatbin/lib/libnvfatbin.so.12",
        ),
        executable = True,
    )
    for package in _HEADER_PACKAGES:
        for entry in ctx.path(nvidia + "/" + package + "/include").readdir():
            if entry.basename not in ["__init__.py", "__pycache__"]:
                ctx.symlink(entry, "cuda/include/" + entry.basename)

    # clang's CUDA wrapper header includes this cuRAND header; nothing here
    # uses cuRAND, so an empty one saves installing the cuRAND wheel.
    ctx.file("cuda/include/curand_mtgp32_kernel.h", "// Empty: see cuda_configure.bzl.\n")
    ctx.file("BUILD", _BUILD)

cuda_configure = repository_rule(
    implementation = _cuda_configure_impl,
    environ = [_ENV_CLANG, _ENV_NVIDIA_DIR, _ENV_PYTHON],
    local = True,
)
