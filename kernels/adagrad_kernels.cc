// OpKernels for TfAdagrad>ApplyDense, TfAdagrad>ApplySparse and
// TfAdagrad>MultiApplyDense, registered
// for the CPU and, in a CUDA build, the GPU; and the CPU functors. The
// kernels are thin: look up and lock the variables, validate every input
// (before anything is allocated or written), then hand raw pointers to the
// loops in adagrad_cpu.h (CPU) or adagrad_gpu.cuh (GPU).
#define EIGEN_USE_THREADS

#include <string>
#include <vector>

#include "kernels/adagrad_cpu.h"
#include "kernels/adagrad_functors.h"
#include "kernels/adagrad_op_base.h"
#include "kernels/row_grouping.h"
#include "kernels/variable_access.h"
#include "ops/adagrad_errors.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace tf_adagrad {

using ::tensorflow::DataTypeToEnum;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::TTypes;
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

template <typename T, typename Acc>
struct ApplyAdagradDense<CPUDevice, T, Acc> {
  absl::Status operator()(OpKernelContext* ctx, typename TTypes<T>::Flat var,
                          typename TTypes<Acc>::Flat accum, T lr, T epsilon,
                          EpsilonPlacement placement,
                          typename TTypes<T>::ConstFlat grad,
                          const WeightRounding& rounding) {
    auto* var_data = MathPointer(var.data());
    auto* accum_data = MathPointer(accum.data());
    const auto* grad_data = MathPointer(grad.data());
    WithAdagradStep(
        placement, ToCompute(lr), ToCompute(epsilon), [&](const auto& step) {
          ParallelForDenseElements<T>(
              ctx, var.size(), [&](int64_t begin, int64_t end) {
                WithCpuRounding<T>(rounding, [&](auto& store) {
                  AdagradDenseRange(var_data, accum_data, grad_data, step,
                                    store, int64_t{0}, begin, end);
                });
              });
        });
    return absl::OkStatus();
  }
};

template <typename T>
struct ApplyAdagradDenseMulti<CPUDevice, T> {
  absl::Status operator()(
      OpKernelContext* ctx,
      const std::vector<DenseTensors<typename MathType<T>::type>>& tensors,
      T lr, T epsilon, EpsilonPlacement placement) {
    const int64_t num_tensors = static_cast<int64_t>(tensors.size());
    std::vector<int64_t> starts(num_tensors + 1, 0);
    for (int64_t i = 0; i < num_tensors; ++i) {
      starts[i + 1] = starts[i] + tensors[i].size;
    }
    WithAdagradStep(
        placement, ToCompute(lr), ToCompute(epsilon), [&](const auto& step) {
          ParallelForDenseElements<T>(
              ctx, starts[num_tensors], [&](int64_t begin, int64_t end) {
                AdagradDenseMultiRange(tensors.data(), starts.data(),
                                       num_tensors, step, begin, end);
              });
        });
    return absl::OkStatus();
  }
};

template <typename T, typename Acc, typename Index>
struct ApplyAdagradSparse<CPUDevice, T, Acc, Index> {
  absl::Status operator()(OpKernelContext* ctx, typename TTypes<T>::Matrix var,
                          typename TTypes<Acc>::Matrix accum, T lr, T epsilon,
                          EpsilonPlacement placement,
                          typename TTypes<T>::ConstMatrix grad,
                          typename TTypes<Index>::ConstVec indices,
                          const WeightRounding& rounding) {
    const int64_t nnz = indices.size();
    const int64_t row_size = var.dimension(1);
    const auto update_rows = [&](const RowGroups& groups) {
      using M = typename MathType<T>::type;
      auto* var_data = MathPointer(var.data());
      auto* accum_data = MathPointer(accum.data());
      const auto* grad_data = MathPointer(grad.data());
      const double row_bytes = static_cast<double>(row_size) * sizeof(T);
      const Eigen::TensorOpCost cost_per_row(
          row_bytes * 3.0 * nnz / groups.num_unique(), row_bytes * 2.0,
          20.0 * row_size);
      WithAdagradStep(
          placement, ToCompute(lr), ToCompute(epsilon), [&](const auto& step) {
            ctx->eigen_device<CPUDevice>().parallelFor(
                groups.num_unique(), cost_per_row,
                [&](Eigen::Index begin, Eigen::Index end) {
                  std::vector<ComputeType<M>> scratch(row_size);
                  WithCpuRounding<T>(rounding, [&](auto& store) {
                    AdagradSparseRows(var_data, accum_data, grad_data,
                                      indices.data(), groups, row_size, step,
                                      store, begin, end, scratch.data());
                  });
                });
          });
    };
    return op_base::UpdateSparseRowsOnCpu(
        ctx, indices.data(), nnz, var.dimension(0), row_size, update_rows);
  }
};

}  // namespace functor

namespace {

using op_base::AdagradOpBase;
using op_base::ExpectSameShape;
using op_base::SingleVariableOpBase;

// The elementwise ops' `epsilon_placement` attribute, which the op
// definition restricts to these two values.
EpsilonPlacement ReadEpsilonPlacement(OpKernelConstruction* context) {
  std::string placement;
  const absl::Status status = context->GetAttr("epsilon_placement", &placement);
  if (!status.ok()) context->CtxFailure(status);
  return placement == "outside_sqrt" ? EpsilonPlacement::kOutsideSqrt
                                     : EpsilonPlacement::kInsideSqrt;
}

// What both single-variable elementwise ops share: an accumulator of var's
// dtype or, for a 16-bit var, float32; and the dispatch on it.
template <typename Device, typename T>
class ElementwiseOpBase : public SingleVariableOpBase<Device, T> {
 public:
  ElementwiseOpBase(OpKernelConstruction* context, UpdateKind kind)
      : SingleVariableOpBase<Device, T>(context, kind),
        epsilon_placement_(ReadEpsilonPlacement(context)) {}

 protected:
  static constexpr bool kHasFloatAccumulator =
      kIsHalfType<typename MathType<T>::type>;

  std::vector<tensorflow::DataType> AcceptedDtypes(int input) const override {
    if (input == 1 && kHasFloatAccumulator) {
      return {DataTypeToEnum<T>::value, tensorflow::DT_FLOAT};
    }
    return {DataTypeToEnum<T>::value};
  }

  std::string VariableDtypeReason(int input) const override {
    return input == 1 && kHasFloatAccumulator
               ? op_errors::ElementwiseAccumulatorDtypeReason()
               : "the dtype of `grad`";
  }

  absl::Status PrepareToWrite(OpKernelContext* ctx,
                              LockedVariables& locked) override {
    TF_RETURN_IF_ERROR((locked.PrepareToWrite<Device, T>(ctx, 0)));
    if (locked.tensor(1)->dtype() == tensorflow::DT_FLOAT) {
      return locked.PrepareToWrite<Device, float>(ctx, 1);
    }
    return locked.PrepareToWrite<Device, T>(ctx, 1);
  }

  // Calls fn(accum) with the accumulator as a tensor of its element type.
  template <typename Fn>
  static void WithAccumulator(Tensor* accum, const Fn& fn) {
    if constexpr (kHasFloatAccumulator) {
      if (accum->dtype() == tensorflow::DT_FLOAT) return fn(float{}, accum);
    }
    fn(T{}, accum);
  }

  const EpsilonPlacement epsilon_placement_;
};

template <typename Device, typename T>
class ApplyDenseOp : public ElementwiseOpBase<Device, T> {
 public:
  explicit ApplyDenseOp(OpKernelConstruction* context)
      : ElementwiseOpBase<Device, T>(context, UpdateKind::kDense) {}

 protected:
  void Update(OpKernelContext* ctx, const LockedVariables& locked, T lr,
              T epsilon) override {
    Tensor* var = locked.tensor(0);
    if (var->NumElements() == 0) return;
    const Tensor& grad = ctx->input(this->kGradInput);
    this->WithAccumulator(locked.tensor(1), [&](auto acc, Tensor* accum) {
      using Acc = decltype(acc);
      OP_REQUIRES_OK(ctx, (functor::ApplyAdagradDense<Device, T, Acc>()(
                              ctx, var->flat<T>(), accum->flat<Acc>(), lr,
                              epsilon, this->epsilon_placement_, grad.flat<T>(),
                              this->RoundingOf(ctx))));
    });
  }
};

template <typename Device, typename T, typename Index>
class ApplySparseOp : public ElementwiseOpBase<Device, T> {
 public:
  explicit ApplySparseOp(OpKernelConstruction* context)
      : ElementwiseOpBase<Device, T>(context, UpdateKind::kSparse) {}

 protected:
  void Update(OpKernelContext* ctx, const LockedVariables& locked, T lr,
              T epsilon) override {
    Tensor* var = locked.tensor(0);
    const Tensor& grad = ctx->input(this->kGradInput);
    const Tensor& indices = ctx->input(this->kIndicesInput);
    // Flattening to [rows, row_size] must not divide by a zero row count.
    const int64_t num_rows = var->dim_size(0);
    const int64_t row_size = this->RowSize(*var);
    this->WithAccumulator(locked.tensor(1), [&](auto acc, Tensor* accum) {
      using Acc = decltype(acc);
      OP_REQUIRES_OK(
          ctx, (functor::ApplyAdagradSparse<Device, T, Acc, Index>()(
                   ctx, var->shaped<T, 2>({num_rows, row_size}),
                   accum->shaped<Acc, 2>({num_rows, row_size}), lr, epsilon,
                   this->epsilon_placement_,
                   grad.shaped<T, 2>({indices.NumElements(), row_size}),
                   indices.vec<Index>(), this->RoundingOf(ctx))));
    });
  }
};

// TfAdagrad>MultiApplyDense: inputs var[0..N), accum[0..N), lr, epsilon,
// grad[0..N). Every variable is locked exclusively, as every dense update
// is.
template <typename Device, typename T>
class MultiApplyDenseOp : public AdagradOpBase<Device, T> {
 public:
  explicit MultiApplyDenseOp(OpKernelConstruction* context)
      : AdagradOpBase<Device, T>(context, 2 * NumVariables(context),
                                 UpdateKind::kDense, /*use_locking=*/true),
        n_(NumVariables(context)),
        epsilon_placement_(ReadEpsilonPlacement(context)) {}

 protected:
  std::string VariableName(int input) const override {
    return input < n_ ? absl::StrCat("var[", input, "]")
                      : absl::StrCat("accum[", input - n_, "]");
  }

  std::string SameVariableMessage(int first, int second) const override {
    return op_errors::SameVariableAt(this->name(), 2 * n_, VariableName(first),
                                     VariableName(second));
  }

  absl::Status ValidateShapes(OpKernelContext* ctx,
                              const LockedVariables& locked) override {
    for (int i = 0; i < n_; ++i) {
      const TensorShape& var_shape = locked.tensor(i)->shape();
      const std::string var_name = VariableName(i);
      TF_RETURN_IF_ERROR(ExpectSameShape(this->name(), VariableName(n_ + i),
                                         locked.tensor(n_ + i)->shape(),
                                         var_name, var_shape));
      TF_RETURN_IF_ERROR(ExpectSameShape(
          this->name(), absl::StrCat("grad[", i, "]"),
          ctx->input(GradInput(i)).shape(), var_name, var_shape));
    }
    return absl::OkStatus();
  }

  void Update(OpKernelContext* ctx, const LockedVariables& locked, T lr,
              T epsilon) override {
    using M = typename MathType<T>::type;
    std::vector<DenseTensors<M>> tensors;
    tensors.reserve(n_);
    for (int i = 0; i < n_; ++i) {
      Tensor* var = locked.tensor(i);
      if (var->NumElements() == 0) continue;
      const Tensor& grad = ctx->input(GradInput(i));
      tensors.push_back(DenseTensors<M>{
          MathPointer(var->flat<T>().data()),
          MathPointer(locked.tensor(n_ + i)->flat<T>().data()),
          MathPointer(grad.flat<T>().data()), var->NumElements()});
    }
    if (tensors.empty()) return;
    OP_REQUIRES_OK(ctx, functor::ApplyAdagradDenseMulti<Device, T>()(
                            ctx, tensors, lr, epsilon, epsilon_placement_));
  }

 private:
  static int NumVariables(OpKernelConstruction* context) {
    int n = 0;
    const absl::Status status = context->GetAttr("N", &n);
    if (!status.ok()) context->CtxFailure(status);
    return n;
  }

  int GradInput(int i) const { return 2 * n_ + 2 + i; }

  const int n_;
  const EpsilonPlacement epsilon_placement_;
};

// lr, epsilon and the rounding key are read on the host (they are kernel
// arguments on the GPU); indices stay on the device, where the GPU kernels
// read them.
#define REGISTER_SPARSE_KERNEL(DEVICE, DeviceType, T, Index)      \
  REGISTER_KERNEL_BUILDER(Name("TfAdagrad>ApplySparse")           \
                              .Device(DEVICE)                     \
                              .HostMemory("lr")                   \
                              .HostMemory("epsilon")              \
                              .HostMemory("rounding_key")         \
                              .TypeConstraint<T>("T")             \
                              .TypeConstraint<Index>("Tindices"), \
                          ApplySparseOp<DeviceType, T, Index>);

#define REGISTER_KERNELS(DEVICE, DeviceType, T)             \
  REGISTER_KERNEL_BUILDER(Name("TfAdagrad>ApplyDense")      \
                              .Device(DEVICE)               \
                              .HostMemory("lr")             \
                              .HostMemory("epsilon")        \
                              .HostMemory("rounding_key")   \
                              .TypeConstraint<T>("T"),      \
                          ApplyDenseOp<DeviceType, T>);     \
  REGISTER_SPARSE_KERNEL(DEVICE, DeviceType, T, int32_t)    \
  REGISTER_SPARSE_KERNEL(DEVICE, DeviceType, T, int64_t)    \
  REGISTER_KERNEL_BUILDER(Name("TfAdagrad>MultiApplyDense") \
                              .Device(DEVICE)               \
                              .HostMemory("lr")             \
                              .HostMemory("epsilon")        \
                              .TypeConstraint<T>("T"),      \
                          MultiApplyDenseOp<DeviceType, T>);

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
#undef REGISTER_SPARSE_KERNEL

}  // namespace
}  // namespace tf_adagrad
