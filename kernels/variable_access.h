// How every op of this library reaches the resource variables it updates.
//
// The policy. TensorFlow's own sparse training ops switch a variable into
// copy-on-read mode for good (EnsureSparseVariableAccess), after which every
// ReadVariableOp copies the whole buffer; Keras 3's Embedding reads its table
// that way every step, so each step would copy the table. This library never
// switches a variable into that mode:
//  - A variable already in copy-on-read mode (a ResourceGather, or one of
//    TensorFlow's sparse ops, switched it) is updated in place by a sparse
//    update under TensorFlow's sparse-access rules: a shared lock, exclusive
//    with use_locking. Readers of such a variable copy under the lock, so no
//    tensor aliases its buffer.
//  - Any other variable, and every variable of a dense update, is locked
//    exclusively and updated copy-on-write: its buffer is copied first only
//    while another tensor (an earlier read) still aliases it.
// The mode is checked again once the lock is held (DisableCopyOnRead can turn
// it off, under the exclusive lock), so it cannot change between the decision
// and the write.
#ifndef TF_ADAGRAD_KERNELS_VARIABLE_ACCESS_H_
#define TF_ADAGRAD_KERNELS_VARIABLE_ACCESS_H_

#include <algorithm>
#include <vector>

#include "absl/status/status.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/kernels/dense_update_functor.h"
#include "tensorflow/core/kernels/training_op_helpers.h"

namespace tf_adagrad {

enum class UpdateKind { kDense, kSparse };

// Holds the locks of the variables one update writes, taken in address order
// (no deadlock with another op locking an overlapping set), each shared or
// exclusive by the policy above; released on destruction.
class LockedVariables {
 public:
  // `vars` must be distinct.
  LockedVariables(const std::vector<tensorflow::Var*>& vars, UpdateKind kind,
                  bool use_locking)
      : vars_(vars), exclusive_(vars.size(), true) {
    std::vector<size_t> by_address(vars.size());
    for (size_t i = 0; i < vars.size(); ++i) by_address[i] = i;
    std::sort(by_address.begin(), by_address.end(),
              [&](size_t a, size_t b) { return vars[a] < vars[b]; });
    const bool shared_if_copy_on_read =
        kind == UpdateKind::kSparse && !use_locking;
    for (size_t i : by_address) {
      tensorflow::mutex* mu = vars[i]->mu();
      if (shared_if_copy_on_read && vars[i]->copy_on_read_mode.load()) {
        mu->lock_shared();
        if (vars[i]->copy_on_read_mode.load()) {
          exclusive_[i] = false;
          continue;
        }
        // Switched off between the look and the lock: lock exclusively.
        mu->unlock_shared();
      }
      mu->lock();
    }
  }

  ~LockedVariables() {
    for (size_t i = 0; i < vars_.size(); ++i) {
      if (exclusive_[i]) {
        vars_[i]->mu()->unlock();
      } else {
        vars_[i]->mu()->unlock_shared();
      }
    }
  }

  LockedVariables(const LockedVariables&) = delete;
  LockedVariables& operator=(const LockedVariables&) = delete;

  // Makes every buffer safe to write in place: a buffer under an exclusive
  // lock is copied if another tensor aliases it (copy-on-write); one under a
  // shared lock is in copy-on-read mode, which nothing aliases. Call after
  // validation: it may allocate.
  template <typename Device, typename T>
  absl::Status PrepareToWrite(tensorflow::OpKernelContext* ctx) {
    for (size_t i = 0; i < vars_.size(); ++i) {
      TF_RETURN_IF_ERROR((PrepareToWrite<Device, T>(ctx, i)));
    }
    return absl::OkStatus();
  }

  // The same for variable i alone, whose elements are T.
  template <typename Device, typename T>
  absl::Status PrepareToWrite(tensorflow::OpKernelContext* ctx, size_t i) {
    if (!exclusive_[i]) return absl::OkStatus();
    return tensorflow::PrepareToUpdateVariable<Device, T>(
        ctx, vars_[i]->tensor(), /*copy_on_read_mode=*/false);
  }

  tensorflow::Tensor* tensor(size_t i) const { return vars_[i]->tensor(); }

 private:
  std::vector<tensorflow::Var*> vars_;
  std::vector<bool> exclusive_;
};

}  // namespace tf_adagrad

#if GOOGLE_CUDA
namespace tensorflow {
namespace functor {
// PrepareToUpdateVariable copies a variable's buffer with this functor when
// another tensor aliases it (copy-on-write). TensorFlow's GPU version is
// compiled into libtensorflow_cc, which op libraries do not link against,
// so this library brings its own: a device-to-device copy on the op's
// stream, defined in variable_access.cu.cc.
template <typename T>
struct DenseUpdate<Eigen::GpuDevice, T, ASSIGN> {
  void operator()(const Eigen::GpuDevice& device,
                  typename TTypes<T>::Flat params,
                  typename TTypes<T>::ConstFlat update);
};
}  // namespace functor
}  // namespace tensorflow
#endif  // GOOGLE_CUDA

#endif  // TF_ADAGRAD_KERNELS_VARIABLE_ACCESS_H_
