// OpKernels for TfAdagrad>ApplyDense and TfAdagrad>ApplySparse, registered
// for the CPU and, in a CUDA build, the GPU; and the CPU functors. The
// kernels are thin: look up and lock the variables, validate every input
// (before anything is allocated or written), then hand raw pointers to the
// math in adagrad_math.h (CPU) or adagrad_gpu.cuh (GPU).
#define EIGEN_USE_THREADS

#include <vector>

#include "kernels/adagrad_functors.h"
#include "kernels/adagrad_math.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/kernels/training_op_helpers.h"
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
    // Memory-bound: 3 loads and 2 stores per element, a divide and a sqrt.
    const Eigen::TensorOpCost cost(3 * sizeof(T), 2 * sizeof(T), 20);
    ctx->eigen_device<CPUDevice>().parallelFor(
        var.size(), cost, [&](Eigen::Index begin, Eigen::Index end) {
          AdagradDenseRange(var_data, accum_data, grad_data, lr_c, epsilon_c,
                            begin, end);
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

    const RowGroups groups = GroupRowsByIndex(indices.data(), nnz, num_rows);
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
    ctx->eigen_device<CPUDevice>().parallelFor(
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

// Looks up var (input 0) and accum (input 1), locks them in a fixed order,
// and checks what both ops need: both exist, are initialized, are distinct,
// have the op's dtype and the same shape; lr and epsilon are scalars.
template <typename Device, typename T>
class AdagradOpBase : public OpKernel {
 public:
  explicit AdagradOpBase(OpKernelConstruction* context, bool sparse)
      : OpKernel(context), sparse_(sparse) {
    OP_REQUIRES_OK(context, context->GetAttr("use_locking", &use_locking_));
  }

  void Compute(OpKernelContext* ctx) override {
    tensorflow::core::RefCountPtr<Var> var_resource;
    tensorflow::core::RefCountPtr<Var> accum_resource;
    OP_REQUIRES_OK(ctx, LookupVariable(ctx, 0, "var", &var_resource));
    OP_REQUIRES_OK(ctx, LookupVariable(ctx, 1, "accum", &accum_resource));
    OP_REQUIRES(ctx, var_resource.get() != accum_resource.get(),
                absl::InvalidArgumentError(absl::StrCat(
                    name(), ": expected `var` and `accum` to be two distinct "
                            "variables, got the same variable twice")));
    const Tensor& lr = ctx->input(2);
    const Tensor& epsilon = ctx->input(3);
    OP_REQUIRES_OK(ctx, ExpectScalar("lr", lr));
    OP_REQUIRES_OK(ctx, ExpectScalar("epsilon", epsilon));

    auto locks = tensorflow::MaybeLockVariableInputMutexesInOrder<Device, T>(
        ctx, use_locking_, sparse_, {0, 1});
    // Shapes are read again under the lock: another op may have reassigned
    // the variable since the lookup.
    const TensorShape& var_shape = var_resource->tensor()->shape();
    const TensorShape& accum_shape = accum_resource->tensor()->shape();
    OP_REQUIRES(
        ctx, var_shape == accum_shape,
        absl::InvalidArgumentError(absl::StrCat(
            name(), ": expected `accum` shape to equal `var` shape ",
            var_shape.DebugString(), ", got ", accum_shape.DebugString())));
    OP_REQUIRES_OK(ctx, ValidateGradient(ctx, var_shape));

    Tensor var, accum;
    OP_REQUIRES_OK(ctx, tensorflow::GetInputTensorFromVariable<Device, T>(
                            ctx, 0, use_locking_, sparse_, &var));
    OP_REQUIRES_OK(ctx, tensorflow::GetInputTensorFromVariable<Device, T>(
                            ctx, 1, use_locking_, sparse_, &accum));
    Update(ctx, &var, &accum, lr.scalar<T>()(), epsilon.scalar<T>()());
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
  absl::Status LookupVariable(OpKernelContext* ctx, int input,
                              const char* input_name,
                              tensorflow::core::RefCountPtr<Var>* var) {
    absl::Status status = tensorflow::LookupResource(
        ctx, tensorflow::HandleFromInput(ctx, input), var);
    if (!status.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          name(), ": expected `", input_name,
          "` to be an initialized resource variable, but it could not be "
          "read (uninitialized or deleted?): ",
          status.message()));
    }
    tensorflow::tf_shared_lock lock(*(*var)->mu());
    if (!(*var)->is_initialized) {
      return absl::FailedPreconditionError(absl::StrCat(
          name(), ": expected `", input_name,
          "` to be an initialized resource variable, got an uninitialized "
          "one"));
    }
    const tensorflow::DataType dtype = (*var)->tensor()->dtype();
    if (dtype != DataTypeToEnum<T>::value) {
      return absl::InvalidArgumentError(absl::StrCat(
          name(), ": expected `", input_name, "` of dtype ",
          DataTypeString(DataTypeToEnum<T>::value), " (the dtype of `grad`), got ",
          DataTypeString(dtype)));
    }
    return absl::OkStatus();
  }

  absl::Status ExpectScalar(const char* input_name, const Tensor& t) {
    if (TensorShapeUtils::IsScalar(t.shape())) return absl::OkStatus();
    return Error(absl::StrCat("`", input_name, "` to be a scalar"),
                 absl::StrCat("shape ", t.shape().DebugString()));
  }

  bool use_locking_ = false;
  const bool sparse_;
};

template <typename Device, typename T>
class ApplyDenseOp : public AdagradOpBase<Device, T> {
 public:
  explicit ApplyDenseOp(OpKernelConstruction* context)
      : AdagradOpBase<Device, T>(context, /*sparse=*/false) {}

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
      : AdagradOpBase<Device, T>(context, /*sparse=*/true) {}

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
                          ApplySparseOp<DeviceType, T, int64_t>);

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
