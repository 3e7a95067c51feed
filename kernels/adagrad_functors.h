// Device functors for the fused Adagrad ops, declared once here and
// specialized per device: CPU in adagrad_kernels.cc, GPU in
// adagrad_kernels.cu.cc. The OpKernels validate every input before calling
// them; a functor may still reject what only the device can check cheaply
// (sparse indices out of range), and then it writes nothing.
#ifndef TF_ADAGRAD_KERNELS_ADAGRAD_FUNCTORS_H_
#define TF_ADAGRAD_KERNELS_ADAGRAD_FUNCTORS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor_types.h"

namespace tf_adagrad {
namespace functor {

template <typename Device, typename T>
struct ApplyAdagradDense {
  // Updates every element of var and accum in one pass.
  void operator()(const Device& device, typename tensorflow::TTypes<T>::Flat var,
                  typename tensorflow::TTypes<T>::Flat accum, T lr, T epsilon,
                  typename tensorflow::TTypes<T>::ConstFlat grad);
};

template <typename Device, typename T, typename Index>
struct ApplyAdagradSparse {
  // var and accum are [num_rows, row_size]; grad is [nnz, row_size].
  // Returns InvalidArgument, with nothing written, if an index is out of
  // [0, num_rows).
  absl::Status operator()(tensorflow::OpKernelContext* ctx,
                          typename tensorflow::TTypes<T>::Matrix var,
                          typename tensorflow::TTypes<T>::Matrix accum, T lr,
                          T epsilon,
                          typename tensorflow::TTypes<T>::ConstMatrix grad,
                          typename tensorflow::TTypes<Index>::ConstVec indices);
};

// The same message on every device.
inline absl::Status IndexOutOfRangeError(const std::string& op_name,
                                         int64_t position, int64_t index,
                                         int64_t num_rows) {
  return absl::InvalidArgumentError(absl::StrCat(
      op_name, ": expected every index in [0, ", num_rows,
      ") (the first dimension of `var`), got indices[", position, "] = ",
      index, "; nothing was updated"));
}

}  // namespace functor
}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_ADAGRAD_FUNCTORS_H_
