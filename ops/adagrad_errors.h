// The text of every validation error of the TfAdagrad ops, built in one
// place for the shape functions (ops/adagrad_ops.cc), which check what the
// graph knows, and the kernels (kernels/), which check everything again at
// run time. Each message reads "<op>: expected <what>, got <what came>".
#ifndef TF_ADAGRAD_OPS_ADAGRAD_ERRORS_H_
#define TF_ADAGRAD_OPS_ADAGRAD_ERRORS_H_

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace tf_adagrad {
namespace op_errors {

inline std::string Expected(absl::string_view op, absl::string_view expectation,
                            absl::string_view received) {
  return absl::StrCat(op, ": expected ", expectation, ", got ", received);
}

// The expectations, each naming the input (`lr`, `var[2]`, ...) it is about.

inline std::string Scalar(absl::string_view input) {
  return absl::StrCat("`", input, "` to be a scalar");
}

inline std::string SameShape(absl::string_view input,
                             absl::string_view reference,
                             absl::string_view reference_shape) {
  return absl::StrCat("`", input, "` shape to equal `", reference, "` shape ",
                      reference_shape);
}

// `rank` such as "1" or ">= 1".
inline std::string Rank(absl::string_view input, absl::string_view rank) {
  return absl::StrCat("`", input, "` of rank ", rank);
}

inline std::string GradRowsMatchIndices(absl::string_view num_indices) {
  return absl::StrCat("`grad.shape[0]` to equal the number of indices ",
                      num_indices);
}

inline std::string GradRowShape(absl::string_view var_row_shape) {
  return absl::StrCat("`grad.shape[1:]` to equal `var.shape[1:]` ",
                      var_row_shape);
}

// `reason` says why that dtype, such as "the dtype of `grad`".
inline std::string DtypeOf(absl::string_view input, absl::string_view dtype,
                           absl::string_view reason) {
  return absl::StrCat("`", input, "` of dtype ", dtype, " (", reason, ")");
}

// A rowwise accumulator's shape: var.shape[:1] ([] for a scalar var).
inline std::string RowwiseAccumulatorShape(absl::string_view var_rows) {
  return absl::StrCat("`accum` shape to equal `var.shape[:1]` ", var_rows);
}

// Why a rowwise accumulator (and lr and epsilon) has the dtype it has.
inline std::string RowwiseAccumulatorDtypeReason(absl::string_view var_dtype) {
  return absl::StrCat("the rowwise accumulator dtype of a `var` of dtype ",
                      var_dtype);
}

// The optional rounding key of the update ops.
inline std::string RoundingKeys() { return "at most one `rounding_key`"; }

inline std::string RoundingKeyShape() {
  return "`rounding_key` of shape [2] (seed, step)";
}

// Stochastic rounding is for 16-bit weights only.
inline std::string RoundingKeyDtype() {
  return "a `var` of dtype half or bfloat16 with a `rounding_key` (only "
         "16-bit weights round stochastically)";
}

// Why an elementwise accumulator may have either dtype.
inline std::string ElementwiseAccumulatorDtypeReason() {
  return "the dtype of `grad`, or float for a 16-bit `grad`";
}

inline std::string InitializedVariable(absl::string_view input) {
  return absl::StrCat("`", input, "` to be an initialized resource variable");
}

// A variable that could not be looked up: no "got" of its own.
inline std::string UnreadableVariable(absl::string_view op,
                                      absl::string_view input,
                                      absl::string_view reason) {
  return absl::StrCat(op, ": expected ", InitializedVariable(input),
                      ", but it could not be read (uninitialized or "
                      "deleted?): ",
                      reason);
}

// The same variable given as var and accum of a single-variable op.
inline std::string SameVariableTwice(absl::string_view op) {
  return Expected(op, "`var` and `accum` to be two distinct variables",
                  "the same variable twice");
}

// The same variable at two of the 2N variable inputs of a multi-tensor op.
inline std::string SameVariableAt(absl::string_view op, int num_variables,
                                  absl::string_view first,
                                  absl::string_view second) {
  return Expected(
      op,
      absl::StrCat("the ", num_variables,
                   " variables of `var` and `accum` to be "
                   "distinct"),
      absl::StrCat("the same variable as `", first, "` and `", second, "`"));
}

inline std::string IndexOutOfRange(absl::string_view op, int64_t position,
                                   int64_t index, int64_t num_rows) {
  return Expected(op,
                  absl::StrCat("every index in [0, ", num_rows,
                               ") (the first dimension of `var`)"),
                  absl::StrCat("indices[", position, "] = ", index,
                               "; nothing was updated"));
}

}  // namespace op_errors
}  // namespace tf_adagrad

#endif  // TF_ADAGRAD_OPS_ADAGRAD_ERRORS_H_
