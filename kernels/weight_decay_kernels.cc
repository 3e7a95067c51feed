// OpKernels for TfAdagrad>DecayWeights and TfAdagrad>DecayRows, registered
// for the CPU and, in a CUDA build, the GPU; and the CPU functors. Thin, as
// the update ops: look up and lock the variable, validate every input, then
// hand raw pointers to weight_decay_cpu.h (CPU) or weight_decay_gpu.cuh
// (GPU).
#define EIGEN_USE_THREADS

#include <string>

#include "kernels/adagrad_op_base.h"
#include "kernels/row_grouping.h"
#include "kernels/variable_access.h"
#include "kernels/weight_decay_cpu.h"
#include "kernels/weight_decay_functors.h"
#include "ops/adagrad_errors.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace tf_adagrad {

using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TTypes;
using CPUDevice = Eigen::ThreadPoolDevice;
using GPUDevice = Eigen::GpuDevice;

namespace functor {

template <typename T>
WeightDecayStep<ComputeType<typename MathType<T>::type>> DecayStep(
    T lr, T weight_decay) {
  // The product in T, as TensorFlow folds Keras' two scalars.
  return {ToCompute(static_cast<T>(weight_decay * lr))};
}

template <typename T>
struct DecayWeights<CPUDevice, T> {
  absl::Status operator()(OpKernelContext* ctx, typename TTypes<T>::Flat var,
                          T lr, T weight_decay) {
    auto* data = MathPointer(var.data());
    const auto step = DecayStep(lr, weight_decay);
    // Memory-bound: a load and a store per element. Shards of whole 4 KiB
    // pages, so that two threads never write the same cache line.
    constexpr Eigen::Index align = 4096 / sizeof(T);
    ctx->eigen_device<CPUDevice>().parallelFor(
        var.size(), Eigen::TensorOpCost(sizeof(T), sizeof(T), 3),
        [](Eigen::Index size) { return (size + align - 1) / align * align; },
        [&](Eigen::Index begin, Eigen::Index end) {
          WeightDecayRange(data, step, begin, end);
        });
    return absl::OkStatus();
  }
};

template <typename T, typename Index>
struct DecayRows<CPUDevice, T, Index> {
  absl::Status operator()(OpKernelContext* ctx, typename TTypes<T>::Matrix var,
                          T lr, T weight_decay,
                          typename TTypes<Index>::ConstVec indices) {
    const int64_t row_size = var.dimension(1);
    const auto decay_rows = [&](const RowGroups& groups) {
      auto* data = MathPointer(var.data());
      const auto step = DecayStep(lr, weight_decay);
      const double row_bytes = static_cast<double>(row_size) * sizeof(T);
      ctx->eigen_device<CPUDevice>().parallelFor(
          groups.num_unique(),
          Eigen::TensorOpCost(row_bytes, row_bytes, 3.0 * row_size),
          [&](Eigen::Index begin, Eigen::Index end) {
            WeightDecayRows(data, indices.data(), groups, row_size, step, begin,
                            end);
          });
    };
    return op_base::UpdateSparseRowsOnCpu(ctx, indices.data(), indices.size(),
                                          var.dimension(0), row_size,
                                          decay_rows);
  }
};

}  // namespace functor

namespace {

using op_base::AdagradOpBase;

// Inputs: var, lr, weight_decay and, for the rows op, indices.
template <typename Device, typename T>
class WeightDecayOpBase : public AdagradOpBase<Device, T> {
 public:
  WeightDecayOpBase(OpKernelConstruction* context, UpdateKind kind,
                    bool use_locking)
      : AdagradOpBase<Device, T>(context, /*num_variables=*/1, kind,
                                 use_locking) {}

 protected:
  static constexpr int kIndicesInput = 3;

  std::string VariableName(int) const override { return "var"; }
  const char* SecondScalarName() const override { return "weight_decay"; }
  std::string VariableDtypeReason(int) const override {
    return "the dtype of `lr`";
  }
  // One variable: never the same one twice.
  std::string SameVariableMessage(int, int) const override { return ""; }
};

// TfAdagrad>DecayWeights: every element, under an exclusive lock (as every
// dense update).
template <typename Device, typename T>
class DecayWeightsOp : public WeightDecayOpBase<Device, T> {
 public:
  explicit DecayWeightsOp(OpKernelConstruction* context)
      : WeightDecayOpBase<Device, T>(context, UpdateKind::kDense,
                                     /*use_locking=*/true) {}

 protected:
  absl::Status ValidateShapes(OpKernelContext*,
                              const LockedVariables&) override {
    return absl::OkStatus();  // any shape
  }

  void Update(OpKernelContext* ctx, const LockedVariables& locked, T lr,
              T weight_decay) override {
    Tensor* var = locked.tensor(0);
    if (var->NumElements() == 0) return;
    OP_REQUIRES_OK(ctx, functor::DecayWeights<Device, T>()(ctx, var->flat<T>(),
                                                           lr, weight_decay));
  }
};

// TfAdagrad>DecayRows: the rows named by indices, locked as a sparse update
// (variable_access.h).
template <typename Device, typename T, typename Index>
class DecayRowsOp : public WeightDecayOpBase<Device, T> {
 public:
  explicit DecayRowsOp(OpKernelConstruction* context)
      : WeightDecayOpBase<Device, T>(context, UpdateKind::kSparse,
                                     op_base::ReadUseLocking(context)) {}

 protected:
  absl::Status ValidateShapes(OpKernelContext* ctx,
                              const LockedVariables& locked) override {
    const tensorflow::TensorShape& var_shape = locked.tensor(0)->shape();
    const tensorflow::TensorShape& indices_shape =
        ctx->input(this->kIndicesInput).shape();
    if (var_shape.dims() < 1) {
      return this->Error(op_errors::Rank("var", ">= 1"),
                         absl::StrCat("shape ", var_shape.DebugString()));
    }
    if (indices_shape.dims() != 1) {
      return this->Error(op_errors::Rank("indices", "1"),
                         absl::StrCat("shape ", indices_shape.DebugString()));
    }
    return absl::OkStatus();
  }

  void Update(OpKernelContext* ctx, const LockedVariables& locked, T lr,
              T weight_decay) override {
    Tensor* var = locked.tensor(0);
    const Tensor& indices = ctx->input(this->kIndicesInput);
    const int64_t num_rows = var->dim_size(0);
    const int64_t row_size = num_rows == 0 ? 0 : var->NumElements() / num_rows;
    OP_REQUIRES_OK(ctx, (functor::DecayRows<Device, T, Index>()(
                            ctx, var->shaped<T, 2>({num_rows, row_size}), lr,
                            weight_decay, indices.vec<Index>())));
  }
};

#define REGISTER_ROWS_KERNEL(DEVICE, DeviceType, T, Index)        \
  REGISTER_KERNEL_BUILDER(Name("TfAdagrad>DecayRows")             \
                              .Device(DEVICE)                     \
                              .HostMemory("lr")                   \
                              .HostMemory("weight_decay")         \
                              .TypeConstraint<T>("T")             \
                              .TypeConstraint<Index>("Tindices"), \
                          DecayRowsOp<DeviceType, T, Index>);

#define REGISTER_KERNELS(DEVICE, DeviceType, T)           \
  REGISTER_KERNEL_BUILDER(Name("TfAdagrad>DecayWeights")  \
                              .Device(DEVICE)             \
                              .HostMemory("lr")           \
                              .HostMemory("weight_decay") \
                              .TypeConstraint<T>("T"),    \
                          DecayWeightsOp<DeviceType, T>); \
  REGISTER_ROWS_KERNEL(DEVICE, DeviceType, T, int32_t)    \
  REGISTER_ROWS_KERNEL(DEVICE, DeviceType, T, int64_t)

#define REGISTER_CPU_KERNELS(T) \
  REGISTER_KERNELS(::tensorflow::DEVICE_CPU, CPUDevice, T)
TF_CALL_FLOAT_TYPES(REGISTER_CPU_KERNELS)
#undef REGISTER_CPU_KERNELS

#if GOOGLE_CUDA
#define REGISTER_GPU_KERNELS(T) \
  REGISTER_KERNELS(::tensorflow::DEVICE_GPU, GPUDevice, T)
TF_CALL_FLOAT_TYPES(REGISTER_GPU_KERNELS)
#undef REGISTER_GPU_KERNELS
#endif  // GOOGLE_CUDA
#undef REGISTER_KERNELS
#undef REGISTER_ROWS_KERNEL

}  // namespace
}  // namespace tf_adagrad
