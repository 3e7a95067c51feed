// Device functors for the fused Adagrad ops, declared once here and
// specialized per device: CPU in adagrad_kernels.cc, GPU in
// adagrad_kernels.cu.cc. The OpKernels validate every input before calling
// them; a functor may still reject what only the device can check cheaply
// (sparse indices out of range), and then it writes nothing.
#ifndef TF_ADAGRAD_KERNELS_ADAGRAD_FUNCTORS_H_
#define TF_ADAGRAD_KERNELS_ADAGRAD_FUNCTORS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/adagrad_math.h"
#include "kernels/half_types.h"
#include "kernels/multi_tensor.h"
#include "kernels/stochastic_rounding.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor_types.h"

namespace tf_adagrad {

// The TF-free math type behind each TensorFlow element type.
template <typename T>
struct MathType {
  using type = T;
};
template <>
struct MathType<Eigen::half> {
  using type = Float16;
};
template <>
struct MathType<Eigen::bfloat16> {
  using type = BFloat16;
};
static_assert(sizeof(Eigen::half) == sizeof(Float16), "layout");
static_assert(sizeof(Eigen::bfloat16) == sizeof(BFloat16), "layout");

template <typename T>
typename MathType<T>::type* MathPointer(T* p) {
  return reinterpret_cast<typename MathType<T>::type*>(p);
}
template <typename T>
const typename MathType<T>::type* MathPointer(const T* p) {
  return reinterpret_cast<const typename MathType<T>::type*>(p);
}
template <typename T>
ComputeType<typename MathType<T>::type> ToCompute(T x) {
  return static_cast<ComputeType<typename MathType<T>::type>>(x);
}

// Calls fn(rounding) with the CPU loops' Rounding (stochastic_rounding.h)
// that `rounding` asks for; stochastic rounding exists for 16-bit T only
// (the ops check that).
template <typename T, typename Fn>
void WithCpuRounding(const WeightRounding& rounding, const Fn& fn) {
  if constexpr (kIsHalfType<typename MathType<T>::type>) {
    if (rounding.stochastic) {
      StochasticRoundingBuffered stochastic(rounding.key);
      return fn(stochastic);
    }
  }
  RoundToNearest<Arithmetic> nearest;
  fn(nearest);
}

// The (variable, accumulator) element types of the elementwise ops: every
// float type with an accumulator of its own type, and the 16-bit types with
// a float32 one too.
#define TF_ADAGRAD_CALL_ELEMENTWISE_TYPE_PAIRS(m)                   \
  m(Eigen::half, Eigen::half) m(Eigen::half, float)                 \
      m(Eigen::bfloat16, Eigen::bfloat16) m(Eigen::bfloat16, float) \
          m(float, float) m(double, double)

namespace functor {

// Each functor applies the update in the form `placement` names
// (adagrad_math.h) and stores the new weights as `rounding` says. accum
// holds Acc: T, or float32 for a 16-bit T.
template <typename Device, typename T, typename Acc>
struct ApplyAdagradDense {
  // Updates every element of var and accum in one pass. Fails only if the
  // device does (a CUDA error).
  absl::Status operator()(tensorflow::OpKernelContext* ctx,
                          typename tensorflow::TTypes<T>::Flat var,
                          typename tensorflow::TTypes<Acc>::Flat accum, T lr,
                          T epsilon, EpsilonPlacement placement,
                          typename tensorflow::TTypes<T>::ConstFlat grad,
                          const WeightRounding& rounding);
};

template <typename Device, typename T, typename Acc, typename Index>
struct ApplyAdagradSparse {
  // var and accum are [num_rows, row_size]; grad is [nnz, row_size].
  // Returns InvalidArgument, with nothing written, if an index is out of
  // [0, num_rows).
  absl::Status operator()(tensorflow::OpKernelContext* ctx,
                          typename tensorflow::TTypes<T>::Matrix var,
                          typename tensorflow::TTypes<Acc>::Matrix accum, T lr,
                          T epsilon, EpsilonPlacement placement,
                          typename tensorflow::TTypes<T>::ConstMatrix grad,
                          typename tensorflow::TTypes<Index>::ConstVec indices,
                          const WeightRounding& rounding);
};

template <typename Device, typename T>
struct ApplyAdagradDenseMulti {
  // Updates every variable of `tensors` (pointers into var, accum and grad
  // of each) in one pass over each, the work split across threads by
  // elements, not by tensor; accumulators of T, weights rounded to nearest.
  // Fails only if the device does.
  absl::Status operator()(
      tensorflow::OpKernelContext* ctx,
      const std::vector<DenseTensors<typename MathType<T>::type>>& tensors,
      T lr, T epsilon, EpsilonPlacement placement);
};

#if GOOGLE_CUDA
// The GPU specializations, defined and instantiated in adagrad_kernels.cu.cc.
template <typename T, typename Acc>
struct ApplyAdagradDense<Eigen::GpuDevice, T, Acc> {
  absl::Status operator()(tensorflow::OpKernelContext* ctx,
                          typename tensorflow::TTypes<T>::Flat var,
                          typename tensorflow::TTypes<Acc>::Flat accum, T lr,
                          T epsilon, EpsilonPlacement placement,
                          typename tensorflow::TTypes<T>::ConstFlat grad,
                          const WeightRounding& rounding);
};

template <typename T, typename Acc, typename Index>
struct ApplyAdagradSparse<Eigen::GpuDevice, T, Acc, Index> {
  absl::Status operator()(tensorflow::OpKernelContext* ctx,
                          typename tensorflow::TTypes<T>::Matrix var,
                          typename tensorflow::TTypes<Acc>::Matrix accum, T lr,
                          T epsilon, EpsilonPlacement placement,
                          typename tensorflow::TTypes<T>::ConstMatrix grad,
                          typename tensorflow::TTypes<Index>::ConstVec indices,
                          const WeightRounding& rounding);
};

template <typename T>
struct ApplyAdagradDenseMulti<Eigen::GpuDevice, T> {
  absl::Status operator()(
      tensorflow::OpKernelContext* ctx,
      const std::vector<DenseTensors<typename MathType<T>::type>>& tensors,
      T lr, T epsilon, EpsilonPlacement placement);
};

#define TF_ADAGRAD_DECLARE_GPU_FUNCTORS(T, Acc)                       \
  extern template struct ApplyAdagradDense<Eigen::GpuDevice, T, Acc>; \
  extern template struct ApplyAdagradSparse<Eigen::GpuDevice, T, Acc, \
                                            int32_t>;                 \
  extern template struct ApplyAdagradSparse<Eigen::GpuDevice, T, Acc, int64_t>;
TF_ADAGRAD_CALL_ELEMENTWISE_TYPE_PAIRS(TF_ADAGRAD_DECLARE_GPU_FUNCTORS)
#undef TF_ADAGRAD_DECLARE_GPU_FUNCTORS
#define TF_ADAGRAD_DECLARE_GPU_MULTI_FUNCTOR(T) \
  extern template struct ApplyAdagradDenseMulti<Eigen::GpuDevice, T>;
TF_CALL_FLOAT_TYPES(TF_ADAGRAD_DECLARE_GPU_MULTI_FUNCTOR)
#undef TF_ADAGRAD_DECLARE_GPU_MULTI_FUNCTOR
#endif  // GOOGLE_CUDA

}  // namespace functor
}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_ADAGRAD_FUNCTORS_H_
