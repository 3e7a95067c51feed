// What every OpKernel of this library shares: looking up, validating and
// locking its resource variables before any write (AdagradOpBase), the
// inputs and checks of the single-variable ops of both families
// (SingleVariableOpBase), the checks they build on, and the CPU sparse
// update's set-up (UpdateSparseRowsOnCpu). Included by adagrad_kernels.cc and
// rowwise_kernels.cc.
#ifndef TF_ADAGRAD_KERNELS_ADAGRAD_OP_BASE_H_
#define TF_ADAGRAD_KERNELS_ADAGRAD_OP_BASE_H_

// The CPU sparse set-up runs on Eigen's ThreadPoolDevice.
#define EIGEN_USE_THREADS

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/row_grouping.h"
#include "kernels/stochastic_rounding.h"
#include "kernels/variable_access.h"
#include "ops/adagrad_errors.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace tf_adagrad {
namespace op_base {

using ::tensorflow::DataTypeString;
using ::tensorflow::DataTypeToEnum;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::TensorShapeUtils;
using ::tensorflow::Var;
using CPUDevice = Eigen::ThreadPoolDevice;

// Looks up the resource variable of input `input` (`input_name` in messages)
// and checks that it is initialized and of dtype `want`; `want_reason` says
// why that dtype in the message.
inline absl::Status LookupVariable(
    OpKernelContext* ctx, const std::string& op_name, int input,
    const std::string& input_name,
    const std::vector<tensorflow::DataType>& wanted,
    const std::string& want_reason, tensorflow::core::RefCountPtr<Var>* var) {
  absl::Status status = tensorflow::LookupResource(
      ctx, tensorflow::HandleFromInput(ctx, input), var);
  if (!status.ok()) {
    return absl::FailedPreconditionError(
        op_errors::UnreadableVariable(op_name, input_name, status.message()));
  }
  tensorflow::tf_shared_lock lock(*(*var)->mu());
  if (!(*var)->is_initialized) {
    return absl::FailedPreconditionError(
        op_errors::Expected(op_name, op_errors::InitializedVariable(input_name),
                            "an uninitialized one"));
  }
  const tensorflow::DataType dtype = (*var)->tensor()->dtype();
  if (std::find(wanted.begin(), wanted.end(), dtype) == wanted.end()) {
    std::string names;
    for (const tensorflow::DataType want : wanted) {
      absl::StrAppend(&names, names.empty() ? "" : " or ",
                      DataTypeString(want));
    }
    return absl::InvalidArgumentError(op_errors::Expected(
        op_name, op_errors::DtypeOf(input_name, names, want_reason),
        DataTypeString(dtype)));
  }
  return absl::OkStatus();
}

// The same, for variables of one dtype `want`.
inline absl::Status LookupVariable(OpKernelContext* ctx,
                                   const std::string& op_name, int input,
                                   const std::string& input_name,
                                   tensorflow::DataType want,
                                   const std::string& want_reason,
                                   tensorflow::core::RefCountPtr<Var>* var) {
  return LookupVariable(ctx, op_name, input, input_name,
                        std::vector<tensorflow::DataType>{want}, want_reason,
                        var);
}

inline absl::Status ExpectScalar(const std::string& op_name,
                                 const char* input_name, const Tensor& t) {
  if (TensorShapeUtils::IsScalar(t.shape())) return absl::OkStatus();
  return absl::InvalidArgumentError(
      op_errors::Expected(op_name, op_errors::Scalar(input_name),
                          absl::StrCat("shape ", t.shape().DebugString())));
}

inline absl::Status ExpectSameShape(const std::string& op_name,
                                    const std::string& input,
                                    const TensorShape& shape,
                                    const std::string& reference,
                                    const TensorShape& reference_shape) {
  if (shape == reference_shape) return absl::OkStatus();
  return absl::InvalidArgumentError(op_errors::Expected(
      op_name,
      op_errors::SameShape(input, reference, reference_shape.DebugString()),
      shape.DebugString()));
}

// The `use_locking` attribute of a single-variable op.
inline bool ReadUseLocking(OpKernelConstruction* context) {
  bool use_locking = false;
  const absl::Status status = context->GetAttr("use_locking", &use_locking);
  if (!status.ok()) context->CtxFailure(status);
  return use_locking;
}

inline absl::Status Error(const std::string& op_name,
                          const std::string& expected, const std::string& got) {
  return absl::InvalidArgumentError(
      op_errors::Expected(op_name, expected, got));
}

// A sparse op's grad and indices against var's shape: var of rank >= 1,
// indices of rank 1, grad of [len(indices)] + var.shape[1:].
inline absl::Status ValidateSparseGradient(const std::string& op_name,
                                           const TensorShape& var_shape,
                                           const TensorShape& grad_shape,
                                           const TensorShape& indices_shape) {
  if (var_shape.dims() < 1) {
    return Error(op_name, op_errors::Rank("var", ">= 1"),
                 absl::StrCat("shape ", var_shape.DebugString()));
  }
  if (indices_shape.dims() != 1) {
    return Error(op_name, op_errors::Rank("indices", "1"),
                 absl::StrCat("shape ", indices_shape.DebugString()));
  }
  if (grad_shape.dims() < 1 ||
      grad_shape.dim_size(0) != indices_shape.dim_size(0)) {
    return Error(op_name,
                 op_errors::GradRowsMatchIndices(
                     absl::StrCat("(", indices_shape.dim_size(0), ")")),
                 absl::StrCat("`grad` shape ", grad_shape.DebugString()));
  }
  TensorShape var_row = var_shape;
  var_row.RemoveDim(0);
  TensorShape grad_row = grad_shape;
  grad_row.RemoveDim(0);
  if (var_row != grad_row) {
    return Error(op_name,
                 absl::StrCat(op_errors::GradRowShape(var_row.DebugString()),
                              " (`var` shape ", var_shape.DebugString(), ")"),
                 absl::StrCat("`grad` shape ", grad_shape.DebugString()));
  }
  return absl::OkStatus();
}

// What every op of this library does before it writes, in this order:
// look up its variables (each initialized, of the op's dtype), check that
// they are distinct, check that lr and epsilon are scalars, lock the
// variables by the access policy of variable_access.h (in address order),
// check the shapes under the locks (another op may have reassigned a
// variable since the lookup), and only then prepare and write them. A bad
// input anywhere leaves every variable untouched.
//
// T is the dtype of the variables and the gradient, H that of lr and
// epsilon (T, except for the rowwise ops).
template <typename Device, typename T, typename H = T>
class AdagradOpBase : public OpKernel {
 public:
  // The op's variables are its first `num_variables` inputs; lr and a
  // second scalar (epsilon, or the weight decay) follow them.
  AdagradOpBase(OpKernelConstruction* context, int num_variables,
                UpdateKind kind, bool use_locking)
      : OpKernel(context),
        num_variables_(num_variables),
        kind_(kind),
        use_locking_(use_locking) {}

  void Compute(OpKernelContext* ctx) override {
    std::vector<tensorflow::core::RefCountPtr<Var>> resources(num_variables_);
    for (int input = 0; input < num_variables_; ++input) {
      OP_REQUIRES_OK(
          ctx, LookupVariable(ctx, name(), input, VariableName(input),
                              AcceptedDtypes(input), VariableDtypeReason(input),
                              &resources[input]));
    }
    std::vector<Var*> vars(num_variables_);
    for (int input = 0; input < num_variables_; ++input) {
      vars[input] = resources[input].get();
    }
    OP_REQUIRES_OK(ctx, ExpectDistinct(vars));
    const Tensor& lr = ctx->input(num_variables_);
    const Tensor& second = ctx->input(num_variables_ + 1);
    OP_REQUIRES_OK(ctx, ExpectScalar(name(), "lr", lr));
    OP_REQUIRES_OK(ctx, ExpectScalar(name(), SecondScalarName(), second));

    LockedVariables locked(vars, kind_, use_locking_);
    OP_REQUIRES_OK(ctx, ValidateShapes(ctx, locked));
    OP_REQUIRES_OK(ctx, PrepareToWrite(ctx, locked));
    Update(ctx, locked, lr.scalar<H>()(), second.scalar<H>()());
  }

 protected:
  // Variable input `input`'s name in messages.
  virtual std::string VariableName(int input) const = 0;
  // The name of the scalar input after lr, in messages.
  virtual const char* SecondScalarName() const { return "epsilon"; }
  // The dtype variable input `input` must have, and why (in messages).
  virtual tensorflow::DataType VariableDtype(int input) const {
    return DataTypeToEnum<T>::value;
  }
  // Where a variable may have one of several dtypes: all of them.
  virtual std::vector<tensorflow::DataType> AcceptedDtypes(int input) const {
    return {VariableDtype(input)};
  }
  virtual std::string VariableDtypeReason(int input) const {
    return "the dtype of `grad`";
  }
  // Makes the locked buffers safe to write (variable_access.h).
  virtual absl::Status PrepareToWrite(OpKernelContext* ctx,
                                      LockedVariables& locked) {
    return locked.PrepareToWrite<Device, T>(ctx);
  }
  // The message for the same variable at inputs `first` < `second`.
  virtual std::string SameVariableMessage(int first, int second) const = 0;
  // Checks the locked variables' shapes and the gradient's; nothing is
  // written yet.
  virtual absl::Status ValidateShapes(OpKernelContext* ctx,
                                      const LockedVariables& locked) = 0;
  // `second` is the scalar input after lr.
  virtual void Update(OpKernelContext* ctx, const LockedVariables& locked, H lr,
                      H second) = 0;

  absl::Status Error(const std::string& expected, const std::string& got) {
    return absl::InvalidArgumentError(
        op_errors::Expected(name(), expected, got));
  }

  UpdateKind kind() const { return kind_; }

 private:
  // Sorted by address, a variable given twice shows as two neighbours; the
  // first such pair is reported.
  absl::Status ExpectDistinct(const std::vector<Var*>& vars) const {
    std::vector<int> by_address(vars.size());
    for (int input = 0; input < num_variables_; ++input) {
      by_address[input] = input;
    }
    std::sort(by_address.begin(), by_address.end(), [&](int a, int b) {
      return vars[a] < vars[b] || (vars[a] == vars[b] && a < b);
    });
    for (int k = 1; k < num_variables_; ++k) {
      const int a = by_address[k - 1], b = by_address[k];
      if (vars[a] == vars[b]) {
        return absl::InvalidArgumentError(SameVariableMessage(a, b));
      }
    }
    return absl::OkStatus();
  }

  const int num_variables_;
  const UpdateKind kind_;
  const bool use_locking_;
};

// The single-variable ops of both families: inputs var, accum, lr, epsilon,
// grad and, for a sparse update, indices. grad has var's shape (dense) or
// [len(indices)] + var.shape[1:] (sparse); accum has var's shape unless the
// family says otherwise (ValidateAccumulatorShape).
template <typename Device, typename T, typename H = T>
class SingleVariableOpBase : public AdagradOpBase<Device, T, H> {
 public:
  SingleVariableOpBase(OpKernelConstruction* context, UpdateKind kind)
      : AdagradOpBase<Device, T, H>(context, /*num_variables=*/2, kind,
                                    ReadUseLocking(context)) {}

 protected:
  static constexpr int kGradInput = 4;
  static constexpr int kIndicesInput = 5;

  std::string VariableName(int input) const override {
    return input == 0 ? "var" : "accum";
  }

  std::string SameVariableMessage(int, int) const override {
    return op_errors::SameVariableTwice(this->name());
  }

  virtual absl::Status ValidateAccumulatorShape(
      const TensorShape& var_shape, const TensorShape& accum_shape) {
    return ExpectSameShape(this->name(), "accum", accum_shape, "var",
                           var_shape);
  }

  // Checks the shapes and the rounding key (RoundingOf).
  absl::Status ValidateShapes(OpKernelContext* ctx,
                              const LockedVariables& locked) override {
    TF_RETURN_IF_ERROR(ValidateRoundingKey(ctx));
    const TensorShape& var_shape = locked.tensor(0)->shape();
    TF_RETURN_IF_ERROR(
        ValidateAccumulatorShape(var_shape, locked.tensor(1)->shape()));
    const TensorShape& grad_shape = ctx->input(kGradInput).shape();
    if (this->kind() == UpdateKind::kDense) {
      return ExpectSameShape(this->name(), "grad", grad_shape, "var",
                             var_shape);
    }
    return ValidateSparseGradient(this->name(), var_shape, grad_shape,
                                  ctx->input(kIndicesInput).shape());
  }

 private:
  // At most one key, of shape [2], and only for a 16-bit var.
  absl::Status ValidateRoundingKey(OpKernelContext* ctx) {
    tensorflow::OpInputList keys;
    TF_RETURN_IF_ERROR(ctx->input_list("rounding_key", &keys));
    if (keys.size() == 0) return absl::OkStatus();
    if (keys.size() > 1) {
      return this->Error(op_errors::RoundingKeys(),
                         absl::StrCat(keys.size(), " keys"));
    }
    if (!std::is_same_v<T, Eigen::half> &&
        !std::is_same_v<T, Eigen::bfloat16>) {
      return this->Error(
          op_errors::RoundingKeyDtype(),
          absl::StrCat("a `var` of dtype ",
                       DataTypeString(DataTypeToEnum<T>::value)));
    }
    if (keys[0].shape() != TensorShape({2})) {
      return this->Error(op_errors::RoundingKeyShape(),
                         absl::StrCat("shape ", keys[0].shape().DebugString()));
    }
    return absl::OkStatus();
  }

 protected:
  // How the new weights are stored: to nearest, or stochastically with the
  // op's rounding key (checked by ValidateShapes).
  static WeightRounding RoundingOf(OpKernelContext* ctx) {
    tensorflow::OpInputList keys;
    WeightRounding rounding;
    if (!ctx->input_list("rounding_key", &keys).ok() || keys.size() == 0) {
      return rounding;
    }
    const auto key = keys[0].vec<int64_t>();
    rounding.stochastic = true;
    rounding.key.seed = static_cast<uint64_t>(key(0));
    rounding.key.step = static_cast<uint64_t>(key(1));
    return rounding;
  }

  // The elements of one row of var: the product of its dimensions after
  // the first (1 for a scalar or a vector).
  static int64_t RowSize(const Tensor& var) {
    int64_t row_size = 1;
    for (int d = 1; d < var.dims(); ++d) row_size *= var.dim_size(d);
    return row_size;
  }
};

// The CPU sparse update of both families up to the update of the rows: every
// one of the nnz indices is checked against [0, num_rows) first, so that
// nothing is written when one is out of range (InvalidArgument naming the
// first); then, unless there is nothing to update (no indices, or rows of
// no elements), the gradient rows are grouped by index on the op's threads
// and update_rows(groups) writes them.
template <typename Index, typename UpdateRows>
absl::Status UpdateSparseRowsOnCpu(OpKernelContext* ctx, const Index* indices,
                                   int64_t nnz, int64_t num_rows,
                                   int64_t row_size,
                                   const UpdateRows& update_rows) {
  const int64_t bad = FindOutOfRangeIndex(indices, nnz, num_rows);
  if (bad >= 0) {
    return absl::InvalidArgumentError(op_errors::IndexOutOfRange(
        ctx->op_kernel().type_string(), bad, static_cast<int64_t>(indices[bad]),
        num_rows));
  }
  if (nnz == 0 || row_size == 0) return absl::OkStatus();
  // The sort runs on all threads when nnz is large (row_grouping.h decides
  // when a split pays).
  const CPUDevice& device = ctx->eigen_device<CPUDevice>();
  const auto run_tasks = [&device](int64_t num_tasks, const auto& task) {
    if (num_tasks == 1) return task(0);
    device.parallelFor(num_tasks, Eigen::TensorOpCost(0, 0, 1e9),
                       [&task](Eigen::Index begin, Eigen::Index end) {
                         for (Eigen::Index c = begin; c < end; ++c) task(c);
                       });
  };
  update_rows(
      GroupRowsByIndex(indices, nnz, num_rows, device.numThreads(), run_tasks));
  return absl::OkStatus();
}

}  // namespace op_base
}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_KERNELS_ADAGRAD_OP_BASE_H_
