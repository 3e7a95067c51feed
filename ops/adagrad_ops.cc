// Op registrations and shape functions for the fused Adagrad ops.
//
// The names carry the `TfAdagrad>` prefix so they never collide with
// TensorFlow's own ops. Shape functions reject wrong ranks and mismatched
// shapes when the graph is built; the kernels check everything again at run
// time, when shapes are fully known.
#include <vector>

#include "absl/strings/str_cat.h"
#include "ops/adagrad_errors.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_adagrad {
namespace {

using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// The shape a resource variable input was declared with, or unknown.
ShapeHandle VariableShape(InferenceContext* c, int input) {
  const auto* handle_data = c->input_handle_shapes_and_types(input);
  if (handle_data == nullptr || handle_data->empty()) {
    return c->UnknownShape();
  }
  return (*handle_data)[0].shape;
}

constexpr char kApplyDense[] = "TfAdagrad>ApplyDense";
constexpr char kApplySparse[] = "TfAdagrad>ApplySparse";
constexpr char kMultiApplyDense[] = "TfAdagrad>MultiApplyDense";

// TF_CALL_FLOAT_TYPES's types, by their attribute names: the types the
// kernels are registered for.
constexpr char kTypeAttr[] = "T: {half, bfloat16, float, double}";

// Where epsilon goes (kernels/adagrad_math.h): Keras' formula,
// `sqrt(accum + epsilon)`, or TensorFlow's ApplyAdagradV2's,
// `sqrt(accum) + epsilon`. Graphs saved before the attribute existed get
// the default, which is what they computed.
constexpr char kEpsilonPlacementAttr[] =
    "epsilon_placement: {'inside_sqrt', 'outside_sqrt'} = 'inside_sqrt'";

// How the ops store a 16-bit var's new weights: with no rounding key,
// rounded to nearest even; with one, a [2] int64 tensor (seed, step),
// stochastically (kernels/stochastic_rounding.h). Graphs saved before the
// input existed have none, which is what they computed.
constexpr char kRoundingKeyInput[] = "rounding_key: num_rounding_keys * int64";
constexpr char kRoundingKeyCountAttr[] = "num_rounding_keys: int >= 0 = 0";

// Wraps a shape-inference failure in the kernels' message for the same
// check, with shape inference's own reason after it.
absl::Status Expect(const char* op_name, absl::Status status,
                    InferenceContext* c, const std::string& expectation,
                    ShapeHandle received) {
  if (status.ok()) return status;
  return absl::InvalidArgumentError(absl::StrCat(
      op_errors::Expected(op_name, expectation, c->DebugString(received)), " (",
      status.message(), ")"));
}

absl::Status CheckScalarHyperparameters(const char* op, InferenceContext* c,
                                        int lr_input) {
  ShapeHandle unused;
  TF_RETURN_IF_ERROR(Expect(op, c->WithRank(c->input(lr_input), 0, &unused), c,
                            op_errors::Scalar("lr"), c->input(lr_input)));
  TF_RETURN_IF_ERROR(Expect(op, c->WithRank(c->input(lr_input + 1), 0, &unused),
                            c, op_errors::Scalar("epsilon"),
                            c->input(lr_input + 1)));
  return absl::OkStatus();
}

// The rounding key, where given: one [2] int64 tensor.
absl::Status CheckRoundingKey(const char* op, InferenceContext* c) {
  std::vector<ShapeHandle> keys;
  TF_RETURN_IF_ERROR(c->input("rounding_key", &keys));
  if (keys.size() > 1) {
    return absl::InvalidArgumentError(op_errors::Expected(
        op, op_errors::RoundingKeys(), absl::StrCat(keys.size(), " keys")));
  }
  for (const ShapeHandle& key : keys) {
    ShapeHandle unused;
    TF_RETURN_IF_ERROR(Expect(op, c->WithRank(key, 1, &unused), c,
                              op_errors::RoundingKeyShape(), key));
    auto size = c->Dim(key, 0);
    TF_RETURN_IF_ERROR(Expect(op, c->WithValue(size, 2, &size), c,
                              op_errors::RoundingKeyShape(), key));
  }
  return absl::OkStatus();
}

// What both ops check: scalar lr and epsilon, var and accum of one shape,
// which is returned in `var_shape`, and the rounding key.
absl::Status CheckCommonInputs(const char* op, InferenceContext* c,
                               ShapeHandle* var_shape) {
  TF_RETURN_IF_ERROR(CheckScalarHyperparameters(op, c, 2));
  TF_RETURN_IF_ERROR(CheckRoundingKey(op, c));
  ShapeHandle var = VariableShape(c, 0);
  ShapeHandle accum = VariableShape(c, 1);
  return Expect(op, c->Merge(var, accum, var_shape), c,
                op_errors::SameShape("accum", "var", c->DebugString(var)),
                accum);
}

// Inputs: var, accum, lr, epsilon, grad.
absl::Status ApplyDenseShape(InferenceContext* c) {
  const char* op = kApplyDense;
  ShapeHandle merged;
  TF_RETURN_IF_ERROR(CheckCommonInputs(op, c, &merged));
  ShapeHandle grad = c->input(4);
  TF_RETURN_IF_ERROR(Expect(
      op, c->Merge(merged, grad, &merged), c,
      op_errors::SameShape("grad", "var", c->DebugString(merged)), grad));
  return absl::OkStatus();
}

// A sparse op's grad (input 4) and indices (input 5) against var's shape.
absl::Status CheckSparseGradient(const char* op, InferenceContext* c,
                                 ShapeHandle merged) {
  ShapeHandle checked;
  ShapeHandle grad = c->input(4);
  ShapeHandle indices = c->input(5);
  TF_RETURN_IF_ERROR(Expect(op, c->WithRankAtLeast(merged, 1, &checked), c,
                            op_errors::Rank("var", ">= 1"), merged));
  merged = checked;
  TF_RETURN_IF_ERROR(Expect(op, c->WithRank(indices, 1, &checked), c,
                            op_errors::Rank("indices", "1"), indices));
  indices = checked;
  TF_RETURN_IF_ERROR(Expect(op, c->WithRankAtLeast(grad, 1, &checked), c,
                            op_errors::Rank("grad", ">= 1"), grad));
  grad = checked;
  auto unused_dim = c->Dim(indices, 0);
  TF_RETURN_IF_ERROR(
      Expect(op, c->Merge(c->Dim(grad, 0), c->Dim(indices, 0), &unused_dim), c,
             op_errors::GradRowsMatchIndices(c->DebugString(indices)), grad));
  ShapeHandle var_row, grad_row;
  TF_RETURN_IF_ERROR(c->Subshape(merged, 1, &var_row));
  TF_RETURN_IF_ERROR(c->Subshape(grad, 1, &grad_row));
  TF_RETURN_IF_ERROR(Expect(op, c->Merge(var_row, grad_row, &var_row), c,
                            op_errors::GradRowShape(c->DebugString(var_row)),
                            grad));
  return absl::OkStatus();
}

// Inputs: var, accum, lr, epsilon, grad, indices.
absl::Status ApplySparseShape(InferenceContext* c) {
  ShapeHandle merged;
  TF_RETURN_IF_ERROR(CheckCommonInputs(kApplySparse, c, &merged));
  return CheckSparseGradient(kApplySparse, c, merged);
}

// Inputs: var[0..N), accum[0..N), lr, epsilon, grad[0..N). Each position
// is checked as ApplyDense checks its inputs, and a mismatch names it.
absl::Status MultiApplyDenseShape(InferenceContext* c) {
  const char* op = kMultiApplyDense;
  int n;
  TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
  TF_RETURN_IF_ERROR(CheckScalarHyperparameters(op, c, 2 * n));
  for (int i = 0; i < n; ++i) {
    ShapeHandle var = VariableShape(c, i);
    ShapeHandle accum = VariableShape(c, n + i);
    ShapeHandle grad = c->input(2 * n + 2 + i);
    ShapeHandle merged;
    TF_RETURN_IF_ERROR(Expect(
        op, c->Merge(var, accum, &merged), c,
        op_errors::SameShape(absl::StrCat("accum[", i, "]"),
                             absl::StrCat("var[", i, "]"), c->DebugString(var)),
        accum));
    TF_RETURN_IF_ERROR(
        Expect(op, c->Merge(merged, grad, &merged), c,
               op_errors::SameShape(absl::StrCat("grad[", i, "]"),
                                    absl::StrCat("var[", i, "]"),
                                    c->DebugString(merged)),
               grad));
  }
  return absl::OkStatus();
}

constexpr char kRowwiseApplyDense[] = "TfAdagrad>RowwiseApplyDense";
constexpr char kRowwiseApplySparse[] = "TfAdagrad>RowwiseApplySparse";

// The rowwise ops' accumulator, lr and epsilon: float for 16-bit and float
// variables, double for double ones (the kernels check the pairing).
constexpr char kAccumulatorTypeAttr[] = "Taccum: {float, double}";

// What both rowwise ops check: scalar lr and epsilon, the rounding key, and
// an accumulator of shape var.shape[:1]. Returns var's shape in
// `var_shape`.
absl::Status CheckRowwiseInputs(const char* op, InferenceContext* c,
                                ShapeHandle* var_shape) {
  TF_RETURN_IF_ERROR(CheckScalarHyperparameters(op, c, 2));
  TF_RETURN_IF_ERROR(CheckRoundingKey(op, c));
  *var_shape = VariableShape(c, 0);
  ShapeHandle accum = VariableShape(c, 1);
  if (!c->RankKnown(*var_shape)) return absl::OkStatus();
  ShapeHandle var_rows;
  if (c->Rank(*var_shape) == 0) {
    var_rows = c->Scalar();
  } else {
    TF_RETURN_IF_ERROR(c->Subshape(*var_shape, 0, 1, &var_rows));
  }
  ShapeHandle unused;
  return Expect(op, c->Merge(var_rows, accum, &unused), c,
                op_errors::RowwiseAccumulatorShape(c->DebugString(var_rows)),
                accum);
}

// Inputs: var, accum, lr, epsilon, grad.
absl::Status RowwiseApplyDenseShape(InferenceContext* c) {
  const char* op = kRowwiseApplyDense;
  ShapeHandle var, merged;
  TF_RETURN_IF_ERROR(CheckRowwiseInputs(op, c, &var));
  ShapeHandle grad = c->input(4);
  return Expect(op, c->Merge(var, grad, &merged), c,
                op_errors::SameShape("grad", "var", c->DebugString(var)), grad);
}

// Inputs: var, accum, lr, epsilon, grad, indices.
absl::Status RowwiseApplySparseShape(InferenceContext* c) {
  const char* op = kRowwiseApplySparse;
  ShapeHandle var;
  TF_RETURN_IF_ERROR(CheckRowwiseInputs(op, c, &var));
  return CheckSparseGradient(op, c, var);
}

constexpr char kDecayWeights[] = "TfAdagrad>DecayWeights";
constexpr char kDecayRows[] = "TfAdagrad>DecayRows";

absl::Status CheckDecayScalars(const char* op, InferenceContext* c) {
  ShapeHandle unused;
  TF_RETURN_IF_ERROR(Expect(op, c->WithRank(c->input(1), 0, &unused), c,
                            op_errors::Scalar("lr"), c->input(1)));
  return Expect(op, c->WithRank(c->input(2), 0, &unused), c,
                op_errors::Scalar("weight_decay"), c->input(2));
}

// Inputs: var, lr, weight_decay.
absl::Status DecayWeightsShape(InferenceContext* c) {
  return CheckDecayScalars(kDecayWeights, c);
}

// Inputs: var, lr, weight_decay, indices.
absl::Status DecayRowsShape(InferenceContext* c) {
  const char* op = kDecayRows;
  TF_RETURN_IF_ERROR(CheckDecayScalars(op, c));
  ShapeHandle unused;
  ShapeHandle var = VariableShape(c, 0);
  TF_RETURN_IF_ERROR(Expect(op, c->WithRankAtLeast(var, 1, &unused), c,
                            op_errors::Rank("var", ">= 1"), var));
  return Expect(op, c->WithRank(c->input(3), 1, &unused), c,
                op_errors::Rank("indices", "1"), c->input(3));
}

constexpr char kMovingAverageRows[] = "TfAdagrad>MovingAverageRows";
constexpr char kMovingAverageAllRows[] = "TfAdagrad>MovingAverageAllRows";

// Inputs: average, last_step, var, momentum, step and, for the rows op,
// indices.
absl::Status CheckMovingAverageInputs(const char* op, InferenceContext* c) {
  ShapeHandle unused;
  TF_RETURN_IF_ERROR(Expect(op, c->WithRank(c->input(3), 0, &unused), c,
                            op_errors::Scalar("momentum"), c->input(3)));
  TF_RETURN_IF_ERROR(Expect(op, c->WithRank(c->input(4), 0, &unused), c,
                            op_errors::Scalar("step"), c->input(4)));
  ShapeHandle var = VariableShape(c, 2);
  ShapeHandle average = VariableShape(c, 0);
  TF_RETURN_IF_ERROR(Expect(op, c->WithRankAtLeast(var, 1, &unused), c,
                            op_errors::Rank("var", ">= 1"), var));
  return Expect(op, c->Merge(var, average, &unused), c,
                op_errors::SameShape("average", "var", c->DebugString(var)),
                average);
}

absl::Status MovingAverageRowsShape(InferenceContext* c) {
  const char* op = kMovingAverageRows;
  TF_RETURN_IF_ERROR(CheckMovingAverageInputs(op, c));
  ShapeHandle unused;
  return Expect(op, c->WithRank(c->input(5), 1, &unused), c,
                op_errors::Rank("indices", "1"), c->input(5));
}

absl::Status MovingAverageAllRowsShape(InferenceContext* c) {
  return CheckMovingAverageInputs(kMovingAverageAllRows, c);
}

}  // namespace

REGISTER_OP(kApplyDense)
    .Input("var: resource")
    .Input("accum: resource")
    .Input("lr: T")
    .Input("epsilon: T")
    .Input("grad: T")
    .Input(kRoundingKeyInput)
    .Attr(kTypeAttr)
    .Attr("use_locking: bool = false")
    .Attr(kEpsilonPlacementAttr)
    .Attr(kRoundingKeyCountAttr)
    .SetShapeFn(ApplyDenseShape)
    .Doc(R"doc(
Adagrad update: accum += grad * grad, then
var -= lr * grad / sqrt(accum + epsilon) (epsilon_placement 'inside_sqrt',
Keras' formula) or var -= lr * grad / (sqrt(accum) + epsilon)
('outside_sqrt', ApplyAdagradV2's). 16-bit types are computed in float32
and rounded once on store: to nearest even, or stochastically with a
rounding key (seed, step). A 16-bit var's accum is of its dtype or float32.
)doc");

REGISTER_OP(kApplySparse)
    .Input("var: resource")
    .Input("accum: resource")
    .Input("lr: T")
    .Input("epsilon: T")
    .Input("grad: T")
    .Input("indices: Tindices")
    .Input(kRoundingKeyInput)
    .Attr(kTypeAttr)
    .Attr("Tindices: {int32, int64}")
    .Attr("use_locking: bool = false")
    .Attr(kEpsilonPlacementAttr)
    .Attr(kRoundingKeyCountAttr)
    .SetShapeFn(ApplySparseShape)
    .Doc(R"doc(
Adagrad update of the rows of var and accum named by indices. Rows of grad
with the same index are summed first, so the result equals the dense update
with the densified gradient, deterministically.
)doc");

REGISTER_OP(kMultiApplyDense)
    .Input("var: N * resource")
    .Input("accum: N * resource")
    .Input("lr: T")
    .Input("epsilon: T")
    .Input("grad: N * T")
    .Attr("N: int >= 1")
    .Attr(kTypeAttr)
    .Attr(kEpsilonPlacementAttr)
    .SetShapeFn(MultiApplyDenseShape)
    .Doc(R"doc(
ApplyDense for N variables of one dtype in one op: each var[i] and accum[i]
is updated with grad[i], the work split across threads by elements (on a
GPU, one kernel launch per 64 variables or 320 chunks of 65536 elements).
Every input is checked before anything is written.
)doc");

REGISTER_OP(kRowwiseApplyDense)
    .Input("var: resource")
    .Input("accum: resource")
    .Input("lr: Taccum")
    .Input("epsilon: Taccum")
    .Input("grad: T")
    .Input(kRoundingKeyInput)
    .Attr(kTypeAttr)
    .Attr(kAccumulatorTypeAttr)
    .Attr("use_locking: bool = false")
    .Attr(kRoundingKeyCountAttr)
    .SetShapeFn(RowwiseApplyDenseShape)
    .Doc(R"doc(
Rowwise Adagrad (FBGEMM's exact rowwise): one accumulator per row of var
(rows are the first axis; a scalar is one row). For each row r:
accum[r] += mean(grad[r] * grad[r]);
var[r] -= (lr / (sqrt(accum[r]) + epsilon)) * grad[r], in Taccum: float for
half, bfloat16 and float variables, double for double ones.
)doc");

REGISTER_OP(kRowwiseApplySparse)
    .Input("var: resource")
    .Input("accum: resource")
    .Input("lr: Taccum")
    .Input("epsilon: Taccum")
    .Input("grad: T")
    .Input("indices: Tindices")
    .Input(kRoundingKeyInput)
    .Attr(kTypeAttr)
    .Attr(kAccumulatorTypeAttr)
    .Attr("Tindices: {int32, int64}")
    .Attr("use_locking: bool = false")
    .Attr(kRoundingKeyCountAttr)
    .SetShapeFn(RowwiseApplySparseShape)
    .Doc(R"doc(
RowwiseApplyDense for the rows named by indices: rows of grad with the same
index are summed first, so the result equals the dense update with the
densified gradient; rows not named are not read or written.
)doc");

REGISTER_OP(kDecayWeights)
    .Input("var: resource")
    .Input("lr: T")
    .Input("weight_decay: T")
    .Attr(kTypeAttr)
    .SetShapeFn(DecayWeightsShape)
    .Doc(R"doc(
Weight decay as Keras applies it before an update,
var -= var * (weight_decay * lr), for every element in one pass, in place
(exclusive lock). 16-bit types are computed in float32 and rounded once.
)doc");

REGISTER_OP(kDecayRows)
    .Input("var: resource")
    .Input("lr: T")
    .Input("weight_decay: T")
    .Input("indices: Tindices")
    .Attr(kTypeAttr)
    .Attr("Tindices: {int32, int64}")
    .Attr("use_locking: bool = false")
    .SetShapeFn(DecayRowsShape)
    .Doc(R"doc(
DecayWeights for the rows of var named by indices only: each distinct row
decays once, however often its index repeats; other rows are not read or
written.
)doc");

REGISTER_OP(kMovingAverageRows)
    .Input("average: resource")
    .Input("last_step: resource")
    .Input("var: resource")
    .Input("momentum: T")
    .Input("step: int64")
    .Input("indices: Tindices")
    .Attr(kTypeAttr)
    .Attr("Tindices: {int32, int64}")
    .Attr("use_locking: bool = false")
    .SetShapeFn(MovingAverageRowsShape)
    .Doc(R"doc(
Brings the exponential moving average of the rows of var named by indices
to `step`: for each distinct row r, with k = step - last_step[r],
average[r] = var[r] + momentum^k * (average[r] - var[r]) (k steps of
average = momentum * average + (1 - momentum) * var while var[r] stayed
the same), then last_step[r] = step. Other rows are not read or written.
)doc");

REGISTER_OP(kMovingAverageAllRows)
    .Input("average: resource")
    .Input("last_step: resource")
    .Input("var: resource")
    .Input("momentum: T")
    .Input("step: int64")
    .Attr(kTypeAttr)
    .Attr("use_locking: bool = false")
    .SetShapeFn(MovingAverageAllRowsShape)
    .Doc(R"doc(
MovingAverageRows for every row of var, in one pass.
)doc");

}  // namespace tf_adagrad
