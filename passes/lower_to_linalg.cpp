#include "passes/lower_to_linalg.h"

#include <functional>
#include <optional>

#include <fmt/format.h>
#include <mlir/Dialect/Arith/IR/Arith.h>
#include <mlir/Dialect/Func/IR/FuncOps.h>
#include <mlir/Dialect/Linalg/IR/Linalg.h>
#include <mlir/Dialect/Linalg/Transforms/Transforms.h>
#include <mlir/Dialect/Math/IR/Math.h>
#include <mlir/Dialect/Tensor/IR/Tensor.h>
#include <mlir/IR/AffineMap.h>
#include <mlir/IR/Builders.h>
#include <mlir/IR/BuiltinOps.h>
#include <mlir/IR/Diagnostics.h>
#include <mlir/IR/PatternMatch.h>
#include <mlir/Pass/PassManager.h>
#include <mlir/Transforms/GreedyPatternRewriteDriver.h>
#include <mlir/Transforms/Passes.h>

#include "runtime/error.h"

namespace kiln::passes {
namespace {

using mlir::Value;

std::string where(mlir::Location loc) {
  if (auto file = loc->findInstanceOf<mlir::FileLineColLoc>())
    return fmt::format("{}:{}", file.getFilename().str(), file.getLine());
  std::string text;
  llvm::raw_string_ostream os(text);
  loc.print(os);
  return text;
}

bool is_float(mlir::Type t) { return t.isF32() || t.isF64(); }
// Element types an operand may have: converted to the compute type.
bool operand_ok(mlir::Type t) { return is_float(t) || t.isSignlessInteger(1) || t.isSignlessInteger(32) || t.isSignlessInteger(64); }

// Converts scalar `v` to `to` (arith casts; bool is 0/1, x != 0 to bool).
Value convert(mlir::OpBuilder& b, mlir::Location loc, Value v, mlir::Type to) {
  mlir::Type from = v.getType();
  if (from == to) return v;
  if (to.isInteger(1)) {
    if (mlir::isa<mlir::FloatType>(from)) {
      Value zero = b.create<mlir::arith::ConstantOp>(loc, b.getFloatAttr(from, 0.0));
      return b.create<mlir::arith::CmpFOp>(loc, mlir::arith::CmpFPredicate::UNE, v, zero);
    }
    Value zero = b.create<mlir::arith::ConstantOp>(loc, b.getIntegerAttr(from, 0));
    return b.create<mlir::arith::CmpIOp>(loc, mlir::arith::CmpIPredicate::ne, v, zero);
  }
  if (mlir::isa<mlir::FloatType>(to)) {
    if (mlir::isa<mlir::FloatType>(from)) {
      if (from.getIntOrFloatBitWidth() < to.getIntOrFloatBitWidth()) return b.create<mlir::arith::ExtFOp>(loc, to, v);
      return b.create<mlir::arith::TruncFOp>(loc, to, v);
    }
    if (from.isInteger(1)) return b.create<mlir::arith::UIToFPOp>(loc, to, v);
    return b.create<mlir::arith::SIToFPOp>(loc, to, v);
  }
  // integer targets
  if (mlir::isa<mlir::FloatType>(from)) return b.create<mlir::arith::FPToSIOp>(loc, to, v);
  if (from.getIntOrFloatBitWidth() < to.getIntOrFloatBitWidth()) {
    if (from.isInteger(1)) return b.create<mlir::arith::ExtUIOp>(loc, to, v);
    return b.create<mlir::arith::ExtSIOp>(loc, to, v);
  }
  return b.create<mlir::arith::TruncIOp>(loc, to, v);
}

// The type two operands compare in: the wider float if either is a float,
// else the wider integer.
mlir::Type common_type(llvm::ArrayRef<mlir::Type> types) {
  mlir::Type best;
  for (mlir::Type t : types) {
    if (!best) { best = t; continue; }
    bool bf = mlir::isa<mlir::FloatType>(best), tf = mlir::isa<mlir::FloatType>(t);
    if (tf && !bf) best = t;
    else if (tf == bf && t.getIntOrFloatBitWidth() > best.getIntOrFloatBitWidth()) best = t;
  }
  return best;
}

// Scalar body builder: given the (unconverted) scalar operands, returns the
// result in the result element type.
using Body = std::function<Value(mlir::OpBuilder&, mlir::Location, mlir::ValueRange, mlir::Type)>;

Value fconst(mlir::OpBuilder& b, mlir::Location loc, mlir::Type t, double v) {
  return b.create<mlir::arith::ConstantOp>(loc, b.getFloatAttr(t, v));
}

template <class F>
Body unary(F f) {
  return [f](mlir::OpBuilder& b, mlir::Location loc, mlir::ValueRange args, mlir::Type r) {
    return f(b, loc, convert(b, loc, args[0], r), r);
  };
}
template <class Op>
Body unary_op() {
  return unary([](mlir::OpBuilder& b, mlir::Location loc, Value x, mlir::Type) -> Value { return b.create<Op>(loc, x); });
}
template <class Op>
Body binary_op() {
  return [](mlir::OpBuilder& b, mlir::Location loc, mlir::ValueRange args, mlir::Type r) -> Value {
    return b.create<Op>(loc, convert(b, loc, args[0], r), convert(b, loc, args[1], r));
  };
}
Body compare(mlir::arith::CmpFPredicate fp, mlir::arith::CmpIPredicate ip) {
  return [=](mlir::OpBuilder& b, mlir::Location loc, mlir::ValueRange args, mlir::Type) -> Value {
    mlir::Type c = common_type({args[0].getType(), args[1].getType()});
    Value x = convert(b, loc, args[0], c), y = convert(b, loc, args[1], c);
    if (mlir::isa<mlir::FloatType>(c)) return b.create<mlir::arith::CmpFOp>(loc, fp, x, y);
    return b.create<mlir::arith::CmpIOp>(loc, ip, x, y);
  };
}
template <class Op>
Body logical() {
  return [](mlir::OpBuilder& b, mlir::Location loc, mlir::ValueRange args, mlir::Type) -> Value {
    return b.create<Op>(loc, convert(b, loc, args[0], b.getI1Type()), convert(b, loc, args[1], b.getI1Type()));
  };
}

Value sigmoid_of(mlir::OpBuilder& b, mlir::Location loc, Value x, mlir::Type r) {
  Value one = fconst(b, loc, r, 1.0);
  Value e = b.create<mlir::math::ExpOp>(loc, b.create<mlir::arith::NegFOp>(loc, x));
  return b.create<mlir::arith::DivFOp>(loc, one, b.create<mlir::arith::AddFOp>(loc, one, e));
}

// The ops that lower, by kiln op name. `bool_result`: the result is bool
// (comparisons, logical ops); otherwise it must be f32/f64.
struct Rule {
  Body body;
  bool bool_result = false;
};

const llvm::StringMap<Rule>& rules() {
  using namespace mlir;
  static const llvm::StringMap<Rule> table = [] {
    llvm::StringMap<Rule> t;
    auto identity = unary([](OpBuilder&, Location, Value x, Type) { return x; });
    // casts and broadcasts: the conversion and the indexing maps do the work
    for (const char* name : {"to", "contiguous", "clone", "expand", "broadcast_to"}) t[name] = {identity};
    t["neg"] = {unary_op<arith::NegFOp>()};
    t["abs"] = {unary_op<math::AbsFOp>()};
    t["exp"] = {unary_op<math::ExpOp>()};
    t["log"] = {unary_op<math::LogOp>()};
    t["log1p"] = {unary_op<math::Log1pOp>()};
    t["expm1"] = {unary_op<math::ExpM1Op>()};
    t["sqrt"] = {unary_op<math::SqrtOp>()};
    t["rsqrt"] = {unary([](OpBuilder& b, Location loc, Value x, Type r) -> Value {
      return b.create<arith::DivFOp>(loc, fconst(b, loc, r, 1.0), b.create<math::SqrtOp>(loc, x));
    })};
    t["sin"] = {unary_op<math::SinOp>()};
    t["cos"] = {unary_op<math::CosOp>()};
    t["tanh"] = {unary_op<math::TanhOp>()};
    t["erf"] = {unary_op<math::ErfOp>()};
    t["floor"] = {unary_op<math::FloorOp>()};
    t["ceil"] = {unary_op<math::CeilOp>()};
    t["round"] = {unary_op<math::RoundEvenOp>()};
    t["trunc"] = {unary_op<math::TruncOp>()};
    t["sigmoid"] = {unary(sigmoid_of)};
    t["silu"] = {unary([](OpBuilder& b, Location loc, Value x, Type r) -> Value {
      return b.create<arith::MulFOp>(loc, x, sigmoid_of(b, loc, x, r));
    })};
    t["relu"] = {unary([](OpBuilder& b, Location loc, Value x, Type r) -> Value {
      Value zero = fconst(b, loc, r, 0.0);
      Value neg = b.create<arith::CmpFOp>(loc, arith::CmpFPredicate::OLT, x, zero);
      return b.create<arith::SelectOp>(loc, neg, zero, x);
    })};
    t["gelu"] = {unary([](OpBuilder& b, Location loc, Value x, Type r) -> Value {
      Value e = b.create<math::ErfOp>(loc, b.create<arith::MulFOp>(loc, x, fconst(b, loc, r, 0.70710678118654752440)));
      Value h = b.create<arith::MulFOp>(loc, fconst(b, loc, r, 0.5), x);
      return b.create<arith::MulFOp>(loc, h, b.create<arith::AddFOp>(loc, fconst(b, loc, r, 1.0), e));
    })};
    t["sign"] = {unary([](OpBuilder& b, Location loc, Value x, Type r) -> Value {
      Value zero = fconst(b, loc, r, 0.0);
      Value pos = b.create<arith::UIToFPOp>(loc, r, b.create<arith::CmpFOp>(loc, arith::CmpFPredicate::OGT, x, zero));
      Value neg = b.create<arith::UIToFPOp>(loc, r, b.create<arith::CmpFOp>(loc, arith::CmpFPredicate::OLT, x, zero));
      return b.create<arith::SubFOp>(loc, pos, neg);
    })};
    t["reciprocal"] = {unary([](OpBuilder& b, Location loc, Value x, Type r) -> Value {
      return b.create<arith::DivFOp>(loc, fconst(b, loc, r, 1.0), x);
    })};
    t["add"] = {binary_op<arith::AddFOp>()};
    t["sub"] = {binary_op<arith::SubFOp>()};
    t["mul"] = {binary_op<arith::MulFOp>()};
    t["div"] = {binary_op<arith::DivFOp>()};
    t["maximum"] = {binary_op<arith::MaximumFOp>()};
    t["minimum"] = {binary_op<arith::MinimumFOp>()};
    t["pow"] = {binary_op<math::PowFOp>()};
    t["atan2"] = {binary_op<math::Atan2Op>()};
    t["eq"] = {compare(arith::CmpFPredicate::OEQ, arith::CmpIPredicate::eq), true};
    t["ne"] = {compare(arith::CmpFPredicate::UNE, arith::CmpIPredicate::ne), true};
    t["lt"] = {compare(arith::CmpFPredicate::OLT, arith::CmpIPredicate::slt), true};
    t["le"] = {compare(arith::CmpFPredicate::OLE, arith::CmpIPredicate::sle), true};
    t["gt"] = {compare(arith::CmpFPredicate::OGT, arith::CmpIPredicate::sgt), true};
    t["ge"] = {compare(arith::CmpFPredicate::OGE, arith::CmpIPredicate::sge), true};
    t["logical_and"] = {logical<arith::AndIOp>(), true};
    t["logical_or"] = {logical<arith::OrIOp>(), true};
    t["logical_xor"] = {logical<arith::XOrIOp>(), true};
    t["logical_not"] = {[](OpBuilder& b, Location loc, ValueRange args, Type) -> Value {
                          Value x = convert(b, loc, args[0], b.getI1Type());
                          Value one = b.create<arith::ConstantOp>(loc, b.getBoolAttr(true));
                          return b.create<arith::XOrIOp>(loc, x, one);
                        },
                        true};
    t["where"] = {[](OpBuilder& b, Location loc, ValueRange args, Type r) -> Value {
      return b.create<arith::SelectOp>(loc, convert(b, loc, args[0], b.getI1Type()), convert(b, loc, args[1], r),
                                       convert(b, loc, args[2], r));
    }};
    return t;
  }();
  return table;
}

std::optional<double> scalar_attr(mlir::Attribute a) {
  if (auto f = mlir::dyn_cast_or_null<mlir::FloatAttr>(a)) return f.getValueAsDouble();
  if (auto i = mlir::dyn_cast_or_null<mlir::IntegerAttr>(a)) {
    if (i.getType().isInteger(1)) return i.getValue().getBoolValue() ? 1.0 : 0.0;
    return static_cast<double>(i.getValue().getSExtValue());
  }
  return std::nullopt;
}

// Why `op` does not lower (empty if it does).
std::string refusal(mlir::Operation* op) {
  llvm::StringRef name = op->getName().getStringRef();
  if (name == "func.return") return {};
  if (op->getNumRegions() != 0) return "control flow is not compiled yet";
  if (!name.starts_with("kiln.")) return "not a kiln op";
  llvm::StringRef kiln_name = name.drop_front(5);
  if (op->getNumResults() != 1) return "not an elementwise op";
  auto rt = mlir::dyn_cast<mlir::RankedTensorType>(op->getResult(0).getType());
  if (!rt || !rt.hasStaticShape()) return "dynamic shapes are not compiled yet";
  for (Value v : op->getOperands()) {
    auto t = mlir::dyn_cast<mlir::RankedTensorType>(v.getType());
    if (!t || !t.hasStaticShape()) return "dynamic shapes are not compiled yet";
    if (!operand_ok(t.getElementType())) return fmt::format("operand dtype not compiled yet (only float32, float64, bool, int32, int64)");
  }
  mlir::Type re = rt.getElementType();
  if (kiln_name == "constant" || kiln_name == "full" || kiln_name == "full_like") {
    if (!operand_ok(re)) return "result dtype not compiled yet";
    if (kiln_name != "constant" && !scalar_attr(op->getAttr("value"))) return "fill value is not a number";
    return {};
  }
  if (kiln_name == "clamp") return is_float(re) ? "" : "only float32 and float64 results are compiled";
  auto it = rules().find(kiln_name);
  if (it == rules().end()) return "not an elementwise op the compiler knows";
  if (it->second.bool_result ? !re.isInteger(1) : !is_float(re))
    return "only float32 and float64 results (bool for comparisons) are compiled";
  if (kiln_name == "where" && op->getNumOperands() != 3) return "unexpected operands";
  // Result shape must be the broadcast of the operands'.
  for (Value v : op->getOperands()) {
    auto t = mlir::cast<mlir::RankedTensorType>(v.getType());
    if (t.getRank() > rt.getRank()) return "operand of higher rank than the result";
    for (int64_t i = 0; i < t.getRank(); ++i) {
      int64_t d = t.getDimSize(i), r = rt.getDimSize(rt.getRank() - t.getRank() + i);
      if (d != r && d != 1) return "operand does not broadcast to the result";
    }
  }
  return {};
}

mlir::Attribute splat_value(mlir::Type element, double v) {
  mlir::Builder b(element.getContext());
  if (mlir::isa<mlir::FloatType>(element)) return b.getFloatAttr(element, v);
  if (element.isInteger(1)) return b.getBoolAttr(v != 0);
  return b.getIntegerAttr(element, static_cast<int64_t>(v));
}

Value lower(mlir::OpBuilder& b, mlir::Operation* op) {
  mlir::Location loc = op->getLoc();
  llvm::StringRef name = op->getName().getStringRef().drop_front(5);
  auto rt = mlir::cast<mlir::RankedTensorType>(op->getResult(0).getType());
  mlir::Type re = rt.getElementType();
  if (name == "constant") {
    auto value = mlir::cast<mlir::TypedAttr>(op->getAttr("value"));
    return b.create<mlir::arith::ConstantOp>(loc, value);
  }
  if (name == "full" || name == "full_like") {
    auto dense = mlir::DenseElementsAttr::get(rt, splat_value(re, *scalar_attr(op->getAttr("value"))));
    return b.create<mlir::arith::ConstantOp>(loc, dense);
  }
  Body body;
  if (name == "clamp") {
    std::optional<double> lo = scalar_attr(op->getAttr("lo")), hi = scalar_attr(op->getAttr("hi"));
    body = [lo, hi](mlir::OpBuilder& b, mlir::Location loc, mlir::ValueRange args, mlir::Type r) -> Value {
      Value x = convert(b, loc, args[0], r);
      if (lo) x = b.create<mlir::arith::MaximumFOp>(loc, x, fconst(b, loc, r, *lo));
      if (hi) x = b.create<mlir::arith::MinimumFOp>(loc, x, fconst(b, loc, r, *hi));
      return x;
    };
  } else {
    body = rules().find(name)->second.body;
  }
  int64_t rank = rt.getRank();
  llvm::SmallVector<mlir::AffineMap> maps;
  for (Value v : op->getOperands()) {
    auto t = mlir::cast<mlir::RankedTensorType>(v.getType());
    llvm::SmallVector<mlir::AffineExpr> exprs;
    for (int64_t i = 0; i < t.getRank(); ++i) {
      int64_t j = rank - t.getRank() + i;
      exprs.push_back(t.getDimSize(i) == 1 && rt.getDimSize(j) != 1 ? b.getAffineConstantExpr(0)
                                                                     : b.getAffineDimExpr(static_cast<unsigned>(j)));
    }
    maps.push_back(mlir::AffineMap::get(static_cast<unsigned>(rank), 0, exprs, b.getContext()));
  }
  maps.push_back(b.getMultiDimIdentityMap(static_cast<unsigned>(rank)));
  llvm::SmallVector<mlir::utils::IteratorType> iterators(rank, mlir::utils::IteratorType::parallel);
  Value init = b.create<mlir::tensor::EmptyOp>(loc, rt.getShape(), re);
  auto generic = b.create<mlir::linalg::GenericOp>(
      loc, mlir::TypeRange{rt}, op->getOperands(), mlir::ValueRange{init}, maps, iterators,
      [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) {
        Value result = body(nb, nloc, args.drop_back(), re);
        nb.create<mlir::linalg::YieldOp>(nloc, result);
      });
  return generic.getResult(0);
}

}  // namespace

std::vector<NotLowered> lower_to_linalg(mlir::ModuleOp module) {
  module.getContext()->loadDialect<mlir::arith::ArithDialect, mlir::linalg::LinalgDialect, mlir::math::MathDialect,
                                   mlir::tensor::TensorDialect>();
  std::vector<NotLowered> kept;
  mlir::OpBuilder b(module.getContext());
  for (auto func : module.getOps<mlir::func::FuncOp>()) {
    llvm::SmallVector<mlir::Operation*> ops;
    for (mlir::Operation& op : func.getBody().getOps())
      if (!mlir::isa<mlir::func::ReturnOp>(op)) ops.push_back(&op);
    for (mlir::Operation* op : ops) {
      std::string why = refusal(op);
      if (!why.empty()) {
        kept.push_back({op->getName().getStringRef().str(), where(op->getLoc()), std::move(why)});
        continue;
      }
      b.setInsertionPoint(op);
      Value v = lower(b, op);
      op->getResult(0).replaceAllUsesWith(v);
      op->erase();
    }
  }
  return kept;
}

void fuse_elementwise(mlir::ModuleOp module) {
  std::string diagnostics;
  mlir::ScopedDiagnosticHandler handler(module.getContext(), [&](mlir::Diagnostic& d) {
    diagnostics += d.str() + "\n";
    return mlir::success();
  });
  mlir::MLIRContext* context = module.getContext();
  mlir::RewritePatternSet patterns(context);
  // Fuse every elementwise producer, also one with several uses: it is
  // recomputed in each consumer (cheap next to a round trip through memory).
  // Two guards against exponential growth of the fused body: a value the
  // consumer reads through several operands is not fused until the
  // canonicalizer has merged those operands (same value, same indexing map),
  // otherwise each operand would inline its own copy of the producer; and
  // no fused body grows beyond kMaxBodyOps.
  constexpr size_t kMaxBodyOps = 2000;
  mlir::linalg::populateElementwiseOpsFusionPatterns(patterns, [](mlir::OpOperand* operand) {
    mlir::Operation* consumer = operand->getOwner();
    for (mlir::OpOperand& other : consumer->getOpOperands())
      if (&other != operand && other.get() == operand->get()) return false;
    size_t size = consumer->getRegion(0).front().getOperations().size();
    if (auto producer = operand->get().getDefiningOp<mlir::linalg::GenericOp>())
      size += producer.getRegion().front().getOperations().size();
    return size <= kMaxBodyOps;
  });
  mlir::linalg::GenericOp::getCanonicalizationPatterns(patterns, context);
  mlir::tensor::EmptyOp::getCanonicalizationPatterns(patterns, context);
  if (mlir::failed(mlir::applyPatternsAndFoldGreedily(module, std::move(patterns))))
    fail<IrError>("linalg elementwise fusion did not converge:\n{}", diagnostics);
  mlir::PassManager pm(context);
  pm.addPass(mlir::createCanonicalizerPass());
  pm.addPass(mlir::createCSEPass());
  if (mlir::failed(pm.run(module))) fail<IrError>("cleaning up after fusion failed:\n{}", diagnostics);
}

}  // namespace kiln::passes
