#include "passes/decompose.h"

#include <mlir/Dialect/Func/IR/FuncOps.h>
#include <mlir/IR/Builders.h>
#include <mlir/IR/BuiltinOps.h>
#include <mlir/IR/BuiltinTypes.h>

namespace kiln::passes {
namespace {

mlir::Value create(mlir::OpBuilder& b, mlir::Location loc, llvm::StringRef name, mlir::ValueRange operands,
                   mlir::Type result, llvm::ArrayRef<mlir::NamedAttribute> attrs = {}) {
  mlir::OperationState state(loc, name);
  state.addOperands(operands);
  state.addTypes(result);
  state.addAttributes(attrs);
  return b.create(state)->getResult(0);
}

// linear(x, w, b) -> linear(x, w) + b: the GEMM stays one BLAS call that
// reads w transposed (as fast as eager's linear; a matmul of a permuted view
// measured ~15% slower here), and the bias add fuses with what follows.
void decompose_linear(mlir::Operation* op) {
  if (op->getNumOperands() != 3) return;  // no bias: nothing to split
  mlir::Value x = op->getOperand(0), w = op->getOperand(1), bias = op->getOperand(2);
  mlir::Type rt = op->getResult(0).getType();
  mlir::OpBuilder b(op);
  mlir::Value product = create(b, op->getLoc(), "kiln.linear", {x, w}, rt);
  mlir::Value sum = create(b, op->getLoc(), "kiln.add", {product, bias}, rt);
  op->getResult(0).replaceAllUsesWith(sum);
  op->erase();
}

}  // namespace

void decompose(mlir::ModuleOp module) {
  llvm::SmallVector<mlir::Operation*> linears;
  module.walk([&](mlir::Operation* op) {
    if (op->getName().getStringRef() == "kiln.linear") linears.push_back(op);
  });
  for (mlir::Operation* op : linears) decompose_linear(op);
}

}  // namespace kiln::passes
