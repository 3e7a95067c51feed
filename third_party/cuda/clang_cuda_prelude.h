// Included first in every CUDA compile (after clang's own CUDA wrapper).
//
// CUDA's host_defines.h defines __noinline__ as a macro, which breaks
// libstdc++'s `__attribute__((__noinline__))`; clang knows __noinline__ as a
// keyword in CUDA code, so the macro is not needed.
#undef __noinline__
