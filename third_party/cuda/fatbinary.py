"""A `fatbinary` for clang's CUDA driver, built on NVIDIA's nvFatbin library.

The CUDA 12 wheels on PyPI carry ptxas but not the `fatbinary` tool, so this
script bundles clang's per-architecture cubins and PTX into a fat binary with
libnvfatbin (from the nvidia-nvfatbin-cu12 wheel). It takes the arguments
clang passes:

    fatbinary.py --nvfatbin LIB [--cuda] -64 --create OUT
        --image=profile=sm_XX,file=CUBIN ... --image=profile=compute_XX,file=PTX
"""

import argparse
import ctypes
import sys

IMAGE_PREFIX = "--image=profile="


class Fatbin:
    def __init__(self, library_path):
        self.lib = ctypes.CDLL(library_path)
        self.lib.nvFatbinGetErrorString.restype = ctypes.c_char_p
        self.handle = ctypes.c_void_p()
        self._check(
            "nvFatbinCreate",
            self.lib.nvFatbinCreate(ctypes.byref(self.handle), None, ctypes.c_size_t(0)),
        )

    def _check(self, call, result):
        if result != 0:
            message = self.lib.nvFatbinGetErrorString(result).decode()
            sys.exit(f"fatbinary.py: {call} failed: {message}")

    def add(self, profile, path):
        with open(path, "rb") as f:
            data = f.read()
        kind, arch = profile.split("_", 1)
        if kind == "sm":
            self._check(
                f"nvFatbinAddCubin({path})",
                self.lib.nvFatbinAddCubin(
                    self.handle, data, ctypes.c_size_t(len(data)), arch.encode(), path.encode()
                ),
            )
        elif kind == "compute":
            code = data + b"\0"  # nvFatbin reads PTX as a C string
            self._check(
                f"nvFatbinAddPTX({path})",
                self.lib.nvFatbinAddPTX(
                    self.handle, code, ctypes.c_size_t(len(code)), arch.encode(), path.encode(), b""
                ),
            )
        else:
            sys.exit(f"fatbinary.py: unknown profile {profile!r} (expected sm_XX or compute_XX)")

    def bytes(self):
        size = ctypes.c_size_t()
        self._check("nvFatbinSize", self.lib.nvFatbinSize(self.handle, ctypes.byref(size)))
        buffer = ctypes.create_string_buffer(size.value)
        self._check("nvFatbinGet", self.lib.nvFatbinGet(self.handle, buffer))
        return buffer.raw


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--nvfatbin", required=True, help="path of libnvfatbin.so")
    parser.add_argument("--create", required=True, help="the fat binary to write")
    parser.add_argument("--cuda", action="store_true")  # clang passes it; nothing else is made
    parser.add_argument("-64", dest="bits64", action="store_true", required=True)
    args, images = parser.parse_known_args(argv)
    fatbin = Fatbin(args.nvfatbin)
    for image in images:
        if not image.startswith(IMAGE_PREFIX):
            sys.exit(f"fatbinary.py: unexpected argument {image!r}")
        profile, _, path = image[len(IMAGE_PREFIX) :].partition(",file=")
        fatbin.add(profile, path)
    with open(args.create, "wb") as f:
        f.write(fatbin.bytes())


if __name__ == "__main__":
    main(sys.argv[1:])
