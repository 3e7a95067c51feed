#!/usr/bin/env bash
# Builds tests/cuda/adagrad_cuda_test.cu with nvcc and runs it, within a time
# limit. No TensorFlow needed: only nvcc, and a GPU to run on.
#
#   tests/cuda/run_on_gpu.sh [--compile-only] [OUTPUT_DIR]
#
# NVCC (default: nvcc on PATH) is the compiler; CUDA_ARCH (default: the
# first GPU's, from nvidia-smi; sm_90 when there is none) the target;
# TEST_TIMEOUT (default 240) the seconds the program may run. The program
# exits 77 when it finds no CUDA device.
set -euo pipefail
cd "$(dirname "$0")/../.."

compile_only=false
if [[ "${1:-}" == "--compile-only" ]]; then
  compile_only=true
  shift
fi
out_dir="${1:-$(mktemp -d)}"
nvcc="${NVCC:-nvcc}"
if [[ -z "${CUDA_ARCH:-}" ]]; then
  capability="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 || true)"
  CUDA_ARCH="sm_${capability/./}"
  [[ "$CUDA_ARCH" == "sm_" ]] && CUDA_ARCH=sm_90
fi

mkdir -p "$out_dir"
binary="$out_dir/adagrad_cuda_test"
echo "building $binary with $("$nvcc" --version | tail -n 1) for $CUDA_ARCH"
# No FMA contraction on either side, so the GPU's results can equal the CPU
# reference's bit for bit: --fmad=false for the device code,
# -ffp-contract=off for the host code (the project's KERNEL_COPTS; GCC would
# otherwise fuse multiply-adds in the AVX2/AVX-512 variants).
"$nvcc" -std=c++17 -O3 --fmad=false -Xcompiler -ffp-contract=off -arch="$CUDA_ARCH" -I. \
  tests/cuda/adagrad_cuda_test.cu -o "$binary"
if $compile_only; then
  exit 0
fi
timeout "${TEST_TIMEOUT:-240}" "$binary"
