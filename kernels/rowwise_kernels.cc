// OpKernels for TfAdagrad>RowwiseApplyDense and TfAdagrad>RowwiseApplySparse,
// registered for the CPU and, in a CUDA build, the GPU; and the CPU
// functors. Thin, as the elementwise ops' (adagrad_kernels.cc): look up,
// lock and validate through AdagradOpBase, then hand raw pointers to the
// loops in rowwise_cpu.h (CPU) or rowwise_gpu.cuh (GPU).
#define EIGEN_USE_THREADS

#include <string>
#include <vector>

#include "kernels/adagrad_op_base.h"
#include "kernels/row_grouping.h"
#include "kernels/rowwise_cpu.h"
#include "kernels/rowwise_functors.h"
#include "ops/adagrad_errors.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace tf_adagrad {

using ::tensorflow::DataTypeString;
using ::tensorflow::DataTypeToEnum;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using CPUDevice = Eigen::ThreadPoolDevice;
using GPUDevice = Eigen::GpuDevice;

namespace functor {

template <typename T>
struct ApplyRowwiseAdagradDense<CPUDevice, T> {
  absl::Status operator()(OpKernelContext* ctx, T* var,
                          RowwiseAccumulator<T>* accum, const T* grad,
                          int64_t num_rows, int64_t row_size,
                          const RowwiseStep<RowwiseAccumulator<T>>& step,
                          const WeightRounding& rounding) {
    // Memory-bound: a row is read twice (grad) and written once (var).
    const double row_bytes = static_cast<double>(row_size) * sizeof(T);
    const Eigen::TensorOpCost cost_per_row(3 * row_bytes, row_bytes,
                                           10.0 * row_size);
    ctx->eigen_device<CPUDevice>().parallelFor(
        num_rows, cost_per_row, [&](Eigen::Index begin, Eigen::Index end) {
          WithCpuRounding<T>(rounding, [&](auto& store) {
            RowwiseDenseRows(MathPointer(var), accum, MathPointer(grad),
                             row_size, step, store, begin, end);
          });
        });
    return absl::OkStatus();
  }
};

template <typename T, typename Index>
struct ApplyRowwiseAdagradSparse<CPUDevice, T, Index> {
  absl::Status operator()(OpKernelContext* ctx, T* var,
                          RowwiseAccumulator<T>* accum, const T* grad,
                          const Index* indices, int64_t nnz, int64_t num_rows,
                          int64_t row_size,
                          const RowwiseStep<RowwiseAccumulator<T>>& step,
                          const WeightRounding& rounding) {
    const auto update_rows = [&](const RowGroups& groups) {
      const double row_bytes = static_cast<double>(row_size) * sizeof(T);
      const Eigen::TensorOpCost cost_per_row(
          row_bytes * 2.0 * nnz / groups.num_unique(), row_bytes,
          10.0 * row_size);
      ctx->eigen_device<CPUDevice>().parallelFor(
          groups.num_unique(), cost_per_row,
          [&](Eigen::Index begin, Eigen::Index end) {
            std::vector<RowwiseAccumulator<T>> scratch(row_size);
            WithCpuRounding<T>(rounding, [&](auto& store) {
              RowwiseSparseRows(MathPointer(var), accum, MathPointer(grad),
                                indices, groups, row_size, step, store, begin,
                                end, scratch.data());
            });
          });
    };
    return op_base::UpdateSparseRowsOnCpu(ctx, indices, nnz, num_rows, row_size,
                                          update_rows);
  }
};

}  // namespace functor

namespace {

// What both rowwise ops share: var and its accumulator of shape
// var.shape[:1] and dtype RowwiseAccumulator<T>, whose dtype lr and
// epsilon (of attribute type H) must have too.
template <typename Device, typename T, typename H>
class RowwiseOpBase : public op_base::SingleVariableOpBase<Device, T, H> {
 public:
  using Accumulator = RowwiseAccumulator<T>;

  RowwiseOpBase(OpKernelConstruction* context, UpdateKind kind)
      : op_base::SingleVariableOpBase<Device, T, H>(context, kind) {
    // Kernels are registered for every (T, H), so that a wrong H gets this
    // message rather than a missing-kernel error.
    OP_REQUIRES(
        context, DataTypeToEnum<H>::value == DataTypeToEnum<Accumulator>::value,
        absl::InvalidArgumentError(op_errors::Expected(
            this->name(),
            absl::StrCat("`lr` and `epsilon` of dtype ",
                         DataTypeString(DataTypeToEnum<Accumulator>::value),
                         " (", AccumulatorReason(), ")"),
            DataTypeString(DataTypeToEnum<H>::value))));
  }

 protected:
  tensorflow::DataType VariableDtype(int input) const override {
    return input == 0 ? DataTypeToEnum<T>::value
                      : DataTypeToEnum<Accumulator>::value;
  }

  std::string VariableDtypeReason(int input) const override {
    return input == 0 ? "the dtype of `grad`" : AccumulatorReason();
  }

  absl::Status PrepareToWrite(OpKernelContext* ctx,
                              LockedVariables& locked) override {
    TF_RETURN_IF_ERROR((locked.PrepareToWrite<Device, T>(ctx, 0)));
    return locked.PrepareToWrite<Device, Accumulator>(ctx, 1);
  }

  absl::Status ValidateAccumulatorShape(
      const TensorShape& var_shape, const TensorShape& accum_shape) override {
    TensorShape var_rows;
    if (var_shape.dims() > 0) var_rows.AddDim(var_shape.dim_size(0));
    if (accum_shape == var_rows) return absl::OkStatus();
    return this->Error(
        absl::StrCat(op_errors::RowwiseAccumulatorShape(var_rows.DebugString()),
                     " (`var` shape ", var_shape.DebugString(), ")"),
        absl::StrCat("`accum` shape ", accum_shape.DebugString()));
  }

  // A scalar var is one row of one element.
  static int64_t NumRows(const Tensor& var) {
    return var.dims() == 0 ? 1 : var.dim_size(0);
  }
  static Accumulator* AccumulatorData(const LockedVariables& locked) {
    return locked.tensor(1)->template flat<Accumulator>().data();
  }
  // lr and epsilon as the accumulator's type, which the constructor checked
  // H is.
  static RowwiseStep<Accumulator> Step(H lr, H epsilon) {
    return RowwiseStep<Accumulator>{static_cast<Accumulator>(lr),
                                    static_cast<Accumulator>(epsilon)};
  }

 private:
  static std::string AccumulatorReason() {
    return op_errors::RowwiseAccumulatorDtypeReason(
        DataTypeString(DataTypeToEnum<T>::value));
  }
};

template <typename Device, typename T, typename H>
class RowwiseApplyDenseOp : public RowwiseOpBase<Device, T, H> {
 public:
  explicit RowwiseApplyDenseOp(OpKernelConstruction* context)
      : RowwiseOpBase<Device, T, H>(context, UpdateKind::kDense) {}

 protected:
  void Update(OpKernelContext* ctx, const LockedVariables& locked, H lr,
              H epsilon) override {
    Tensor* var = locked.tensor(0);
    if (var->NumElements() == 0) return;  // no rows, or rows of nothing
    const Tensor& grad = ctx->input(this->kGradInput);
    OP_REQUIRES_OK(
        ctx,
        (functor::ApplyRowwiseAdagradDense<Device, T>()(
            ctx, var->flat<T>().data(), this->AccumulatorData(locked),
            grad.flat<T>().data(), this->NumRows(*var), this->RowSize(*var),
            this->Step(lr, epsilon), this->RoundingOf(ctx))));
  }
};

template <typename Device, typename T, typename H, typename Index>
class RowwiseApplySparseOp : public RowwiseOpBase<Device, T, H> {
 public:
  explicit RowwiseApplySparseOp(OpKernelConstruction* context)
      : RowwiseOpBase<Device, T, H>(context, UpdateKind::kSparse) {}

 protected:
  void Update(OpKernelContext* ctx, const LockedVariables& locked, H lr,
              H epsilon) override {
    Tensor* var = locked.tensor(0);
    const Tensor& grad = ctx->input(this->kGradInput);
    const Tensor& indices = ctx->input(this->kIndicesInput);
    // Indices are checked even when the rows hold nothing to update.
    OP_REQUIRES_OK(
        ctx, (functor::ApplyRowwiseAdagradSparse<Device, T, Index>()(
                 ctx, var->flat<T>().data(), this->AccumulatorData(locked),
                 grad.flat<T>().data(), indices.flat<Index>().data(),
                 indices.NumElements(), var->dim_size(0), this->RowSize(*var),
                 this->Step(lr, epsilon), this->RoundingOf(ctx))));
  }
};

// lr, epsilon and the rounding key are read on the host (they are kernel
// arguments on the GPU); indices stay on the device, where the GPU kernels
// read them.
#define REGISTER_ROWWISE_SPARSE_KERNEL(DEVICE, DeviceType, T, H, Index) \
  REGISTER_KERNEL_BUILDER(Name("TfAdagrad>RowwiseApplySparse")          \
                              .Device(DEVICE)                           \
                              .HostMemory("lr")                         \
                              .HostMemory("epsilon")                    \
                              .HostMemory("rounding_key")               \
                              .TypeConstraint<T>("T")                   \
                              .TypeConstraint<H>("Taccum")              \
                              .TypeConstraint<Index>("Tindices"),       \
                          RowwiseApplySparseOp<DeviceType, T, H, Index>);

#define REGISTER_ROWWISE_KERNELS_WITH(DEVICE, DeviceType, T, H)     \
  REGISTER_KERNEL_BUILDER(Name("TfAdagrad>RowwiseApplyDense")       \
                              .Device(DEVICE)                       \
                              .HostMemory("lr")                     \
                              .HostMemory("epsilon")                \
                              .HostMemory("rounding_key")           \
                              .TypeConstraint<T>("T")               \
                              .TypeConstraint<H>("Taccum"),         \
                          RowwiseApplyDenseOp<DeviceType, T, H>);   \
  REGISTER_ROWWISE_SPARSE_KERNEL(DEVICE, DeviceType, T, H, int32_t) \
  REGISTER_ROWWISE_SPARSE_KERNEL(DEVICE, DeviceType, T, H, int64_t)

#define REGISTER_ROWWISE_KERNELS(DEVICE, DeviceType, T)       \
  REGISTER_ROWWISE_KERNELS_WITH(DEVICE, DeviceType, T, float) \
  REGISTER_ROWWISE_KERNELS_WITH(DEVICE, DeviceType, T, double)

#define REGISTER_CPU_KERNELS(T) \
  REGISTER_ROWWISE_KERNELS(::tensorflow::DEVICE_CPU, CPUDevice, T)
TF_CALL_FLOAT_TYPES(REGISTER_CPU_KERNELS)
#undef REGISTER_CPU_KERNELS

#if GOOGLE_CUDA
#define REGISTER_GPU_KERNELS(T) \
  REGISTER_ROWWISE_KERNELS(::tensorflow::DEVICE_GPU, GPUDevice, T)
TF_CALL_FLOAT_TYPES(REGISTER_GPU_KERNELS)
#undef REGISTER_GPU_KERNELS
#endif  // GOOGLE_CUDA
#undef REGISTER_ROWWISE_KERNELS
#undef REGISTER_ROWWISE_KERNELS_WITH
#undef REGISTER_ROWWISE_SPARSE_KERNEL

}  // namespace
}  // namespace tf_adagrad
