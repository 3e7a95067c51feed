// What the TF-free headers need to know about where they are compiled: for
// the GPU (CUDA's device pass) or the host, and for which host CPU.
#ifndef TF_ADAGRAD_KERNELS_HOST_DEVICE_H_
#define TF_ADAGRAD_KERNELS_HOST_DEVICE_H_

// Functions that both devices compile, and a request to always inline one.
#if defined(__CUDACC__)
#define TF_ADAGRAD_HOST_DEVICE __host__ __device__
#define TF_ADAGRAD_FORCE_INLINE __forceinline__
#else
#define TF_ADAGRAD_HOST_DEVICE
#define TF_ADAGRAD_FORCE_INLINE inline __attribute__((always_inline))
#endif

// x86 paths are host code: a CUDA compiler's device pass has no x86 target.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDA_ARCH__)
#define TF_ADAGRAD_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

#endif  // TF_ADAGRAD_KERNELS_HOST_DEVICE_H_
