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

// linear(x [.., K], w [N, K], b? [N]) -> matmul(x, permute(w, [1, 0])) (+ b)
void decompose_linear(mlir::Operation* op) {
  if (op->getNumOperands() != 3) return;  // no bias: linear is already one GEMM
  mlir::Value x = op->getOperand(0), w = op->getOperand(1), bias = op->getOperand(2);
  auto wt = mlir::dyn_cast<mlir::RankedTensorType>(w.getType());
  auto rt = mlir::dyn_cast<mlir::RankedTensorType>(op->getResult(0).getType());
  if (!wt || !rt || wt.getRank() != 2) return;
  mlir::OpBuilder b(op);
  auto transposed = mlir::RankedTensorType::get({wt.getDimSize(1), wt.getDimSize(0)}, wt.getElementType());
  mlir::Value t = create(b, op->getLoc(), "kiln.permute", {w}, transposed,
                         {b.getNamedAttr("dims", b.getDenseI64ArrayAttr({1, 0}))});
  mlir::Value m = create(b, op->getLoc(), "kiln.matmul", {x, t}, rt);
  mlir::Value sum = create(b, op->getLoc(), "kiln.add", {m, bias}, rt);
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
