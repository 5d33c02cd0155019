#include "passes/algebra.h"

#include <optional>

#include <mlir/IR/BuiltinAttributes.h>
#include <mlir/IR/BuiltinTypes.h>
#include <mlir/IR/Matchers.h>
#include <mlir/IR/PatternMatch.h>

namespace kiln::passes {
namespace {

// The value of a splat constant operand, as a double.
std::optional<double> splat(mlir::Value v) {
  mlir::Attribute attr;
  if (!mlir::matchPattern(v, mlir::m_Constant(&attr))) return std::nullopt;
  auto dense = mlir::dyn_cast<mlir::DenseElementsAttr>(attr);
  if (!dense || !dense.isSplat()) return std::nullopt;
  mlir::Type t = dense.getElementType();
  if (mlir::isa<mlir::FloatType>(t)) return dense.getSplatValue<llvm::APFloat>().convertToDouble();
  if (t.isInteger(1)) return dense.getSplatValue<bool>() ? 1.0 : 0.0;
  if (mlir::isa<mlir::IntegerType>(t)) return static_cast<double>(dense.getSplatValue<llvm::APInt>().getSExtValue());
  return std::nullopt;
}

bool is(mlir::Operation* op, llvm::StringRef name) {
  return op && op->getName().getStringRef() == name;
}

llvm::SmallVector<int64_t> dims_of(mlir::Operation* op) {
  auto dims = op->getAttrOfType<mlir::DenseI64ArrayAttr>("dims");
  return dims ? llvm::SmallVector<int64_t>(dims.asArrayRef()) : llvm::SmallVector<int64_t>{};
}

struct Algebra : mlir::RewritePattern {
  explicit Algebra(mlir::MLIRContext* context) : RewritePattern(MatchAnyOpTypeTag(), 1, context) {}

  mlir::LogicalResult matchAndRewrite(mlir::Operation* op, mlir::PatternRewriter& rewriter) const override {
    if (op->getName().getDialectNamespace() != "kiln" || op->getNumResults() != 1) return mlir::failure();
    llvm::StringRef name = op->getName().stripDialect();
    mlir::Value result = op->getResult(0);
    auto replace_with = [&](mlir::Value v) {
      if (v.getType() != result.getType()) return mlir::failure();
      rewriter.replaceOp(op, v);
      return mlir::success();
    };
    if (op->getNumOperands() == 2) {
      mlir::Value a = op->getOperand(0), b = op->getOperand(1);
      std::optional<double> ca = splat(a), cb = splat(b);
      if ((name == "mul" || name == "div") && cb == 1.0) return replace_with(a);
      if (name == "mul" && ca == 1.0) return replace_with(b);
      if ((name == "add" || name == "sub") && cb == 0.0) return replace_with(a);
      if (name == "add" && ca == 0.0) return replace_with(b);
    }
    if (op->getNumOperands() != 1) return mlir::failure();
    mlir::Value x = op->getOperand(0);
    mlir::Operation* inner = x.getDefiningOp();
    if ((name == "neg" || name == "reciprocal") && is(inner, op->getName().getStringRef()))
      return replace_with(inner->getOperand(0));
    if (name == "permute" && is(inner, "kiln.permute")) {
      llvm::SmallVector<int64_t> outer = dims_of(op), first = dims_of(inner), composed;
      for (int64_t d : outer) composed.push_back(first[static_cast<size_t>(d)]);
      bool identity = true;
      for (size_t i = 0; i < composed.size(); ++i) identity &= composed[i] == static_cast<int64_t>(i);
      if (identity) return replace_with(inner->getOperand(0));
      rewriter.modifyOpInPlace(op, [&] {
        op->setOperand(0, inner->getOperand(0));
        op->setAttr("dims", rewriter.getDenseI64ArrayAttr(composed));
      });
      return mlir::success();
    }
    static const llvm::StringRef reshapes[] = {"kiln.reshape", "kiln.view", "kiln.flatten", "kiln.squeeze",
                                                "kiln.unsqueeze"};
    auto is_reshape = [&](mlir::Operation* o) { return o && llvm::is_contained(reshapes, o->getName().getStringRef()); };
    auto static_type = [](mlir::Value v) {
      auto t = mlir::dyn_cast<mlir::RankedTensorType>(v.getType());
      return t && t.hasStaticShape();
    };
    if (name == "reshape" && is_reshape(inner) && static_type(result)) {
      // the outer reshape alone gives the same shape (and copies if it must)
      rewriter.modifyOpInPlace(op, [&] { op->setOperand(0, inner->getOperand(0)); });
      return mlir::success();
    }
    if ((name == "broadcast_to" || name == "expand") && (is(inner, "kiln.broadcast_to") || is(inner, "kiln.expand")) &&
        name == inner->getName().stripDialect() && static_type(result)) {
      rewriter.modifyOpInPlace(op, [&] { op->setOperand(0, inner->getOperand(0)); });
      return mlir::success();
    }
    return mlir::failure();
  }
};

}  // namespace

void populate_algebra_patterns(mlir::RewritePatternSet& patterns) { patterns.add<Algebra>(patterns.getContext()); }

}  // namespace kiln::passes
