#pragma once
// The kiln MLIR dialect: ops on builtin ranked tensor types.
//
// The eager ops' definitions are generated from the op registry
// (ir/ods_gen.cpp), so each op's result types come from its eager meta rule
// (infer_result_types) and each op folds through the eager kernels
// (KilnFoldable). The hand-written ops are in ir/KilnBase.td.
#include <optional>

#include <mlir/Bytecode/BytecodeOpInterface.h>
#include <mlir/IR/BuiltinAttributes.h>
#include <mlir/IR/BuiltinTypes.h>
#include <mlir/IR/Dialect.h>
#include <mlir/IR/OpDefinition.h>
#include <mlir/IR/OpImplementation.h>
#include <mlir/Interfaces/ControlFlowInterfaces.h>
#include <mlir/Interfaces/InferTypeOpInterface.h>
#include <mlir/Interfaces/SideEffectInterfaces.h>

#include "eager/op.h"

namespace kiln::ir {

// dtype <-> element type: bool i1, uint8 ui8, int8 i8, int32 i32, int64 i64,
// float16 f16, bfloat16 bf16, float32 f32, float64 f64.
mlir::Type element_type(mlir::MLIRContext* context, DType dtype);
std::optional<DType> dtype_of(mlir::Type element);
// TensorType <-> tensor type (kDynamic dims are MLIR's `?`).
mlir::RankedTensorType tensor_type(mlir::MLIRContext* context, const TensorType& type);
std::optional<TensorType> kiln_type(mlir::Type type);

// An op attribute as MLIR spells it, and back (per the op's AttrSpec).
mlir::Attribute to_mlir_attr(mlir::MLIRContext* context, const AttrValue& value);
std::optional<AttrValue> from_mlir_attr(mlir::Attribute attr, AttrKind kind);
// The kiln Attrs of a kiln-dialect op (of an eager OpDef).
Attrs op_attrs(const OpDef& def, mlir::DictionaryAttr attributes);

// The eager call a kiln-dialect op stands for: its OpDef, which of the op's
// operands feed each of the OpDef's inputs (-1: an absent optional operand),
// and its attributes. nullopt for an op that is not an eager op.
struct EagerCall {
  const OpDef* def = nullptr;
  std::vector<int> operands;
  Attrs attrs;
};
std::optional<EagerCall> eager_call(mlir::Operation* op);

// "file:line" of a location (its first file location), else MLIR's text.
std::string location_text(mlir::Location loc);

// A dense constant as a tensor of its dtype.
Tensor tensor_from_attr(mlir::DenseElementsAttr attr);

// Result types of eager op `op` from its meta rule; a meta-rule error is
// reported at `location`.
mlir::LogicalResult infer_result_types(llvm::StringRef op, mlir::MLIRContext* context,
                                       std::optional<mlir::Location> location, mlir::ValueRange operands,
                                       mlir::DictionaryAttr attributes, llvm::SmallVectorImpl<mlir::Type>& types);

// Folding of eager ops: constant operands fold by running the eager kernel
// (small tensors only); reshape-like ops whose result type equals their
// operand's fold to the operand.
mlir::LogicalResult fold_eager_op(mlir::Operation* op, llvm::ArrayRef<mlir::Attribute> operands,
                                  llvm::SmallVectorImpl<mlir::OpFoldResult>& results);

template <class ConcreteType>
class KilnFoldable : public mlir::OpTrait::TraitBase<ConcreteType, KilnFoldable> {
 public:
  static mlir::LogicalResult foldTrait(mlir::Operation* op, llvm::ArrayRef<mlir::Attribute> operands,
                                       llvm::SmallVectorImpl<mlir::OpFoldResult>& results) {
    return fold_eager_op(op, operands, results);
  }
};

}  // namespace kiln::ir

#include "ir/KilnOps.dialect-decls.inc"
#define GET_OP_CLASSES
#include "ir/KilnOps.op-decls.inc"
#undef GET_OP_CLASSES
