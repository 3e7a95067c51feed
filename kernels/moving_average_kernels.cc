// OpKernels for TfAdagrad>MovingAverageRows and
// TfAdagrad>MovingAverageAllRows, registered for the CPU and, in a
// CUDA build, the GPU; and the CPU functors. Thin, as the update ops: look up
// and lock the three variables, validate every input before anything is
// written, then hand raw pointers to moving_average_cpu.h (CPU) or
// moving_average_gpu.cuh (GPU).
#define EIGEN_USE_THREADS

#include <string>
#include <vector>

#include "kernels/adagrad_op_base.h"
#include "kernels/moving_average_cpu.h"
#include "kernels/moving_average_functors.h"
#include "kernels/row_grouping.h"
#include "kernels/variable_access.h"
#include "ops/adagrad_errors.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace tf_adagrad {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::TTypes;
using ::tensorflow::Var;
using CPUDevice = Eigen::ThreadPoolDevice;
using GPUDevice = Eigen::GpuDevice;

namespace functor {

template <typename T, typename Index>
struct MovingAverageRows<CPUDevice, T, Index> {
  absl::Status operator()(OpKernelContext* ctx,
                          typename TTypes<T>::Matrix average,
                          typename TTypes<int64_t>::Vec last_step,
                          typename TTypes<T>::ConstMatrix var, double momentum,
                          int64_t step,
                          typename TTypes<Index>::ConstVec indices) {
    const int64_t row_size = var.dimension(1);
    const auto update_rows = [&](const RowGroups& groups) {
      using M = typename MathType<T>::type;
      auto* average_data = MathPointer(average.data());
      const auto* var_data = MathPointer(var.data());
      const double row_bytes = static_cast<double>(row_size) * sizeof(T);
      ctx->eigen_device<CPUDevice>().parallelFor(
          groups.num_unique(),
          Eigen::TensorOpCost(2 * row_bytes, row_bytes, 3.0 * row_size),
          [&](Eigen::Index begin, Eigen::Index end) {
            tf_adagrad::MovingAverageRows<M, Index>(
                average_data, last_step.data(), var_data, indices.data(),
                groups, row_size, momentum, step, begin, end);
          });
    };
    return op_base::UpdateSparseRowsOnCpu(ctx, indices.data(), indices.size(),
                                          var.dimension(0), row_size,
                                          update_rows);
  }
};

template <typename T>
struct MovingAverageAllRows<CPUDevice, T> {
  absl::Status operator()(OpKernelContext* ctx,
                          typename TTypes<T>::Matrix average,
                          typename TTypes<int64_t>::Vec last_step,
                          typename TTypes<T>::ConstMatrix var, double momentum,
                          int64_t step) {
    using M = typename MathType<T>::type;
    const int64_t row_size = var.dimension(1);
    const double row_bytes = static_cast<double>(row_size) * sizeof(T);
    auto* average_data = MathPointer(average.data());
    const auto* var_data = MathPointer(var.data());
    ctx->eigen_device<CPUDevice>().parallelFor(
        var.dimension(0),
        Eigen::TensorOpCost(2 * row_bytes + 8, row_bytes + 8, 3.0 * row_size),
        [&](Eigen::Index begin, Eigen::Index end) {
          tf_adagrad::MovingAverageAllRows<M>(average_data, last_step.data(),
                                              var_data, row_size, momentum,
                                              step, begin, end);
        });
    return absl::OkStatus();
  }
};

}  // namespace functor

namespace {

using op_base::Error;
using op_base::ExpectSameShape;
using op_base::ExpectScalar;
using op_base::LookupVariable;

// Inputs: average, last_step, var (resources), momentum, step and, unless
// kAllRows, indices. average and last_step are written, var only read; all
// three are locked as a sparse update locks its variables
// (variable_access.h).
template <typename Device, typename T, typename Index, bool kAllRows>
class MovingAverageRowsOp : public OpKernel {
 public:
  explicit MovingAverageRowsOp(OpKernelConstruction* context)
      : OpKernel(context), use_locking_(op_base::ReadUseLocking(context)) {}

  void Compute(OpKernelContext* ctx) override {
    static const char* const kNames[] = {"average", "last_step", "var"};
    const tensorflow::DataType dtype = tensorflow::DataTypeToEnum<T>::value;
    const tensorflow::DataType dtypes[] = {dtype, tensorflow::DT_INT64, dtype};
    const char* const reasons[] = {"the dtype of `momentum`", "a step count",
                                   "the dtype of `momentum`"};
    std::vector<tensorflow::core::RefCountPtr<Var>> resources(3);
    for (int input = 0; input < 3; ++input) {
      OP_REQUIRES_OK(
          ctx, LookupVariable(ctx, name(), input, kNames[input], dtypes[input],
                              reasons[input], &resources[input]));
    }
    OP_REQUIRES(ctx,
                resources[0].get() != resources[2].get() &&
                    resources[0].get() != resources[1].get() &&
                    resources[1].get() != resources[2].get(),
                absl::InvalidArgumentError(op_errors::Expected(
                    name(), "`average`, `last_step` and `var` to be distinct",
                    "the same variable twice")));
    const Tensor& momentum = ctx->input(3);
    const Tensor& step = ctx->input(4);
    OP_REQUIRES_OK(ctx, ExpectScalar(name(), "momentum", momentum));
    OP_REQUIRES_OK(ctx, ExpectScalar(name(), "step", step));
    const Tensor& indices = ctx->input(kAllRows ? 4 : 5);
    if (!kAllRows && indices.dims() != 1) {
      ctx->CtxFailure(
          Error(name(), op_errors::Rank("indices", "1"),
                absl::StrCat("shape ", indices.shape().DebugString())));
      return;
    }

    LockedVariables locked(
        {resources[0].get(), resources[1].get(), resources[2].get()},
        UpdateKind::kSparse, use_locking_);
    const TensorShape& var_shape = locked.tensor(2)->shape();
    if (var_shape.dims() < 1) {
      ctx->CtxFailure(Error(name(), op_errors::Rank("var", ">= 1"),
                            absl::StrCat("shape ", var_shape.DebugString())));
      return;
    }
    OP_REQUIRES_OK(ctx,
                   ExpectSameShape(name(), "average", locked.tensor(0)->shape(),
                                   "var", var_shape));
    OP_REQUIRES_OK(
        ctx,
        ExpectSameShape(name(), "last_step", locked.tensor(1)->shape(),
                        "var.shape[:1]", TensorShape({var_shape.dim_size(0)})));
    OP_REQUIRES_OK(ctx, (locked.PrepareToWrite<Device, T>(ctx, 0)));
    OP_REQUIRES_OK(ctx, (locked.PrepareToWrite<Device, int64_t>(ctx, 1)));

    const Tensor* var = locked.tensor(2);
    const int64_t num_rows = var_shape.dim_size(0);
    const int64_t row_size = num_rows == 0 ? 0 : var->NumElements() / num_rows;
    auto average = locked.tensor(0)->shaped<T, 2>({num_rows, row_size});
    auto last_step = locked.tensor(1)->vec<int64_t>();
    auto var_rows = var->shaped<T, 2>({num_rows, row_size});
    const double momentum_value = static_cast<double>(momentum.scalar<T>()());
    const int64_t step_value = step.scalar<int64_t>()();
    if constexpr (kAllRows) {
      OP_REQUIRES_OK(ctx, (functor::MovingAverageAllRows<Device, T>()(
                              ctx, average, last_step, var_rows, momentum_value,
                              step_value)));
    } else {
      OP_REQUIRES_OK(ctx, (functor::MovingAverageRows<Device, T, Index>()(
                              ctx, average, last_step, var_rows, momentum_value,
                              step_value, indices.vec<Index>())));
    }
  }

 private:
  const bool use_locking_;
};

#define REGISTER_KERNEL(DEVICE, DeviceType, T, Index)             \
  REGISTER_KERNEL_BUILDER(Name("TfAdagrad>MovingAverageRows")     \
                              .Device(DEVICE)                     \
                              .HostMemory("momentum")             \
                              .HostMemory("step")                 \
                              .TypeConstraint<T>("T")             \
                              .TypeConstraint<Index>("Tindices"), \
                          MovingAverageRowsOp<DeviceType, T, Index, false>);
#define REGISTER_KERNELS(DEVICE, DeviceType, T)                  \
  REGISTER_KERNEL(DEVICE, DeviceType, T, int32_t)                \
  REGISTER_KERNEL(DEVICE, DeviceType, T, int64_t)                \
  REGISTER_KERNEL_BUILDER(Name("TfAdagrad>MovingAverageAllRows") \
                              .Device(DEVICE)                    \
                              .HostMemory("momentum")            \
                              .HostMemory("step")                \
                              .TypeConstraint<T>("T"),           \
                          MovingAverageRowsOp<DeviceType, T, int64_t, true>);

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
#undef REGISTER_KERNEL

}  // namespace
}  // namespace tf_adagrad
