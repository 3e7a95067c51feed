// How a group of GPU threads splits a dense update: each thread takes every
// num_threads-th pack of kWidth elements, and the first threads take the
// elements past the last whole pack. Both GPU kernels of the dense update
// run it (over a whole tensor, or over one chunk of a multi-tensor table);
// it compiles for the host too, so that the CPU tests can run a simulated
// grid.
#ifndef TF_ADAGRAD_KERNELS_STRIDED_UPDATE_H_
#define TF_ADAGRAD_KERNELS_STRIDED_UPDATE_H_

#include <cstdint>

#include "kernels/adagrad_math.h"
#include "kernels/half_types.h"
#include "kernels/host_device.h"
#include "kernels/stochastic_rounding.h"

namespace tf_adagrad {

// kWidth consecutive elements, moved in one access (16 bytes for the
// vectorized path, one element for the unaligned fallback).
template <typename T, int kWidth>
struct alignas(sizeof(T) * kWidth) Pack {
  T elements[kWidth];
};

constexpr int kVectorBytes = 16;
template <typename T>
constexpr int kVectorWidth = kVectorBytes / sizeof(T);

// Thread `thread` of `num_threads`' share of the update of `size` elements.
// var, accum and grad must be aligned to a whole pack, and num_threads at
// least kWidth - 1 (the first threads take one tail element each; every
// launch has kThreadsPerBlock). `Step` is an
// AdagradStep of T's compute type; accum holds Acc (T, or float32 for a
// 16-bit T); `Arith` reads and writes elements (an Arithmetic) and
// `rounding` stores the new weights (stochastic_rounding.h), element i
// being table position first_position + i.
template <template <typename> class Arith, int kWidth, typename T, typename Acc,
          typename Step, typename Rounding>
TF_ADAGRAD_HOST_DEVICE TF_ADAGRAD_FORCE_INLINE void UpdateStrided(
    T* __restrict__ var, Acc* __restrict__ accum, const T* __restrict__ grad,
    const Step& step, int64_t size, int64_t thread, int64_t num_threads,
    const Rounding& rounding, int64_t first_position) {
  using A = Arith<T>;
  using AccA = Arith<Acc>;
  using C = ComputeType<T>;
  using P = Pack<T, kWidth>;
  using AccP = Pack<Acc, kWidth>;
  const int64_t num_packs = size / kWidth;
  P* var_packs = reinterpret_cast<P*>(var);
  AccP* accum_packs = reinterpret_cast<AccP*>(accum);
  const P* grad_packs = reinterpret_cast<const P*>(grad);
  for (int64_t p = thread; p < num_packs; p += num_threads) {
    P v = var_packs[p];
    AccP a = accum_packs[p];
    const P g = grad_packs[p];
#pragma unroll
    for (int k = 0; k < kWidth; ++k) {
      C v_c = A::Load(v.elements[k]);
      C a_c = AccA::Load(a.elements[k]);
      step.Apply(A::Load(g.elements[k]), &v_c, &a_c);
      v.elements[k] =
          rounding.template Store<T>(v_c, first_position + p * kWidth + k);
      a.elements[k] = AccA::Store(a_c);
    }
    accum_packs[p] = a;
    var_packs[p] = v;
  }
  const int64_t tail = num_packs * kWidth + thread;
  if (tail < size) {
    C v_c = A::Load(var[tail]);
    C a_c = AccA::Load(accum[tail]);
    step.Apply(A::Load(grad[tail]), &v_c, &a_c);
    accum[tail] = AccA::Store(a_c);
    var[tail] = rounding.template Store<T>(v_c, first_position + tail);
  }
}

}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_STRIDED_UPDATE_H_
