// OpKernels for TfAdagrad>ApplyDense and TfAdagrad>ApplySparse, registered
// for the CPU and, in a CUDA build, the GPU; and the CPU functors. The
// kernels are thin: look up and lock the variables, validate every input
// (before anything is allocated or written), then hand raw pointers to the
// math in adagrad_math.h (CPU) or adagrad_gpu.cuh (GPU).
#define EIGEN_USE_THREADS

#include <algorithm>
#include <string>
#include <vector>

#include "kernels/adagrad_functors.h"
#include "kernels/adagrad_math.h"
#include "kernels/variable_access.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace tf_adagrad {

using ::tensorflow::DataTypeString;
using ::tensorflow::DataTypeToEnum;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::TensorShapeUtils;
using ::tensorflow::TTypes;
using ::tensorflow::Var;
using CPUDevice = Eigen::ThreadPoolDevice;
using GPUDevice = Eigen::GpuDevice;

namespace functor {

// Dense work is split into shards of whole 4 KiB pages, so that two threads
// never write the same cache line and each streams whole pages.
constexpr Eigen::Index kShardAlignBytes = 4096;

// Runs fn(begin, end) over [0, num_elements) on the op's threads.
template <typename T, typename Fn>
void ParallelForDenseElements(OpKernelContext* ctx, int64_t num_elements,
                              const Fn& fn) {
  // Memory-bound: 3 loads and 2 stores per element, a divide and a sqrt.
  const Eigen::TensorOpCost cost(3 * sizeof(T), 2 * sizeof(T), 20);
  constexpr Eigen::Index align = kShardAlignBytes / sizeof(T);
  ctx->eigen_device<CPUDevice>().parallelFor(
      num_elements, cost,
      [](Eigen::Index size) { return (size + align - 1) / align * align; },
      [&fn](Eigen::Index begin, Eigen::Index end) { fn(begin, end); });
}

template <typename T>
struct ApplyAdagradDense<CPUDevice, T> {
  absl::Status operator()(OpKernelContext* ctx, typename TTypes<T>::Flat var,
                          typename TTypes<T>::Flat accum, T lr, T epsilon,
                          typename TTypes<T>::ConstFlat grad) {
    auto* var_data = MathPointer(var.data());
    auto* accum_data = MathPointer(accum.data());
    const auto* grad_data = MathPointer(grad.data());
    const auto lr_c = ToCompute(lr);
    const auto epsilon_c = ToCompute(epsilon);
    ParallelForDenseElements<T>(
        ctx, var.size(), [&](int64_t begin, int64_t end) {
          AdagradDenseRange(var_data, accum_data, grad_data, lr_c, epsilon_c,
                            begin, end);
        });
    return absl::OkStatus();
  }
};

template <typename T>
struct ApplyAdagradDenseMulti<CPUDevice, T> {
  absl::Status operator()(
      OpKernelContext* ctx,
      const std::vector<DenseTensors<typename MathType<T>::type>>& tensors,
      T lr, T epsilon) {
    const int64_t num_tensors = static_cast<int64_t>(tensors.size());
    std::vector<int64_t> starts(num_tensors + 1, 0);
    for (int64_t i = 0; i < num_tensors; ++i) {
      starts[i + 1] = starts[i] + tensors[i].size;
    }
    const auto lr_c = ToCompute(lr);
    const auto epsilon_c = ToCompute(epsilon);
    ParallelForDenseElements<T>(
        ctx, starts[num_tensors], [&](int64_t begin, int64_t end) {
          AdagradDenseMultiRange(tensors.data(), starts.data(), num_tensors,
                                 lr_c, epsilon_c, begin, end);
        });
    return absl::OkStatus();
  }
};

template <typename T, typename Index>
struct ApplyAdagradSparse<CPUDevice, T, Index> {
  absl::Status operator()(OpKernelContext* ctx,
                          typename TTypes<T>::Matrix var,
                          typename TTypes<T>::Matrix accum, T lr, T epsilon,
                          typename TTypes<T>::ConstMatrix grad,
                          typename TTypes<Index>::ConstVec indices) {
    const int64_t nnz = indices.size();
    const int64_t num_rows = var.dimension(0);
    const int64_t row_size = var.dimension(1);
    const int64_t bad = FindOutOfRangeIndex(indices.data(), nnz, num_rows);
    if (bad >= 0) {
      return IndexOutOfRangeError(ctx->op_kernel().type_string(), bad,
                                  static_cast<int64_t>(indices(bad)),
                                  num_rows);
    }
    if (nnz == 0 || row_size == 0) return absl::OkStatus();

    // The sort runs on all threads when nnz is large (the math header
    // decides when a split pays).
    const CPUDevice& device = ctx->eigen_device<CPUDevice>();
    const auto run_tasks = [&device](int64_t num_tasks, const auto& task) {
      if (num_tasks == 1) return task(0);
      device.parallelFor(num_tasks, Eigen::TensorOpCost(0, 0, 1e9),
                         [&task](Eigen::Index begin, Eigen::Index end) {
                           for (Eigen::Index c = begin; c < end; ++c) task(c);
                         });
    };
    const RowGroups groups = GroupRowsByIndex(
        indices.data(), nnz, num_rows, device.numThreads(), run_tasks);
    using M = typename MathType<T>::type;
    auto* var_data = MathPointer(var.data());
    auto* accum_data = MathPointer(accum.data());
    const auto* grad_data = MathPointer(grad.data());
    const auto lr_c = ToCompute(lr);
    const auto epsilon_c = ToCompute(epsilon);
    const double row_bytes = static_cast<double>(row_size) * sizeof(T);
    const Eigen::TensorOpCost cost_per_row(
        row_bytes * 3.0 * nnz / groups.num_unique(), row_bytes * 2.0,
        20.0 * row_size);
    device.parallelFor(
        groups.num_unique(), cost_per_row,
        [&](Eigen::Index begin, Eigen::Index end) {
          std::vector<ComputeType<M>> scratch(row_size);
          AdagradSparseRows(var_data, accum_data, grad_data, indices.data(),
                            groups, row_size, lr_c, epsilon_c, begin, end,
                            scratch.data());
        });
    return absl::OkStatus();
  }
};

}  // namespace functor

namespace {

// Looks up the resource variable of input `input` (`input_name` in messages)
// and checks that it is initialized and of dtype T.
template <typename T>
absl::Status LookupVariable(OpKernelContext* ctx, const std::string& op_name,
                            int input, const std::string& input_name,
                            tensorflow::core::RefCountPtr<Var>* var) {
  absl::Status status = tensorflow::LookupResource(
      ctx, tensorflow::HandleFromInput(ctx, input), var);
  if (!status.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        op_name, ": expected `", input_name,
        "` to be an initialized resource variable, but it could not be "
        "read (uninitialized or deleted?): ",
        status.message()));
  }
  tensorflow::tf_shared_lock lock(*(*var)->mu());
  if (!(*var)->is_initialized) {
    return absl::FailedPreconditionError(absl::StrCat(
        op_name, ": expected `", input_name,
        "` to be an initialized resource variable, got an uninitialized "
        "one"));
  }
  const tensorflow::DataType dtype = (*var)->tensor()->dtype();
  if (dtype != DataTypeToEnum<T>::value) {
    return absl::InvalidArgumentError(absl::StrCat(
        op_name, ": expected `", input_name, "` of dtype ",
        DataTypeString(DataTypeToEnum<T>::value),
        " (the dtype of `grad`), got ", DataTypeString(dtype)));
  }
  return absl::OkStatus();
}

absl::Status ExpectScalar(const std::string& op_name, const char* input_name,
                          const Tensor& t) {
  if (TensorShapeUtils::IsScalar(t.shape())) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(op_name, ": expected `", input_name, "` to be a scalar, got shape ",
                   t.shape().DebugString()));
}

// Looks up var (input 0) and accum (input 1), checks what both ops need
// (both exist, are initialized, are distinct, have the op's dtype and the
// same shape; lr and epsilon are scalars), locks them by the access policy
// of variable_access.h, and only then prepares and writes them.
template <typename Device, typename T>
class AdagradOpBase : public OpKernel {
 public:
  explicit AdagradOpBase(OpKernelConstruction* context, UpdateKind kind)
      : OpKernel(context), kind_(kind) {
    OP_REQUIRES_OK(context, context->GetAttr("use_locking", &use_locking_));
  }

  void Compute(OpKernelContext* ctx) override {
    tensorflow::core::RefCountPtr<Var> var_resource;
    tensorflow::core::RefCountPtr<Var> accum_resource;
    OP_REQUIRES_OK(ctx, LookupVariable<T>(ctx, name(), 0, "var", &var_resource));
    OP_REQUIRES_OK(ctx, LookupVariable<T>(ctx, name(), 1, "accum", &accum_resource));
    OP_REQUIRES(ctx, var_resource.get() != accum_resource.get(),
                absl::InvalidArgumentError(absl::StrCat(
                    name(), ": expected `var` and `accum` to be two distinct "
                            "variables, got the same variable twice")));
    const Tensor& lr = ctx->input(2);
    const Tensor& epsilon = ctx->input(3);
    OP_REQUIRES_OK(ctx, ExpectScalar(name(), "lr", lr));
    OP_REQUIRES_OK(ctx, ExpectScalar(name(), "epsilon", epsilon));

    LockedVariables locked({var_resource.get(), accum_resource.get()}, kind_,
                           use_locking_);
    // Shapes are read again under the lock: another op may have reassigned
    // the variable since the lookup.
    const TensorShape& var_shape = locked.tensor(0)->shape();
    const TensorShape& accum_shape = locked.tensor(1)->shape();
    OP_REQUIRES(
        ctx, var_shape == accum_shape,
        absl::InvalidArgumentError(absl::StrCat(
            name(), ": expected `accum` shape to equal `var` shape ",
            var_shape.DebugString(), ", got ", accum_shape.DebugString())));
    OP_REQUIRES_OK(ctx, ValidateGradient(ctx, var_shape));
    OP_REQUIRES_OK(ctx, (locked.PrepareToWrite<Device, T>(ctx)));
    Update(ctx, locked.tensor(0), locked.tensor(1), lr.scalar<T>()(),
           epsilon.scalar<T>()());
  }

 protected:
  // Checks grad (and indices) against var's shape; nothing is written yet.
  virtual absl::Status ValidateGradient(OpKernelContext* ctx,
                                        const TensorShape& var_shape) = 0;
  virtual void Update(OpKernelContext* ctx, Tensor* var, Tensor* accum, T lr,
                      T epsilon) = 0;

  absl::Status Error(const std::string& expected, const std::string& got) {
    return absl::InvalidArgumentError(
        absl::StrCat(name(), ": expected ", expected, ", got ", got));
  }

 private:
  bool use_locking_ = false;
  const UpdateKind kind_;
};

template <typename Device, typename T>
class ApplyDenseOp : public AdagradOpBase<Device, T> {
 public:
  explicit ApplyDenseOp(OpKernelConstruction* context)
      : AdagradOpBase<Device, T>(context, UpdateKind::kDense) {}

 protected:
  absl::Status ValidateGradient(OpKernelContext* ctx,
                                const TensorShape& var_shape) override {
    const TensorShape& grad_shape = ctx->input(4).shape();
    if (grad_shape == var_shape) return absl::OkStatus();
    return this->Error(
        absl::StrCat("`grad` shape to equal `var` shape ",
                     var_shape.DebugString()),
        grad_shape.DebugString());
  }

  void Update(OpKernelContext* ctx, Tensor* var, Tensor* accum, T lr,
              T epsilon) override {
    if (var->NumElements() == 0) return;
    OP_REQUIRES_OK(ctx, functor::ApplyAdagradDense<Device, T>()(
                            ctx, var->flat<T>(), accum->flat<T>(), lr,
                            epsilon, ctx->input(4).flat<T>()));
  }
};

template <typename Device, typename T, typename Index>
class ApplySparseOp : public AdagradOpBase<Device, T> {
 public:
  explicit ApplySparseOp(OpKernelConstruction* context)
      : AdagradOpBase<Device, T>(context, UpdateKind::kSparse) {}

 protected:
  absl::Status ValidateGradient(OpKernelContext* ctx,
                                const TensorShape& var_shape) override {
    const TensorShape& grad_shape = ctx->input(4).shape();
    const TensorShape& indices_shape = ctx->input(5).shape();
    if (var_shape.dims() < 1) {
      return this->Error("`var` of rank >= 1",
                         absl::StrCat("shape ", var_shape.DebugString()));
    }
    if (indices_shape.dims() != 1) {
      return this->Error("`indices` of rank 1",
                         absl::StrCat("shape ", indices_shape.DebugString()));
    }
    if (grad_shape.dims() < 1 ||
        grad_shape.dim_size(0) != indices_shape.dim_size(0)) {
      return this->Error(
          absl::StrCat("`grad.shape[0]` to equal the number of indices (",
                       indices_shape.dim_size(0), ")"),
          absl::StrCat("`grad` shape ", grad_shape.DebugString()));
    }
    TensorShape var_row = var_shape;
    var_row.RemoveDim(0);
    TensorShape grad_row = grad_shape;
    grad_row.RemoveDim(0);
    if (var_row != grad_row) {
      return this->Error(
          absl::StrCat("`grad.shape[1:]` to equal `var.shape[1:]` ",
                       var_row.DebugString(), " (`var` shape ",
                       var_shape.DebugString(), ")"),
          absl::StrCat("`grad` shape ", grad_shape.DebugString()));
    }
    return absl::OkStatus();
  }

  void Update(OpKernelContext* ctx, Tensor* var, Tensor* accum, T lr,
              T epsilon) override {
    const Tensor& grad = ctx->input(4);
    const Tensor& indices = ctx->input(5);
    // Flattening to [rows, row_size] must not divide by a zero row count.
    const int64_t num_rows = var->dim_size(0);
    int64_t row_size = 1;
    for (int d = 1; d < var->dims(); ++d) row_size *= var->dim_size(d);
    OP_REQUIRES_OK(
        ctx, (functor::ApplyAdagradSparse<Device, T, Index>()(
                 ctx, var->shaped<T, 2>({num_rows, row_size}),
                 accum->shaped<T, 2>({num_rows, row_size}), lr, epsilon,
                 grad.shaped<T, 2>({indices.NumElements(), row_size}),
                 indices.vec<Index>())));
  }
};

// TfAdagrad>MultiApplyDense: inputs var[0..N), accum[0..N), lr, epsilon,
// grad[0..N). Every variable is looked up, checked and locked (exclusively,
// as every dense update is, in address order) before any is written, so a
// bad input anywhere leaves all of them untouched.
template <typename Device, typename T>
class MultiApplyDenseOp : public OpKernel {
 public:
  explicit MultiApplyDenseOp(OpKernelConstruction* context)
      : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("N", &num_vars_));
  }

  void Compute(OpKernelContext* ctx) override {
    const int n = num_vars_;
    const int lr_input = 2 * n, epsilon_input = 2 * n + 1, grad_input = 2 * n + 2;
    const auto input_name = [n](int input) {
      return input < n ? absl::StrCat("var[", input, "]")
                       : absl::StrCat("accum[", input - n, "]");
    };
    std::vector<tensorflow::core::RefCountPtr<Var>> resources(2 * n);
    for (int input = 0; input < 2 * n; ++input) {
      OP_REQUIRES_OK(ctx, LookupVariable<T>(ctx, name(), input,
                                            input_name(input),
                                            &resources[input]));
    }
    // Sorted by address, a variable given twice shows as two neighbours.
    std::vector<int> by_address(2 * n);
    for (int input = 0; input < 2 * n; ++input) by_address[input] = input;
    std::sort(by_address.begin(), by_address.end(), [&](int a, int b) {
      return resources[a].get() < resources[b].get() ||
             (resources[a].get() == resources[b].get() && a < b);
    });
    for (int k = 1; k < 2 * n; ++k) {
      const int a = by_address[k - 1], b = by_address[k];
      OP_REQUIRES(
          ctx, resources[a].get() != resources[b].get(),
          absl::InvalidArgumentError(absl::StrCat(
              name(), ": expected the ", 2 * n,
              " variables of `var` and `accum` to be distinct, got the same "
              "variable as `",
              input_name(a), "` and `", input_name(b), "`")));
    }
    const Tensor& lr = ctx->input(lr_input);
    const Tensor& epsilon = ctx->input(epsilon_input);
    OP_REQUIRES_OK(ctx, ExpectScalar(name(), "lr", lr));
    OP_REQUIRES_OK(ctx, ExpectScalar(name(), "epsilon", epsilon));

    std::vector<Var*> vars(2 * n);
    for (int input = 0; input < 2 * n; ++input) vars[input] = resources[input].get();
    LockedVariables locked(vars, UpdateKind::kDense, /*use_locking=*/true);
    // Shapes are read under the locks: another op may have reassigned a
    // variable since the lookup.
    for (int i = 0; i < n; ++i) {
      const TensorShape& var_shape = locked.tensor(i)->shape();
      const TensorShape& accum_shape = locked.tensor(n + i)->shape();
      const TensorShape& grad_shape = ctx->input(grad_input + i).shape();
      OP_REQUIRES(ctx, var_shape == accum_shape,
                  absl::InvalidArgumentError(absl::StrCat(
                      name(), ": expected `accum[", i,
                      "]` shape to equal `var[", i, "]` shape ",
                      var_shape.DebugString(), ", got ",
                      accum_shape.DebugString())));
      OP_REQUIRES(ctx, grad_shape == var_shape,
                  absl::InvalidArgumentError(absl::StrCat(
                      name(), ": expected `grad[", i,
                      "]` shape to equal `var[", i, "]` shape ",
                      var_shape.DebugString(), ", got ",
                      grad_shape.DebugString())));
    }
    OP_REQUIRES_OK(ctx, (locked.PrepareToWrite<Device, T>(ctx)));
    using M = typename MathType<T>::type;
    std::vector<DenseTensors<M>> tensors;
    tensors.reserve(n);
    for (int i = 0; i < n; ++i) {
      Tensor* var = locked.tensor(i);
      if (var->NumElements() == 0) continue;
      tensors.push_back(DenseTensors<M>{
          MathPointer(var->flat<T>().data()),
          MathPointer(locked.tensor(n + i)->flat<T>().data()),
          MathPointer(ctx->input(grad_input + i).flat<T>().data()),
          var->NumElements()});
    }
    if (tensors.empty()) return;
    OP_REQUIRES_OK(ctx, functor::ApplyAdagradDenseMulti<Device, T>()(
                            ctx, tensors, lr.scalar<T>()(),
                            epsilon.scalar<T>()()));
  }

 private:
  int num_vars_ = 0;
};

// lr and epsilon are read on the host (they are kernel arguments on the GPU);
// indices stay on the device, where the GPU kernels read them.
#define REGISTER_KERNELS(DEVICE, DeviceType, T)                            \
  REGISTER_KERNEL_BUILDER(Name("TfAdagrad>ApplyDense")                    \
                              .Device(DEVICE)                             \
                              .HostMemory("lr")                           \
                              .HostMemory("epsilon")                      \
                              .TypeConstraint<T>("T"),                    \
                          ApplyDenseOp<DeviceType, T>);                   \
  REGISTER_KERNEL_BUILDER(Name("TfAdagrad>ApplySparse")                   \
                              .Device(DEVICE)                             \
                              .HostMemory("lr")                           \
                              .HostMemory("epsilon")                      \
                              .TypeConstraint<T>("T")                     \
                              .TypeConstraint<int32_t>("Tindices"),       \
                          ApplySparseOp<DeviceType, T, int32_t>);         \
  REGISTER_KERNEL_BUILDER(Name("TfAdagrad>ApplySparse")                   \
                              .Device(DEVICE)                             \
                              .HostMemory("lr")                           \
                              .HostMemory("epsilon")                      \
                              .TypeConstraint<T>("T")                     \
                              .TypeConstraint<int64_t>("Tindices"),       \
                          ApplySparseOp<DeviceType, T, int64_t>);       \
  REGISTER_KERNEL_BUILDER(Name("TfAdagrad>MultiApplyDense")               \
                              .Device(DEVICE)                             \
                              .HostMemory("lr")                           \
                              .HostMemory("epsilon")                      \
                              .TypeConstraint<T>("T"),                    \
                          MultiApplyDenseOp<DeviceType, T>);

#define REGISTER_CPU_KERNELS(T) \
  REGISTER_KERNELS(::tensorflow::DEVICE_CPU, CPUDevice, T)
REGISTER_CPU_KERNELS(Eigen::half);
REGISTER_CPU_KERNELS(Eigen::bfloat16);
REGISTER_CPU_KERNELS(float);
REGISTER_CPU_KERNELS(double);
#undef REGISTER_CPU_KERNELS

#if GOOGLE_CUDA
#define REGISTER_GPU_KERNELS(T) \
  REGISTER_KERNELS(::tensorflow::DEVICE_GPU, GPUDevice, T)
REGISTER_GPU_KERNELS(Eigen::half);
REGISTER_GPU_KERNELS(Eigen::bfloat16);
REGISTER_GPU_KERNELS(float);
REGISTER_GPU_KERNELS(double);
#undef REGISTER_GPU_KERNELS
#endif  // GOOGLE_CUDA
#undef REGISTER_KERNELS

}  // namespace
}  // namespace tf_adagrad
