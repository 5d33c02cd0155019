#include "passes/lower_to_linalg.h"

#include <algorithm>
#include <functional>
#include <limits>
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

#include "ir/dialect.h"
#include "runtime/error.h"

namespace kiln::passes {
namespace {

using mlir::Value;


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
// An op with a float and an integer form, picked by the result type.
template <class FOp, class IOp>
Body arith_op() {
  return [](mlir::OpBuilder& b, mlir::Location loc, mlir::ValueRange args, mlir::Type r) -> Value {
    Value x = convert(b, loc, args[0], r), y = convert(b, loc, args[1], r);
    if (mlir::isa<mlir::FloatType>(r)) return b.create<FOp>(loc, x, y);
    return b.create<IOp>(loc, x, y);
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

// The elementwise ops that lower, by kiln op name. `bool_result`: the result
// is bool (comparisons, logical ops); otherwise it must be f32/f64, or also
// i32/i64 when `int_result`; `any_result`: any compiled dtype (conversions,
// and bitwise ops, whose meta rule allows only integers and bool).
struct Rule {
  Body body;
  bool bool_result = false;
  bool int_result = false;
  bool any_result = false;
};

const llvm::StringMap<Rule>& rules() {
  using namespace mlir;
  static const llvm::StringMap<Rule> table = [] {
    llvm::StringMap<Rule> t;
    auto identity = unary([](OpBuilder&, Location, Value x, Type) { return x; });
    // casts and broadcasts: the conversion and the indexing maps do the work
    for (const char* name : {"to_copy", "contiguous", "clone", "expand"}) t[name] = {identity, false, false, true};
    // copy(dst, src): src broadcast and converted to dst's shape and dtype
    t["copy"] = {[](OpBuilder& b, Location loc, ValueRange args, Type r) { return convert(b, loc, args[1], r); },
                 false, false, true};
    t["neg"] = {unary([](OpBuilder& b, Location loc, Value x, Type r) -> Value {
                  if (isa<FloatType>(r)) return b.create<arith::NegFOp>(loc, x);
                  return b.create<arith::SubIOp>(loc, b.create<arith::ConstantOp>(loc, b.getIntegerAttr(r, 0)), x);
                }),
                false, true};
    t["abs"] = {unary([](OpBuilder& b, Location loc, Value x, Type r) -> Value {
                  if (isa<FloatType>(r)) return b.create<math::AbsFOp>(loc, x);
                  return b.create<math::AbsIOp>(loc, x);
                }),
                false, true};
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
    t["gelu_tanh"] = {unary([](OpBuilder& b, Location loc, Value x, Type r) -> Value {
      Value x3 = b.create<arith::MulFOp>(loc, b.create<arith::MulFOp>(loc, x, x), x);
      Value inner = b.create<arith::AddFOp>(loc, x, b.create<arith::MulFOp>(loc, fconst(b, loc, r, 0.044715), x3));
      Value th = b.create<math::TanhOp>(loc, b.create<arith::MulFOp>(loc, fconst(b, loc, r, 0.79788456080286535588), inner));
      Value h = b.create<arith::MulFOp>(loc, fconst(b, loc, r, 0.5), x);
      return b.create<arith::MulFOp>(loc, h, b.create<arith::AddFOp>(loc, fconst(b, loc, r, 1.0), th));
    })};
    t["gelu"] = {unary([](OpBuilder& b, Location loc, Value x, Type r) -> Value {
      // h + h * erf(x / sqrt 2), h = x / 2: one fused multiply-add once contracted
      Value e = b.create<math::ErfOp>(loc, b.create<arith::MulFOp>(loc, x, fconst(b, loc, r, 0.70710678118654752440)));
      Value h = b.create<arith::MulFOp>(loc, fconst(b, loc, r, 0.5), x);
      return b.create<arith::AddFOp>(loc, h, b.create<arith::MulFOp>(loc, h, e));
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
    t["add"] = {arith_op<arith::AddFOp, arith::AddIOp>(), false, true};
    t["sub"] = {arith_op<arith::SubFOp, arith::SubIOp>(), false, true};
    t["mul"] = {arith_op<arith::MulFOp, arith::MulIOp>(), false, true};
    t["div"] = {binary_op<arith::DivFOp>()};
    t["maximum"] = {arith_op<arith::MaximumFOp, arith::MaxSIOp>(), false, true};
    t["minimum"] = {arith_op<arith::MinimumFOp, arith::MinSIOp>(), false, true};
    t["pow"] = {binary_op<math::PowFOp>()};
    t["atan2"] = {binary_op<math::Atan2Op>()};
    t["eq"] = {compare(arith::CmpFPredicate::OEQ, arith::CmpIPredicate::eq), true};
    t["ne"] = {compare(arith::CmpFPredicate::UNE, arith::CmpIPredicate::ne), true};
    t["lt"] = {compare(arith::CmpFPredicate::OLT, arith::CmpIPredicate::slt), true};
    t["le"] = {compare(arith::CmpFPredicate::OLE, arith::CmpIPredicate::sle), true};
    t["gt"] = {compare(arith::CmpFPredicate::OGT, arith::CmpIPredicate::sgt), true};
    t["ge"] = {compare(arith::CmpFPredicate::OGE, arith::CmpIPredicate::sge), true};
    // bitwise ops: integer or bool results (bool is i1: the same ops)
    t["bitwise_and"] = {binary_op<arith::AndIOp>(), false, false, true};
    t["bitwise_or"] = {binary_op<arith::OrIOp>(), false, false, true};
    t["bitwise_xor"] = {binary_op<arith::XOrIOp>(), false, false, true};
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
                    return b.create<arith::SelectOp>(loc, convert(b, loc, args[0], b.getI1Type()),
                                                     convert(b, loc, args[1], r), convert(b, loc, args[2], r));
                  },
                  false, true};
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

mlir::Attribute splat_value(mlir::Type element, double v) {
  mlir::Builder b(element.getContext());
  if (mlir::isa<mlir::FloatType>(element)) return b.getFloatAttr(element, v);
  if (element.isInteger(1)) return b.getBoolAttr(v != 0);
  return b.getIntegerAttr(element, static_cast<int64_t>(v));
}

// ---- iteration spaces, indexing maps and generics ----

using mlir::AffineMap;
using mlir::utils::IteratorType;
using Shape64 = llvm::SmallVector<int64_t>;

// The loops of a generic over an operand of `shape` that reduces the dims
// marked in `reduced`, and the maps from the loops to the operand's dims.
// Loop order: the kept dims, then the reduced ones, so the outermost loop is
// parallel (the executor splits it across threads) - except that the last
// dim of size > 1, when kept, stays innermost: a loop that walks
// contiguous memory vectorizes, a strided one does not.
struct Space {
  mlir::MLIRContext* context;
  Shape64 shape;
  llvm::SmallVector<bool> reduced;    // per dim of `shape`
  llvm::SmallVector<unsigned> loop;   // per dim of `shape`: its loop
  llvm::SmallVector<IteratorType> iterators;  // per loop

  Space(mlir::MLIRContext* c, llvm::ArrayRef<int64_t> s, llvm::ArrayRef<bool> r)
      : context(c), shape(s), reduced(r), loop(s.size()) {
    int64_t inner = -1;
    for (int64_t d = 0; d < rank(); ++d)
      if (shape[d] != 1) inner = d;
    bool inner_kept = inner >= 0 && !reduced[inner];
    llvm::SmallVector<int64_t> order;
    for (int64_t d = 0; d < rank(); ++d)
      if (!reduced[d] && !(inner_kept && d == inner)) order.push_back(d);
    for (int64_t d = 0; d < rank(); ++d)
      if (reduced[d]) order.push_back(d);
    if (inner_kept) order.push_back(inner);
    for (size_t l = 0; l < order.size(); ++l) {
      loop[order[l]] = static_cast<unsigned>(l);
      iterators.push_back(reduced[order[l]] ? IteratorType::reduction : IteratorType::parallel);
    }
  }
  // All loops parallel, in the dims' order.
  static Space parallel(mlir::MLIRContext* c, llvm::ArrayRef<int64_t> s) {
    return Space(c, s, llvm::SmallVector<bool>(s.size(), false));
  }
  int64_t rank() const { return static_cast<int64_t>(shape.size()); }
  mlir::AffineExpr dim(int64_t d) const { return mlir::getAffineDimExpr(loop[d], context); }
  AffineMap map(llvm::ArrayRef<mlir::AffineExpr> exprs) const {
    return AffineMap::get(static_cast<unsigned>(rank()), 0, exprs, context);
  }
  // The operand itself.
  AffineMap full() const {
    llvm::SmallVector<mlir::AffineExpr> e;
    for (int64_t d = 0; d < rank(); ++d) e.push_back(dim(d));
    return map(e);
  }
  // A result over the kept dims (a projected permutation of the parallel loops).
  AffineMap kept() const {
    llvm::SmallVector<mlir::AffineExpr> e;
    for (int64_t d = 0; d < rank(); ++d)
      if (!reduced[d]) e.push_back(dim(d));
    return map(e);
  }
  // An operand of shape `s` broadcast against the trailing dims (NumPy rules).
  AffineMap broadcast(llvm::ArrayRef<int64_t> s) const {
    llvm::SmallVector<mlir::AffineExpr> e;
    int64_t lead = rank() - static_cast<int64_t>(s.size());
    for (size_t i = 0; i < s.size(); ++i) {
      int64_t d = lead + static_cast<int64_t>(i);
      e.push_back(s[i] == 1 && shape[d] != 1 ? mlir::getAffineConstantExpr(0, context) : dim(d));
    }
    return map(e);
  }
  Shape64 kept_shape() const {
    Shape64 s;
    for (int64_t d = 0; d < rank(); ++d)
      if (!reduced[d]) s.push_back(shape[d]);
    return s;
  }
  int64_t count() const {
    int64_t n = 1;
    for (int64_t d = 0; d < rank(); ++d)
      if (reduced[d]) n *= shape[d];
    return n;
  }
};

using GenericBody = llvm::function_ref<llvm::SmallVector<Value>(mlir::OpBuilder&, mlir::Location, mlir::ValueRange)>;

// A linalg.generic over `space`; its results have the types of `outs`.
llvm::SmallVector<Value> generic(mlir::OpBuilder& b, mlir::Location loc, const Space& space,
                                 llvm::ArrayRef<std::pair<Value, AffineMap>> ins,
                                 llvm::ArrayRef<std::pair<Value, AffineMap>> outs, GenericBody body) {
  llvm::SmallVector<Value> in_values, out_values;
  llvm::SmallVector<AffineMap> maps;
  llvm::SmallVector<mlir::Type> types;
  for (auto& [v, m] : ins) in_values.push_back(v), maps.push_back(m);
  for (auto& [v, m] : outs) out_values.push_back(v), maps.push_back(m), types.push_back(v.getType());
  auto op = b.create<mlir::linalg::GenericOp>(
      loc, types, in_values, out_values, maps, space.iterators,
      [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) {
        nb.create<mlir::linalg::YieldOp>(nloc, body(nb, nloc, args));
      });
  return llvm::SmallVector<Value>(op.getResults());
}

// An init tensor: uninitialized (parallel results), or filled with `value`
// (a reduction's identity; a splat constant, not a fill generic, so that it
// fuses into nothing and counts as no kernel).
Value empty(mlir::OpBuilder& b, mlir::Location loc, llvm::ArrayRef<int64_t> shape, mlir::Type element) {
  return b.create<mlir::tensor::EmptyOp>(loc, shape, element);
}
Value filled(mlir::OpBuilder& b, mlir::Location loc, llvm::ArrayRef<int64_t> shape, mlir::Attribute value) {
  auto type = mlir::RankedTensorType::get(shape, mlir::cast<mlir::TypedAttr>(value).getType());
  return b.create<mlir::arith::ConstantOp>(loc, mlir::DenseElementsAttr::get(type, value));
}

// `v` reshaped to the static `to` (same element count) with
// tensor.collapse_shape and/or tensor.expand_shape: dims are grouped where
// the running element counts of both shapes meet; each group collapses to
// one dim, which expands into the target's dims.
Value reshape(mlir::OpBuilder& b, mlir::Location loc, Value v, mlir::RankedTensorType to) {
  auto from = mlir::cast<mlir::RankedTensorType>(v.getType());
  if (from == to) return v;
  llvm::ArrayRef<int64_t> s = from.getShape(), t = to.getShape();
  if (s.empty()) return b.create<mlir::tensor::ExpandShapeOp>(loc, to, v, llvm::ArrayRef<mlir::ReassociationIndices>{});
  if (t.empty())
    return b.create<mlir::tensor::CollapseShapeOp>(loc, to, v, llvm::ArrayRef<mlir::ReassociationIndices>{});
  llvm::SmallVector<mlir::ReassociationIndices> gs, gt;
  Shape64 mid;
  size_t i = 0, j = 0;
  while (i < s.size() || j < t.size()) {
    mlir::ReassociationIndices a, c;
    int64_t ps = 1, pt = 1;
    if (i < s.size()) a.push_back(i), ps *= s[i++];
    if (j < t.size()) c.push_back(j), pt *= t[j++];
    while (ps != pt) {
      if (ps < pt && i < s.size()) a.push_back(i), ps *= s[i++];
      else if (pt < ps && j < t.size()) c.push_back(j), pt *= t[j++];
      else fail<IrError>("reshape of {} elements to {} elements", from.getNumElements(), to.getNumElements());
    }
    while (i < s.size() && s[i] == 1) a.push_back(i++);
    while (j < t.size() && t[j] == 1) c.push_back(j++);
    if (a.empty() || c.empty()) {  // trailing 1s on one side only join the last group
      for (int64_t k : a) gs.back().push_back(k);
      for (int64_t k : c) gt.back().push_back(k);
      continue;
    }
    gs.push_back(a), gt.push_back(c), mid.push_back(ps);
  }
  Value m = v;
  if (mid.size() != s.size())
    m = b.create<mlir::tensor::CollapseShapeOp>(loc, mlir::RankedTensorType::get(mid, from.getElementType()), v, gs);
  if (mid.size() != t.size()) m = b.create<mlir::tensor::ExpandShapeOp>(loc, to, m, gt);
  return m;
}

// ---- scalar pieces of reductions and normalizations ----

mlir::arith::FastMathFlagsAttr reassoc(mlir::OpBuilder& b) {
  return mlir::arith::FastMathFlagsAttr::get(b.getContext(), mlir::arith::FastMathFlags::reassoc);
}

// How a reduction combines (with fastmath reassoc on floats, so that LLVM
// vectorizes the loop: the order of the additions differs from eager's).
enum class Combine { Add, Mul, Max, Min, Or, And };

mlir::Attribute identity(Combine c, mlir::Type t) {
  mlir::Builder b(t.getContext());
  constexpr double inf = std::numeric_limits<double>::infinity();
  if (mlir::isa<mlir::FloatType>(t)) {
    switch (c) {
      case Combine::Add: return b.getFloatAttr(t, 0.0);
      case Combine::Mul: return b.getFloatAttr(t, 1.0);
      case Combine::Max: return b.getFloatAttr(t, -inf);
      case Combine::Min: return b.getFloatAttr(t, inf);
      default: break;
    }
  }
  unsigned width = t.getIntOrFloatBitWidth();
  switch (c) {
    case Combine::Add: case Combine::Or: return b.getIntegerAttr(t, 0);
    case Combine::Mul: return b.getIntegerAttr(t, 1);
    case Combine::And: return b.getIntegerAttr(t, llvm::APInt::getAllOnes(width));
    case Combine::Max: return b.getIntegerAttr(t, llvm::APInt::getSignedMinValue(width));
    case Combine::Min: return b.getIntegerAttr(t, llvm::APInt::getSignedMaxValue(width));
  }
  return {};
}

Value combine(mlir::OpBuilder& b, mlir::Location loc, Combine c, Value acc, Value x) {
  if (mlir::isa<mlir::FloatType>(acc.getType())) {
    switch (c) {
      case Combine::Add: return b.create<mlir::arith::AddFOp>(loc, acc, x, reassoc(b));
      case Combine::Mul: return b.create<mlir::arith::MulFOp>(loc, acc, x, reassoc(b));
      case Combine::Max: return b.create<mlir::arith::MaximumFOp>(loc, acc, x, reassoc(b));
      case Combine::Min: return b.create<mlir::arith::MinimumFOp>(loc, acc, x, reassoc(b));
      default: break;
    }
  }
  switch (c) {
    case Combine::Add: return b.create<mlir::arith::AddIOp>(loc, acc, x);
    case Combine::Mul: return b.create<mlir::arith::MulIOp>(loc, acc, x);
    case Combine::Max: return b.create<mlir::arith::MaxSIOp>(loc, acc, x);
    case Combine::Min: return b.create<mlir::arith::MinSIOp>(loc, acc, x);
    case Combine::Or: return b.create<mlir::arith::OrIOp>(loc, acc, x);
    case Combine::And: return b.create<mlir::arith::AndIOp>(loc, acc, x);
  }
  return {};
}

// Short names for the arithmetic of bodies below.
struct Arith {
  mlir::OpBuilder& b;
  mlir::Location loc;
  mlir::Type t;
  Value c(double v) const { return fconst(b, loc, t, v); }
  Value add(Value x, Value y) const { return b.create<mlir::arith::AddFOp>(loc, x, y); }
  Value sub(Value x, Value y) const { return b.create<mlir::arith::SubFOp>(loc, x, y); }
  Value mul(Value x, Value y) const { return b.create<mlir::arith::MulFOp>(loc, x, y); }
  Value div(Value x, Value y) const { return b.create<mlir::arith::DivFOp>(loc, x, y); }
  Value exp(Value x) const { return b.create<mlir::math::ExpOp>(loc, x); }
  // exp(x - m) for m at least every x of the row (its max, or its
  // logsumexp): the argument is <= 0 or NaN, which codegen's exp uses
  // (no clamp against overflow).
  Value exp_below(Value x, Value m) const {
    auto e = b.create<mlir::math::ExpOp>(loc, sub(x, m));
    e->setAttr("kiln.nonpositive", b.getUnitAttr());
    return e;
  }
  Value log(Value x) const { return b.create<mlir::math::LogOp>(loc, x); }
  Value sqrt(Value x) const { return b.create<mlir::math::SqrtOp>(loc, x); }
  Value max(Value x, Value y) const { return b.create<mlir::arith::MaximumFOp>(loc, x, y); }
  Value select(Value p, Value x, Value y) const { return b.create<mlir::arith::SelectOp>(loc, p, x, y); }
  Value eq(Value x, Value y) const { return b.create<mlir::arith::CmpFOp>(loc, mlir::arith::CmpFPredicate::OEQ, x, y); }
  Value is_inf(Value x) const {
    return eq(b.create<mlir::math::AbsFOp>(loc, x), c(std::numeric_limits<double>::infinity()));
  }
  Value cvt(Value x) const { return convert(b, loc, x, t); }
  // The loop index of generic dim `d`, as an i64.
  Value index(unsigned d) const {
    Value i = b.create<mlir::linalg::IndexOp>(loc, d);
    return b.create<mlir::arith::IndexCastOp>(loc, b.getI64Type(), i);
  }
};

// log(sum(exp(x))) from the max m and s = sum(exp(x - m)); an infinite max
// is the answer itself (eager's rule: all -inf gives -inf, any +inf gives +inf).
Value logsumexp_of(const Arith& a, Value m, Value s) { return a.select(a.is_inf(m), m, a.add(m, a.log(s))); }

// The reduced dims of a `dims`/`keepdim` op over an operand of rank `rank`
// (no dims: all of them).
llvm::SmallVector<bool> reduced_dims(mlir::Operation* op, int64_t rank) {
  llvm::SmallVector<bool> mask(rank, false);
  auto dims = op->getAttrOfType<mlir::DenseI64ArrayAttr>("dims");
  if (!dims || dims.empty()) return llvm::SmallVector<bool>(rank, true);
  for (int64_t d : dims.asArrayRef())
    if (rank > 0) mask[d < 0 ? d + rank : d] = true;
  return mask;
}

int64_t int_attr(mlir::Operation* op, llvm::StringRef name, int64_t otherwise = 0) {
  auto a = op->getAttrOfType<mlir::IntegerAttr>(name);
  return a ? a.getInt() : otherwise;
}
double float_attr(mlir::Operation* op, llvm::StringRef name) {
  return mlir::cast<mlir::FloatAttr>(op->getAttr(name)).getValueAsDouble();
}
bool bool_attr(mlir::Operation* op, llvm::StringRef name) {
  auto a = op->getAttrOfType<mlir::BoolAttr>(name);
  return a && a.getValue();
}
int64_t wrap(int64_t d, int64_t n) { return d < 0 ? d + n : d; }

mlir::RankedTensorType type_of(Value v) { return mlir::cast<mlir::RankedTensorType>(v.getType()); }
mlir::RankedTensorType result_type(mlir::Operation* op, unsigned i = 0) { return type_of(op->getResult(i)); }

// ---- the ops with their own structure ----

struct Structured {
  // Why the op does not lower (empty: it does); operands and results are
  // static tensors of compiled element types when it is called.
  std::function<std::string(mlir::Operation*)> check;
  // Values for each of the op's results.
  std::function<llvm::SmallVector<Value>(mlir::OpBuilder&, mlir::Operation*)> lower;
};

// A plain reduction over `dims` with `keepdim`: one generic, each element
// converted to the result type (and, for mean, `scale_by_count`: multiplied
// by 1/count, so that no second generic divides the sum).
Structured reduction(Combine c, bool float_only = false, bool scale_by_count = false) {
  Structured s;
  s.check = [c, float_only](mlir::Operation* op) -> std::string {
    mlir::Type re = result_type(op).getElementType();
    mlir::Type in = type_of(op->getOperand(0)).getElementType();
    if (type_of(op->getOperand(0)).getNumElements() == 0) return "empty reductions are not compiled";
    bool logical = c == Combine::Or || c == Combine::And;
    if (logical != re.isInteger(1)) return "unexpected result dtype";
    if (float_only && !is_float(re)) return "only float32 and float64 results are compiled";
    if (!logical && in.isInteger(1) && (c == Combine::Max || c == Combine::Min)) return "bool amax/amin is not compiled";
    return {};
  };
  s.lower = [c, scale_by_count](mlir::OpBuilder& b, mlir::Operation* op) -> llvm::SmallVector<Value> {
    mlir::Location loc = op->getLoc();
    Value x = op->getOperand(0);
    auto rt = result_type(op);
    mlir::Type re = rt.getElementType();
    Space space(b.getContext(), type_of(x).getShape(), reduced_dims(op, type_of(x).getRank()));
    double inv = 1.0 / static_cast<double>(space.count());
    Value init = filled(b, loc, space.kept_shape(), identity(c, re));
    Value r = generic(b, loc, space, {{x, space.full()}}, {{init, space.kept()}},
                      [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                        Value v = convert(nb, nloc, args[0], re);
                        if (scale_by_count) v = nb.create<mlir::arith::MulFOp>(nloc, v, fconst(nb, nloc, re, inv));
                        return {combine(nb, nloc, c, args[1], v)};
                      })[0];
    return {reshape(b, loc, r, rt)};
  };
  return s;
}

// max/min(dim) (values and indices), argmax/argmin (indices; no dim: of the
// flattened input). The first extreme wins a tie and NaN beats every number,
// as eager: the loop walks the reduced dims in order and only a strictly
// better element (or a first NaN) replaces the running one. Int64 indices.
Structured arg_extreme(bool max, bool values) {
  Structured s;
  s.check = [](mlir::Operation* op) -> std::string {
    auto in = type_of(op->getOperand(0));
    if (in.getNumElements() == 0) return "empty reductions are not compiled";
    if (in.getElementType().isInteger(1)) return "bool arguments are not compiled";
    return {};
  };
  s.lower = [max, values](mlir::OpBuilder& b, mlir::Operation* op) -> llvm::SmallVector<Value> {
    mlir::Location loc = op->getLoc();
    Value x = op->getOperand(0);
    auto xt = type_of(x);
    mlir::Type t = xt.getElementType();
    int64_t rank = xt.getRank();
    auto dim_attr = op->getAttrOfType<mlir::IntegerAttr>("dim");
    llvm::SmallVector<bool> mask(rank, !dim_attr);
    if (dim_attr && rank > 0) mask[wrap(dim_attr.getInt(), rank)] = true;
    Space red(b.getContext(), xt.getShape(), mask);
    Value v0 = filled(b, loc, red.kept_shape(), identity(max ? Combine::Max : Combine::Min, t));
    Value i0 = filled(b, loc, red.kept_shape(), b.getI64IntegerAttr(0));
    auto r = generic(b, loc, red, {{x, red.full()}}, {{v0, red.kept()}, {i0, red.kept()}},
                     [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                       Arith a{nb, nloc, t};
                       Value xv = args[0], v = args[1];
                       // the row-major index of the element within the reduced dims
                       Value k = nb.create<mlir::arith::ConstantOp>(nloc, nb.getI64IntegerAttr(0));
                       for (int64_t d = 0; d < rank; ++d) {
                         if (!mask[d]) continue;
                         k = nb.create<mlir::arith::MulIOp>(
                             nloc, k, nb.create<mlir::arith::ConstantOp>(nloc, nb.getI64IntegerAttr(xt.getDimSize(d))));
                         k = nb.create<mlir::arith::AddIOp>(nloc, k, a.index(red.loop[d]));
                       }
                       Value better;
                       if (mlir::isa<mlir::FloatType>(t)) {
                         using P = mlir::arith::CmpFPredicate;
                         better = nb.create<mlir::arith::CmpFOp>(nloc, max ? P::OGT : P::OLT, xv, v);
                         Value first_nan = nb.create<mlir::arith::AndIOp>(
                             nloc, nb.create<mlir::arith::CmpFOp>(nloc, P::UNO, xv, xv),
                             nb.create<mlir::arith::CmpFOp>(nloc, P::ORD, v, v));
                         better = nb.create<mlir::arith::OrIOp>(nloc, better, first_nan);
                       } else {
                         using P = mlir::arith::CmpIPredicate;
                         better = nb.create<mlir::arith::CmpIOp>(nloc, max ? P::sgt : P::slt, xv, v);
                       }
                       // the first element always replaces the identity (which it may equal)
                       Value first = nb.create<mlir::arith::CmpIOp>(
                           nloc, mlir::arith::CmpIPredicate::eq, k, nb.create<mlir::arith::ConstantOp>(nloc, nb.getI64IntegerAttr(0)));
                       better = nb.create<mlir::arith::OrIOp>(nloc, better, first);
                       return {a.select(better, xv, v), a.select(better, k, args[2])};
                     });
    llvm::SmallVector<Value> out;
    if (values) out.push_back(reshape(b, loc, r[0], result_type(op, 0)));
    out.push_back(reshape(b, loc, r[1], result_type(op, values ? 1 : 0)));
    return out;
  };
  return s;
}

// The mean over `space`'s reduced dims, as a kept-shape tensor.
Value mean_of(mlir::OpBuilder& b, mlir::Location loc, const Space& space, Value x, mlir::Type t) {
  Value init = filled(b, loc, space.kept_shape(), identity(Combine::Add, t));
  double inv = 1.0 / static_cast<double>(space.count());
  return generic(b, loc, space, {{x, space.full()}}, {{init, space.kept()}},
                 [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                   Arith a{nb, nloc, t};
                   return {combine(nb, nloc, Combine::Add, args[1], a.mul(a.cvt(args[0]), a.c(inv)))};
                 })[0];
}

std::string float_result(mlir::Operation* op) {
  for (Value r : op->getResults())
    if (!is_float(type_of(r).getElementType())) return "only float32 and float64 results are compiled";
  return {};
}
std::string nonempty_float(mlir::Operation* op) {
  if (type_of(op->getOperand(0)).getNumElements() == 0) return "empty tensors are not compiled here";
  return float_result(op);
}

// var / std: the mean, then the mean squared deviation in a second pass
// (two generics; no E[x^2] - E[x]^2 cancellation), then a sqrt for std.
Structured variance(bool root) {
  return {nonempty_float, [root](mlir::OpBuilder& b, mlir::Operation* op) -> llvm::SmallVector<Value> {
            mlir::Location loc = op->getLoc();
            Value x = op->getOperand(0);
            auto rt = result_type(op);
            mlir::Type t = rt.getElementType();
            Space space(b.getContext(), type_of(x).getShape(), reduced_dims(op, type_of(x).getRank()));
            Value m = mean_of(b, loc, space, x, t);
            // PyTorch divides by max(n - correction, 0): inf or NaN, not an error.
            double denom = static_cast<double>(std::max<int64_t>(space.count() - int_attr(op, "correction"), 0));
            Value init = filled(b, loc, space.kept_shape(), identity(Combine::Add, t));
            Value v = generic(b, loc, space, {{x, space.full()}, {m, space.kept()}}, {{init, space.kept()}},
                              [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                                Arith a{nb, nloc, t};
                                Value d = a.sub(a.cvt(args[0]), args[1]);
                                return {combine(nb, nloc, Combine::Add, args[2], a.div(a.mul(d, d), a.c(denom)))};
                              })[0];
            if (root) {
              Space out = Space::parallel(b.getContext(), space.kept_shape());
              v = generic(b, loc, out, {{v, out.full()}}, {{empty(b, loc, out.shape, t), out.full()}},
                          [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                            return {Arith{nb, nloc, t}.sqrt(args[0])};
                          })[0];
            }
            return {reshape(b, loc, v, rt)};
          }};
}

// The running max that softmax and logsumexp subtract before exp. A NaN in
// the row makes its exp(x - m) NaN, so the sum and the whole row come out NaN
// whatever m is; that frees the max from NaN and signed-zero ordering
// (nnan, nsz): one vmaxps per vector instead of the six of IEEE maximum.
Value shift_max(mlir::OpBuilder& b, mlir::Location loc, Value acc, Value x) {
  if (!mlir::isa<mlir::FloatType>(acc.getType())) return combine(b, loc, Combine::Max, acc, x);
  using F = mlir::arith::FastMathFlags;
  return b.create<mlir::arith::MaximumFOp>(loc, acc, x,
                                           mlir::arith::FastMathFlagsAttr::get(b.getContext(), F::reassoc | F::nnan | F::nsz));
}

// The max m of x over `space`'s reduced dims and s = sum(exp(x - m)), as
// two one-result reductions. (Not one online pass: its coupled (m, s)
// recurrence is not a reduction LLVM vectorizes, and a generic with several
// reduction results is not vectorized by the current pipeline either; this
// measured 11.5 ms against 75 ms for the online form, softmax of 2048x4096
// float32 on one core.) A row of -inf only gives m = -inf and NaN, a +inf
// element NaN, as eager.
std::pair<Value, Value> softmax_stats(mlir::OpBuilder& b, mlir::Location loc, const Space& space, Value x,
                                      mlir::Type t) {
  Value m0 = filled(b, loc, space.kept_shape(), identity(Combine::Max, t));
  Value m = generic(b, loc, space, {{x, space.full()}}, {{m0, space.kept()}},
                    [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                      return {shift_max(nb, nloc, args[1], convert(nb, nloc, args[0], t))};
                    })[0];
  Value s0 = filled(b, loc, space.kept_shape(), identity(Combine::Add, t));
  Value sum = generic(b, loc, space, {{x, space.full()}, {m, space.kept()}}, {{s0, space.kept()}},
                      [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                        Arith a{nb, nloc, t};
                        return {combine(nb, nloc, Combine::Add, args[2], a.exp_below(a.cvt(args[0]), args[1]))};
                      })[0];
  return {m, sum};
}

Structured logsumexp() {
  return {nonempty_float, [](mlir::OpBuilder& b, mlir::Operation* op) -> llvm::SmallVector<Value> {
            mlir::Location loc = op->getLoc();
            Value x = op->getOperand(0);
            auto rt = result_type(op);
            mlir::Type t = rt.getElementType();
            Space space(b.getContext(), type_of(x).getShape(), reduced_dims(op, type_of(x).getRank()));
            auto [m, s] = softmax_stats(b, loc, space, x, t);
            Space out = Space::parallel(b.getContext(), space.kept_shape());
            Value r = generic(b, loc, out, {{m, out.full()}, {s, out.full()}},
                              {{empty(b, loc, out.shape, t), out.full()}},
                              [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                                return {logsumexp_of(Arith{nb, nloc, t}, args[0], args[1])};
                              })[0];
            return {reshape(b, loc, r, rt)};
          }};
}

// softmax / log_softmax along `dim`: the statistics (two reductions), then
// one elementwise generic. softmax's sum pass also writes e = exp(x - m),
// which the last generic scales in place by 1/s (hoisted out of the row):
// one exp per element instead of two (softmax is compute-bound on exp; the
// sum's accumulator stays in a register: codegen/promote_accumulators.h).
Structured softmax(bool log) {
  return {float_result, [log](mlir::OpBuilder& b, mlir::Operation* op) -> llvm::SmallVector<Value> {
            mlir::Location loc = op->getLoc();
            Value x = op->getOperand(0);
            auto rt = result_type(op);
            mlir::Type t = rt.getElementType();
            llvm::SmallVector<bool> mask(rt.getRank(), false);
            if (rt.getRank() > 0) mask[wrap(int_attr(op, "dim"), rt.getRank())] = true;
            Space red(b.getContext(), rt.getShape(), mask);
            Space out = Space::parallel(b.getContext(), rt.getShape());
            out.reduced = mask;  // for kept(): the statistics' map (the loops stay parallel)
            if (log) {
              auto [m, s] = softmax_stats(b, loc, red, x, t);
              return generic(b, loc, out, {{x, out.full()}, {m, out.kept()}, {s, out.kept()}},
                             {{empty(b, loc, rt.getShape(), t), out.full()}},
                             [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                               Arith a{nb, nloc, t};
                               return {a.sub(a.sub(a.cvt(args[0]), args[1]), a.log(args[2]))};
                             });
            }
            Value m0 = filled(b, loc, red.kept_shape(), identity(Combine::Max, t));
            Value m = generic(b, loc, red, {{x, red.full()}}, {{m0, red.kept()}},
                              [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                                return {shift_max(nb, nloc, args[1], convert(nb, nloc, args[0], t))};
                              })[0];
            Value s0 = filled(b, loc, red.kept_shape(), identity(Combine::Add, t));
            auto se = generic(b, loc, red, {{x, red.full()}, {m, red.kept()}},
                              {{s0, red.kept()}, {empty(b, loc, rt.getShape(), t), red.full()}},
                              [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                                Arith a{nb, nloc, t};
                                Value e = a.exp_below(a.cvt(args[0]), args[1]);
                                return {combine(nb, nloc, Combine::Add, args[2], e), e};
                              });
            return generic(b, loc, out, {{se[0], out.kept()}}, {{se[1], out.full()}},
                           [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                             Arith a{nb, nloc, t};
                             return {a.mul(args[1], a.div(a.c(1.0), args[0]))};
                           });
          }};
}

// native_layer_norm over the trailing normalized dims: the mean, the mean
// squared deviation (two one-result reductions, as var; eager's two-pass
// arithmetic), then one elementwise generic. (One two-result pass of shifted
// sums measured 27 ms against 6 ms here, 2048x4096 float32: the current
// pipeline does not vectorize a generic with several reduction results.)
Structured layer_norm() {
  Structured s;
  s.check = [](mlir::Operation* op) -> std::string {
    auto ln = mlir::cast<kiln::ir::NativeLayerNormOp>(op);
    if (ln.getNormalizedShape().empty()) return "an empty normalized_shape is not compiled";
    if (type_of(ln.getX()).getNumElements() == 0) return "empty tensors are not compiled here";
    return float_result(op);
  };
  s.lower = [](mlir::OpBuilder& b, mlir::Operation* op) -> llvm::SmallVector<Value> {
    auto ln = mlir::cast<kiln::ir::NativeLayerNormOp>(op);
    mlir::Location loc = op->getLoc();
    Value x = ln.getX();
    auto rt = result_type(op);
    mlir::Type t = rt.getElementType();
    int64_t k = static_cast<int64_t>(ln.getNormalizedShape().size());
    llvm::SmallVector<bool> mask(rt.getRank(), false);
    for (int64_t d = rt.getRank() - k; d < rt.getRank(); ++d) mask[d] = true;
    Space red(b.getContext(), rt.getShape(), mask);
    double n = static_cast<double>(red.count()), eps = ln.getEps().convertToDouble();
    Value mean = mean_of(b, loc, red, x, t);
    Value var = generic(b, loc, red, {{x, red.full()}, {mean, red.kept()}},
                        {{filled(b, loc, red.kept_shape(), identity(Combine::Add, t)), red.kept()}},
                        [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                          Arith a{nb, nloc, t};
                          Value d = a.sub(a.cvt(args[0]), args[1]);
                          return {combine(nb, nloc, Combine::Add, args[2], a.mul(a.mul(d, d), a.c(1.0 / n)))};
                        })[0];
    Space out = Space::parallel(b.getContext(), rt.getShape());
    out.reduced = mask;  // for kept(): the statistics' map (the loops stay parallel)
    llvm::SmallVector<std::pair<Value, AffineMap>> ins = {{x, out.full()}, {mean, out.kept()}, {var, out.kept()}};
    Value w = ln.getWeight(), bias = ln.getBias();
    if (w) ins.push_back({w, out.broadcast(type_of(w).getShape())});
    if (bias) ins.push_back({bias, out.broadcast(type_of(bias).getShape())});
    return generic(b, loc, out, ins, {{empty(b, loc, rt.getShape(), t), out.full()}},
                   [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                     Arith a{nb, nloc, t};
                     Value rstd = a.div(a.c(1.0), a.sqrt(a.add(args[2], a.c(eps))));
                     Value y = a.mul(a.sub(a.cvt(args[0]), args[1]), rstd);
                     size_t i = 3;
                     if (w) y = a.mul(y, a.cvt(args[i++]));
                     if (bias) y = a.add(y, a.cvt(args[i++]));
                     return {y};
                   });
  };
  return s;
}

// A loss that is a function of its operands elementwise (broadcast together),
// reduced by `reduction` (none, mean, sum) in the same generic. `operands`
// lists them with null for an absent optional one; `loss` gets their scalars
// converted to the result type (null where absent).
using LossOperands = std::function<llvm::SmallVector<Value>(mlir::Operation*)>;
using LossBody = std::function<Value(const Arith&, llvm::ArrayRef<Value>)>;
Structured pointwise_loss(LossOperands operands, LossBody loss) {
  Structured s;
  s.check = [](mlir::Operation* op) -> std::string {
    llvm::StringRef red = op->getAttrOfType<mlir::StringAttr>("reduction").getValue();
    if (red != "mean" && red != "sum" && red != "none") return "unknown reduction";
    return float_result(op);
  };
  s.lower = [operands, loss](mlir::OpBuilder& b, mlir::Operation* op) -> llvm::SmallVector<Value> {
    mlir::Location loc = op->getLoc();
    mlir::Type t = result_type(op).getElementType();
    llvm::StringRef red = op->getAttrOfType<mlir::StringAttr>("reduction").getValue();
    llvm::SmallVector<Value> vals = operands(op);
    Shape64 shape;  // the broadcast shape, aligned at the trailing dims
    for (Value v : vals) {
      if (!v) continue;
      auto vs = type_of(v).getShape();
      if (vs.size() > shape.size()) shape.insert(shape.begin(), vs.size() - shape.size(), 1);
      for (size_t i = 0; i < vs.size(); ++i)
        shape[shape.size() - vs.size() + i] = std::max(shape[shape.size() - vs.size() + i], vs[i]);
    }
    Space sp(b.getContext(), shape, llvm::SmallVector<bool>(shape.size(), red != "none"));
    double scale = red == "mean" ? 1.0 / static_cast<double>(std::max<int64_t>(sp.count(), 1)) : 1.0;
    llvm::SmallVector<std::pair<Value, AffineMap>> ins;
    for (Value v : vals)
      if (v) ins.push_back({v, sp.broadcast(type_of(v).getShape())});
    Value init = red == "none" ? empty(b, loc, shape, t) : filled(b, loc, {}, identity(Combine::Add, t));
    return generic(b, loc, sp, ins, {{init, sp.kept()}},
                   [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                     Arith a{nb, nloc, t};
                     llvm::SmallVector<Value> scalars;
                     size_t k = 0;
                     for (Value v : vals) scalars.push_back(v ? a.cvt(args[k++]) : Value());
                     Value l = loss(a, scalars);
                     if (red == "none") return {l};
                     return {combine(nb, nloc, Combine::Add, args.back(), a.mul(l, a.c(scale)))};
                   });
  };
  return s;
}

Structured mse_loss() {
  return pointwise_loss([](mlir::Operation* op) { return llvm::SmallVector<Value>(op->getOperands()); },
                        [](const Arith& a, llvm::ArrayRef<Value> v) {
                          Value d = a.sub(v[0], v[1]);
                          return a.mul(d, d);
                        });
}

// (1 - t) x + lw softplus(-x), lw = 1 + (pos_weight - 1) t, times weight;
// softplus(-x) = log1p(exp(-|x|)) + max(-x, 0), as eager writes it.
Structured bce_with_logits() {
  return pointwise_loss(
      [](mlir::Operation* op) {
        auto o = mlir::cast<kiln::ir::BinaryCrossEntropyWithLogitsOp>(op);
        return llvm::SmallVector<Value>{o.getInput(), o.getTarget(), o.getWeight(), o.getPosWeight()};
      },
      [](const Arith& a, llvm::ArrayRef<Value> v) {
        Value x = v[0], t = v[1];
        Value neg_abs = a.b.create<mlir::arith::NegFOp>(a.loc, a.b.create<mlir::math::AbsFOp>(a.loc, x));
        Value sp = a.add(a.b.create<mlir::math::Log1pOp>(a.loc, a.exp(neg_abs)),
                         a.max(a.b.create<mlir::arith::NegFOp>(a.loc, x), a.c(0)));
        Value lw = v[3] ? a.add(a.mul(a.sub(v[3], a.c(1)), t), a.c(1)) : Value();
        Value l = a.add(a.mul(a.sub(a.c(1), t), x), lw ? a.mul(lw, sp) : sp);
        return v[2] ? a.mul(l, v[2]) : l;
      });
}

// ---- layout ops: generics whose input map does the work, and reshapes ----

// The result is the operand with its dims permuted by `dims`.
Structured permute() {
  return {[](mlir::Operation*) { return std::string(); },
          [](mlir::OpBuilder& b, mlir::Operation* op) -> llvm::SmallVector<Value> {
            auto rt = result_type(op);
            auto dims = op->getAttrOfType<mlir::DenseI64ArrayAttr>("dims").asArrayRef();
            Space out = Space::parallel(b.getContext(), rt.getShape());
            llvm::SmallVector<mlir::AffineExpr> e(dims.size());
            for (size_t k = 0; k < dims.size(); ++k) e[wrap(dims[k], rt.getRank())] = out.dim(static_cast<int64_t>(k));
            return generic(b, op->getLoc(), out, {{op->getOperand(0), out.map(e)}},
                           {{empty(b, op->getLoc(), rt.getShape(), rt.getElementType()), out.full()}},
                           [](mlir::OpBuilder&, mlir::Location, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                             return {args[0]};
                           });
          }};
}

// Index `start + step * i` into a dim of `size` from loop index `i`. A bare
// `i` (start 0, step 1) into a larger dim would make linalg infer the loop's
// range from that operand: it becomes `i mod size` (the same index; LLVM drops
// the remainder of an induction variable known to be smaller).
mlir::AffineExpr offset_index(mlir::AffineExpr i, int64_t start, int64_t step, int64_t size, int64_t loop_size) {
  if (start == 0 && step == 1 && loop_size != size) return i % size;
  return i * step + start;
}

// slice / narrow / select: the result reads the operand at start + step * i
// along `dim` (select drops the dim and reads a constant index).
Structured pick(llvm::StringRef kind) {
  return {[](mlir::Operation*) { return std::string(); },
          [kind = kind.str()](mlir::OpBuilder& b, mlir::Operation* op) -> llvm::SmallVector<Value> {
            auto rt = result_type(op);
            Value x = op->getOperand(0);
            llvm::ArrayRef<int64_t> in = type_of(x).getShape();
            int64_t rank = static_cast<int64_t>(in.size());
            int64_t dim = wrap(int_attr(op, "dim"), rank), size = in[dim];
            Space out = Space::parallel(b.getContext(), rt.getShape());
            llvm::SmallVector<mlir::AffineExpr> e;
            for (int64_t d = 0; d < rank; ++d) {
              if (d != dim) {
                e.push_back(out.dim(kind == "select" && d > dim ? d - 1 : d));
                continue;
              }
              if (kind == "select") {
                e.push_back(mlir::getAffineConstantExpr(wrap(int_attr(op, "index"), size), b.getContext()));
              } else if (kind == "narrow") {
                e.push_back(offset_index(out.dim(d), wrap(int_attr(op, "start"), size), 1, size, rt.getDimSize(d)));
              } else {  // slice's clamped range, as eager's slice_range
                int64_t start = std::clamp<int64_t>(wrap(int_attr(op, "start", 0), size), 0, size);
                e.push_back(offset_index(out.dim(d), start, int_attr(op, "step", 1), size, rt.getDimSize(d)));
              }
            }
            return generic(b, op->getLoc(), out, {{x, out.map(e)}},
                           {{empty(b, op->getLoc(), rt.getShape(), rt.getElementType()), out.full()}},
                           [](mlir::OpBuilder&, mlir::Location, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                             return {args[0]};
                           });
          }};
}

Structured reshape_op() {
  return {[](mlir::Operation* op) -> std::string {
            if (type_of(op->getOperand(0)).getNumElements() == 0) return "empty tensors are not compiled here";
            return {};
          },
          [](mlir::OpBuilder& b, mlir::Operation* op) -> llvm::SmallVector<Value> {
            return {reshape(b, op->getLoc(), op->getOperand(0), result_type(op))};
          }};
}

// split / split_with_sizes / chunk: the pieces lie one after the other along
// `dim`; each is a generic reading at its offset.
Structured split() {
  return {[](mlir::Operation*) { return std::string(); },
          [](mlir::OpBuilder& b, mlir::Operation* op) -> llvm::SmallVector<Value> {
            Value x = op->getOperand(0);
            int64_t rank = type_of(x).getRank(), dim = wrap(int_attr(op, "dim"), rank), offset = 0;
            llvm::SmallVector<Value> pieces;
            for (Value r : op->getResults()) {
              auto rt = type_of(r);
              Space out = Space::parallel(b.getContext(), rt.getShape());
              llvm::SmallVector<mlir::AffineExpr> e;
              for (int64_t d = 0; d < rank; ++d)
                e.push_back(d == dim ? offset_index(out.dim(d), offset, 1, type_of(x).getDimSize(d), rt.getDimSize(d))
                                     : out.dim(d));
              pieces.push_back(generic(b, op->getLoc(), out, {{x, out.map(e)}},
                                       {{empty(b, op->getLoc(), rt.getShape(), rt.getElementType()), out.full()}},
                                       [](mlir::OpBuilder&, mlir::Location, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                                         return {args[0]};
                                       })[0]);
              offset += rt.getDimSize(dim);
            }
            return pieces;
          }};
}

// broadcast_tensors: each operand broadcast to its result's shape.
Structured broadcast_tensors() {
  return {[](mlir::Operation*) { return std::string(); },
          [](mlir::OpBuilder& b, mlir::Operation* op) -> llvm::SmallVector<Value> {
            llvm::SmallVector<Value> out;
            for (auto [x, r] : llvm::zip(op->getOperands(), op->getResults())) {
              auto rt = type_of(r);
              Space sp = Space::parallel(b.getContext(), rt.getShape());
              out.push_back(generic(b, op->getLoc(), sp, {{x, sp.broadcast(type_of(x).getShape())}},
                                    {{empty(b, op->getLoc(), rt.getShape(), rt.getElementType()), sp.full()}},
                                    [](mlir::OpBuilder&, mlir::Location, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                                      return {args[0]};
                                    })[0]);
            }
            return out;
          }};
}

// masked_fill(x, mask): value where mask, else x, broadcast.
Structured masked_fill() {
  return {[](mlir::Operation* op) -> std::string {
            if (!scalar_attr(op->getAttr("value"))) return "fill value is not a number";
            return {};
          },
          [](mlir::OpBuilder& b, mlir::Operation* op) -> llvm::SmallVector<Value> {
            auto rt = result_type(op);
            mlir::Type t = rt.getElementType();
            double value = *scalar_attr(op->getAttr("value"));
            Value x = op->getOperand(0), mask = op->getOperand(1);
            Space sp = Space::parallel(b.getContext(), rt.getShape());
            return generic(b, op->getLoc(), sp,
                           {{x, sp.broadcast(type_of(x).getShape())}, {mask, sp.broadcast(type_of(mask).getShape())}},
                           {{empty(b, op->getLoc(), rt.getShape(), t), sp.full()}},
                           [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                             Value v = nb.create<mlir::arith::ConstantOp>(nloc, mlir::cast<mlir::TypedAttr>(splat_value(t, value)));
                             return {nb.create<mlir::arith::SelectOp>(nloc, convert(nb, nloc, args[1], nb.getI1Type()), v,
                                                                      convert(nb, nloc, args[0], t))};
                           });
          }};
}

// one_hot(index): result[..., c] = (index[...] == c).
Structured one_hot() {
  return {[](mlir::Operation*) { return std::string(); },
          [](mlir::OpBuilder& b, mlir::Operation* op) -> llvm::SmallVector<Value> {
            auto rt = result_type(op);
            Value index = op->getOperand(0);
            Space sp = Space::parallel(b.getContext(), rt.getShape());
            llvm::SmallVector<mlir::AffineExpr> e;
            for (int64_t d = 0; d + 1 < rt.getRank(); ++d) e.push_back(sp.dim(d));
            return generic(b, op->getLoc(), sp, {{index, sp.map(e)}},
                           {{empty(b, op->getLoc(), rt.getShape(), rt.getElementType()), sp.full()}},
                           [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                             Arith a{nb, nloc, rt.getElementType()};
                             Value hit = nb.create<mlir::arith::CmpIOp>(
                                 nloc, mlir::arith::CmpIPredicate::eq, a.index(static_cast<unsigned>(rt.getRank() - 1)),
                                 convert(nb, nloc, args[0], nb.getI64Type()));
                             return {convert(nb, nloc, hit, rt.getElementType())};
                           });
          }};
}

// ---- the optimizer updates: one elementwise generic with a result per
// updated tensor, the same arithmetic as eager's fused loops ----

std::string same_shapes(mlir::Operation* op, llvm::ArrayRef<Value> tensors) {
  if (std::string why = float_result(op); !why.empty()) return why;
  for (Value v : tensors)
    if (v && type_of(v) != type_of(tensors[0])) return "operands of different shapes or dtypes";
  return {};
}

Structured sgd_step() {
  Structured s;
  s.check = [](mlir::Operation* op) {
    auto o = mlir::cast<kiln::ir::SgdStepOp>(op);
    return same_shapes(op, {o.getParam(), o.getGrad(), o.getMomentumBuffer()});
  };
  s.lower = [](mlir::OpBuilder& b, mlir::Operation* op) -> llvm::SmallVector<Value> {
    auto o = mlir::cast<kiln::ir::SgdStepOp>(op);
    mlir::Location loc = op->getLoc();
    auto pt = type_of(o.getParam());
    mlir::Type t = pt.getElementType();
    double lr = float_attr(op, "lr"), mom = float_attr(op, "momentum"), damp = float_attr(op, "dampening"),
           wd = float_attr(op, "weight_decay");
    bool nesterov = bool_attr(op, "nesterov"), momentum = static_cast<bool>(o.getMomentumBuffer());
    double sign = bool_attr(op, "maximize") ? -1.0 : 1.0;
    Space sp = Space::parallel(b.getContext(), pt.getShape());
    llvm::SmallVector<std::pair<Value, AffineMap>> ins = {{o.getParam(), sp.full()}, {o.getGrad(), sp.full()}};
    llvm::SmallVector<std::pair<Value, AffineMap>> outs = {{empty(b, loc, pt.getShape(), t), sp.full()}};
    if (momentum) {
      ins.push_back({o.getMomentumBuffer(), sp.full()});
      outs.push_back({empty(b, loc, pt.getShape(), t), sp.full()});
    }
    return generic(b, loc, sp, ins, outs,
                   [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                     Arith a{nb, nloc, t};
                     Value p = args[0], d = a.mul(a.c(sign), args[1]);
                     if (wd != 0) d = a.add(d, a.mul(a.c(wd), p));
                     llvm::SmallVector<Value> r = {Value()};
                     if (momentum) {
                       Value buf = a.add(a.mul(a.c(mom), args[2]), a.mul(a.c(1 - damp), d));
                       d = nesterov ? a.add(d, a.mul(a.c(mom), buf)) : buf;
                       r.push_back(buf);
                     }
                     r[0] = a.sub(p, a.mul(a.c(lr), d));
                     return r;
                   });
  };
  return s;
}

// The bias corrections depend on the step tensor: computed in float64 in the
// body (loop-invariant; eager computes them in double once).
Structured adam_step() {
  Structured s;
  s.check = [](mlir::Operation* op) -> std::string {
    auto o = mlir::cast<kiln::ir::AdamStepOp>(op);
    if (type_of(o.getStep()).getNumElements() != 1) return "a step tensor of more than one element";
    return same_shapes(op, {o.getParam(), o.getGrad(), o.getExpAvg(), o.getExpAvgSq(), o.getMaxExpAvgSq()});
  };
  s.lower = [](mlir::OpBuilder& b, mlir::Operation* op) -> llvm::SmallVector<Value> {
    auto o = mlir::cast<kiln::ir::AdamStepOp>(op);
    mlir::Location loc = op->getLoc();
    auto pt = type_of(o.getParam());
    mlir::Type t = pt.getElementType();
    double lr = float_attr(op, "lr"), beta1 = float_attr(op, "beta1"), beta2 = float_attr(op, "beta2"),
           eps = float_attr(op, "eps"), wd = float_attr(op, "weight_decay");
    bool decoupled = bool_attr(op, "decoupled"), amsgrad = static_cast<bool>(o.getMaxExpAvgSq());
    double sign = bool_attr(op, "maximize") ? -1.0 : 1.0, l2 = decoupled ? 0 : wd, decay = decoupled ? 1 - lr * wd : 1;
    Space sp = Space::parallel(b.getContext(), pt.getShape());
    llvm::SmallVector<std::pair<Value, AffineMap>> ins = {
        {o.getParam(), sp.full()}, {o.getGrad(), sp.full()}, {o.getExpAvg(), sp.full()}, {o.getExpAvgSq(), sp.full()}};
    if (amsgrad) ins.push_back({o.getMaxExpAvgSq(), sp.full()});
    // the 1-element step: index 0 of each of its dims
    ins.push_back({o.getStep(), sp.map(llvm::SmallVector<mlir::AffineExpr>(type_of(o.getStep()).getRank(),
                                                                           b.getAffineConstantExpr(0)))});
    llvm::SmallVector<std::pair<Value, AffineMap>> outs;
    for (int i = 0; i < (amsgrad ? 4 : 3); ++i) outs.push_back({empty(b, loc, pt.getShape(), t), sp.full()});
    return generic(b, loc, sp, ins, outs,
                   [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                     Arith a{nb, nloc, t}, d{nb, nloc, nb.getF64Type()};
                     Value step = d.cvt(args[amsgrad ? 5 : 4]);
                     auto pow = [&](double base) { return nb.create<mlir::math::PowFOp>(nloc, d.c(base), step); };
                     Value bias2_sqrt = a.cvt(d.sqrt(d.sub(d.c(1), pow(beta2))));
                     Value neg_step = a.cvt(d.div(d.c(-lr), d.sub(d.c(1), pow(beta1))));
                     Value p = decay != 1 ? a.mul(args[0], a.c(decay)) : args[0];
                     Value g = a.mul(a.c(sign), args[1]);
                     if (l2 != 0) g = a.add(g, a.mul(a.c(l2), p));
                     Value m = a.add(a.mul(args[2], a.c(beta1)), a.mul(a.c(1 - beta1), g));
                     Value v = a.add(a.mul(args[3], a.c(beta2)), a.mul(a.mul(a.c(1 - beta2), g), g));
                     llvm::SmallVector<Value> r = {Value(), m, v};
                     if (amsgrad) {
                       v = a.select(nb.create<mlir::arith::CmpFOp>(nloc, mlir::arith::CmpFPredicate::OLT, args[4], v),
                                    v, args[4]);
                       r.push_back(v);
                     }
                     Value denom = a.add(a.div(a.sqrt(v), bias2_sqrt), a.c(eps));
                     r[0] = a.add(p, a.div(a.mul(neg_step, m), denom));
                     return r;
                   });
  };
  return s;
}

// ---- cross_entropy (logits) and nll_loss (log-probabilities) with class
// indices over (N, C) inputs, no label smoothing, and their backward ops.
// Operands by position: [grad,] input, target, weight?. nll_loss is
// cross_entropy with a log-sum-exp of 0. Targets outside [0, C) other than
// ignore_index are not checked (eager raises): such a row picks nothing. ----

std::string cross_entropy_check(mlir::Operation* op, Value input, Value target) {
  if (std::string why = float_result(op); !why.empty()) return why;
  if (type_of(input).getRank() != 2) return "only (N, C) inputs are compiled";
  if (is_float(type_of(target).getElementType())) return "class-probability targets are not compiled yet";
  if (auto eps = op->getAttrOfType<mlir::FloatAttr>("label_smoothing"); eps && eps.getValueAsDouble() != 0)
    return "label smoothing is not compiled yet";
  if (type_of(input).getNumElements() == 0) return "empty tensors are not compiled here";
  llvm::StringRef red = op->getAttrOfType<mlir::StringAttr>("reduction").getValue();
  if (red != "mean" && red != "sum" && red != "none") return "unknown reduction";
  return {};
}

// Per row of x (N, C): the max m, s = sum(exp(x - m)) (m = 0, s = 1 for
// nll_loss: a log-sum-exp of 0), the target's value and weight (one generic
// for the last three: rows are short).
llvm::SmallVector<Value> ce_rows(mlir::OpBuilder& b, mlir::Location loc, Value x, Value target, Value weight,
                                 mlir::Type t, bool nll) {
  Space red(b.getContext(), type_of(x).getShape(), {false, true});
  int64_t n = type_of(x).getDimSize(0);
  Value z = filled(b, loc, {n}, identity(Combine::Add, t));
  Value m = nll ? z
                : generic(b, loc, red, {{x, red.full()}}, {{filled(b, loc, {n}, identity(Combine::Max, t)), red.kept()}},
                          [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                            return {shift_max(nb, nloc, args[1], convert(nb, nloc, args[0], t))};
                          })[0];
  llvm::SmallVector<std::pair<Value, AffineMap>> ins = {{x, red.full()}, {target, red.kept()}, {m, red.kept()}};
  if (weight) ins.push_back({weight, red.map({red.dim(1)})});
  llvm::SmallVector<std::pair<Value, AffineMap>> outs(nll ? 1 : 2, {z, red.kept()});
  if (weight) outs.push_back({z, red.kept()});
  auto r = generic(b, loc, red, ins, outs,
                   [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                     Arith a{nb, nloc, t};
                     size_t o = weight ? 4 : 3;
                     Value xv = a.cvt(args[0]);
                     Value hit = nb.create<mlir::arith::CmpIOp>(nloc, mlir::arith::CmpIPredicate::eq, a.index(1),
                                                                convert(nb, nloc, args[1], nb.getI64Type()));
                     llvm::SmallVector<Value> r;
                     if (!nll) r.push_back(combine(nb, nloc, Combine::Add, args[o++], a.exp_below(xv, args[2])));
                     r.push_back(a.add(args[o++], a.select(hit, xv, a.c(0))));
                     if (weight) r.push_back(a.add(args[o], a.select(hit, a.cvt(args[3]), a.c(0))));
                     return r;
                   });
  r.insert(r.begin(), m);
  if (nll) r.insert(r.begin() + 1, filled(b, loc, {n}, mlir::FloatAttr::get(t, 1.0)));
  return r;
}

Value row_valid(mlir::OpBuilder& b, mlir::Location loc, Value target, int64_t ignore) {
  Value t = convert(b, loc, target, b.getI64Type());
  return b.create<mlir::arith::CmpIOp>(loc, mlir::arith::CmpIPredicate::ne, t,
                                       b.create<mlir::arith::ConstantOp>(loc, b.getI64IntegerAttr(ignore)));
}

Value operand_or_null(mlir::Operation* op, unsigned i) { return i < op->getNumOperands() ? op->getOperand(i) : Value(); }

Structured cross_entropy(bool nll) {
  Structured s;
  s.check = [](mlir::Operation* op) { return cross_entropy_check(op, op->getOperand(0), op->getOperand(1)); };
  s.lower = [nll](mlir::OpBuilder& b, mlir::Operation* op) -> llvm::SmallVector<Value> {
    mlir::Location loc = op->getLoc();
    auto rt = result_type(op);
    mlir::Type t = rt.getElementType();
    Value input = op->getOperand(0), target = op->getOperand(1), weight = operand_or_null(op, 2);
    int64_t ignore = int_attr(op, "ignore_index");
    llvm::StringRef red = op->getAttrOfType<mlir::StringAttr>("reduction").getValue();
    auto rows = ce_rows(b, loc, input, target, weight, t, nll);
    int64_t n = type_of(input).getDimSize(0);
    // loss_r = w_t (lse - x_t) for a counted row, else 0; mean divides by the summed w_t.
    auto loss = [&](const Arith& a, mlir::ValueRange args) -> std::pair<Value, Value> {
      Value valid = row_valid(a.b, a.loc, args[0], ignore);
      Value w = weight ? args[4] : a.c(1);
      Value l = a.mul(w, a.sub(logsumexp_of(a, args[1], args[2]), args[3]));
      return {a.select(valid, l, a.c(0)), a.select(valid, w, a.c(0))};
    };
    llvm::SmallVector<std::pair<Value, AffineMap>> ins = {{target, AffineMap()}};
    for (Value r : rows) ins.push_back({r, AffineMap()});
    if (red == "none") {
      Space sp = Space::parallel(b.getContext(), {n});
      for (auto& in : ins) in.second = sp.full();
      return generic(b, loc, sp, ins, {{empty(b, loc, {n}, t), sp.full()}},
                     [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                       return {loss(Arith{nb, nloc, t}, args).first};
                     });
    }
    Space sp(b.getContext(), {n}, {true});
    for (auto& in : ins) in.second = sp.full();
    Value z = filled(b, loc, {}, identity(Combine::Add, t));
    auto sums = generic(b, loc, sp, ins, {{z, sp.kept()}, {z, sp.kept()}},
                        [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                          auto [l, w] = loss(Arith{nb, nloc, t}, args);
                          size_t o = args.size() - 2;
                          return {combine(nb, nloc, Combine::Add, args[o], l),
                                  combine(nb, nloc, Combine::Add, args[o + 1], w)};
                        });
    if (red == "sum") return {sums[0]};
    Space scalar = Space::parallel(b.getContext(), {});
    return generic(b, loc, scalar, {{sums[0], scalar.full()}, {sums[1], scalar.full()}},
                   {{empty(b, loc, {}, t), scalar.full()}},
                   [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                     return {Arith{nb, nloc, t}.div(args[0], args[1])};
                   });
  };
  return s;
}

// d loss / d x = scale_r * w_t * (softmax(x) - onehot(t)) for a counted row
// (nll_loss: -scale_r * w_t * onehot(t)), scale_r = g (sum), g / sum(w_t)
// (mean) or g_r (none).
Structured cross_entropy_backward(bool nll) {
  Structured s;
  s.check = [](mlir::Operation* op) -> std::string {
    if (bool_attr(op, "need_target")) return "the target's gradient is not compiled yet";
    return cross_entropy_check(op, op->getOperand(1), op->getOperand(2));
  };
  s.lower = [nll](mlir::OpBuilder& b, mlir::Operation* op) -> llvm::SmallVector<Value> {
    mlir::Location loc = op->getLoc();
    auto rt = result_type(op);
    mlir::Type t = rt.getElementType();
    Value grad = op->getOperand(0), x = op->getOperand(1), target = op->getOperand(2),
          weight = operand_or_null(op, 3);
    int64_t ignore = int_attr(op, "ignore_index");
    llvm::StringRef red = op->getAttrOfType<mlir::StringAttr>("reduction").getValue();
    auto rows = ce_rows(b, loc, x, target, weight, t, nll);
    int64_t n = type_of(x).getDimSize(0);
    Space sp = Space::parallel(b.getContext(), rt.getShape());
    sp.reduced = {false, true};  // kept(): the per-row values
    // [target, m, s, (w_t,) g, (denominator,) x]
    llvm::SmallVector<std::pair<Value, AffineMap>> ins = {{target, sp.kept()}, {rows[0], sp.kept()},
                                                          {rows[1], sp.kept()}};
    if (weight) ins.push_back({rows[3], sp.kept()});
    auto scalar = [&](Value v) { return sp.map(llvm::SmallVector<mlir::AffineExpr>(type_of(v).getRank(), b.getAffineConstantExpr(0))); };
    ins.push_back({grad, red == "none" ? sp.kept() : scalar(grad)});
    if (red == "mean") {
      Space all(b.getContext(), {n}, {true});
      llvm::SmallVector<std::pair<Value, AffineMap>> dins = {{target, all.full()}};
      if (weight) dins.push_back({rows[3], all.full()});
      Value denom = generic(b, loc, all, dins, {{filled(b, loc, {}, identity(Combine::Add, t)), all.kept()}},
                            [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                              Arith a{nb, nloc, t};
                              Value w = a.select(row_valid(nb, nloc, args[0], ignore), weight ? args[1] : a.c(1), a.c(0));
                              return {combine(nb, nloc, Combine::Add, args.back(), w)};
                            })[0];
      ins.push_back({denom, sp.map({})});
    }
    ins.push_back({x, sp.full()});
    return generic(b, loc, sp, ins, {{empty(b, loc, rt.getShape(), t), sp.full()}},
                   [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                     Arith a{nb, nloc, t};
                     size_t i = 3;
                     Value w = weight ? args[i++] : a.c(1);
                     Value scale = a.cvt(args[i++]);
                     if (red == "mean") scale = a.div(scale, args[i++]);
                     Value p = nll ? a.c(0) : a.exp_below(a.cvt(args[i]), logsumexp_of(a, args[1], args[2]));
                     Value hit = nb.create<mlir::arith::CmpIOp>(nloc, mlir::arith::CmpIPredicate::eq, a.index(1),
                                                                convert(nb, nloc, args[0], nb.getI64Type()));
                     Value d = a.mul(a.mul(scale, w), a.sub(p, a.select(hit, a.c(1), a.c(0))));
                     return {a.select(row_valid(nb, nloc, args[0], ignore), d, a.c(0))};
                   });
  };
  return s;
}

const llvm::StringMap<Structured>& structured() {
  static const llvm::StringMap<Structured> table = [] {
    llvm::StringMap<Structured> t;
    t["sum"] = reduction(Combine::Add);
    t["mean"] = reduction(Combine::Add, true, true);
    t["prod"] = reduction(Combine::Mul);
    t["amax"] = reduction(Combine::Max);
    t["amin"] = reduction(Combine::Min);
    t["any"] = reduction(Combine::Or);
    t["all"] = reduction(Combine::And);
    t["max"] = arg_extreme(true, true);
    t["min"] = arg_extreme(false, true);
    t["argmax"] = arg_extreme(true, false);
    t["argmin"] = arg_extreme(false, false);
    t["var"] = variance(false);
    t["std"] = variance(true);
    t["logsumexp"] = logsumexp();
    t["softmax"] = softmax(false);
    t["log_softmax"] = softmax(true);
    t["native_layer_norm"] = layer_norm();
    t["permute"] = permute();
    for (const char* name : {"slice", "narrow", "select"}) t[name] = pick(name);
    for (const char* name : {"reshape", "view", "flatten", "squeeze", "unsqueeze"}) t[name] = reshape_op();
    for (const char* name : {"split", "split_with_sizes", "chunk"}) t[name] = split();
    t["broadcast_tensors"] = broadcast_tensors();
    t["masked_fill"] = masked_fill();
    t["one_hot"] = one_hot();
    t["sgd_step"] = sgd_step();
    t["adam_step"] = adam_step();
    t["cross_entropy"] = cross_entropy(false);
    t["cross_entropy_backward"] = cross_entropy_backward(false);
    t["nll_loss"] = cross_entropy(true);
    t["mse_loss"] = mse_loss();
    t["binary_cross_entropy_with_logits"] = bce_with_logits();
    t["nll_loss_backward"] = cross_entropy_backward(true);
    return t;
  }();
  return table;
}

bool is_blas(llvm::StringRef kiln_name) { return kiln_name == "matmul" || kiln_name == "linear" || kiln_name == "conv2d"; }
bool is_view(llvm::StringRef kiln_name) {
  return llvm::is_contained({"permute", "reshape", "view", "flatten", "squeeze", "unsqueeze", "slice", "narrow", "select",
                             "expand"},
                            kiln_name);
}

// Whether every use of `op` is a BLAS op, directly or through views. Such a
// view stays a kiln op: eagerly it costs nothing and matmul reads a
// transposed or strided operand in place, where a generic would copy it.
bool feeds_only_blas(mlir::Operation* op) {
  if (op->use_empty()) return false;
  for (mlir::Operation* user : op->getUsers()) {
    llvm::StringRef name = user->getName().getStringRef();
    if (!name.consume_front("kiln.")) return false;
    if (!is_blas(name) && !(is_view(name) && feeds_only_blas(user))) return false;
  }
  return true;
}

// Why `op` does not lower (empty if it does).
std::string refusal(mlir::Operation* op) {
  llvm::StringRef name = op->getName().getStringRef();
  if (name == "func.return") return {};
  if (op->getNumRegions() != 0) return "control flow is not compiled yet";
  if (!name.starts_with("kiln.")) return "not a kiln op";
  llvm::StringRef kiln_name = name.drop_front(5);
  for (mlir::TypeRange types : {mlir::TypeRange(op->getOperandTypes()), mlir::TypeRange(op->getResultTypes())})
    for (mlir::Type type : types) {
      auto t = mlir::dyn_cast<mlir::RankedTensorType>(type);
      if (!t || !t.hasStaticShape()) return "dynamic shapes are not compiled yet";
      if (!operand_ok(t.getElementType())) return "dtype not compiled yet (only float32, float64, bool, int32, int64)";
    }
  if (is_blas(kiln_name)) return "stays a kiln op: the runtime calls BLAS";
  if (is_view(kiln_name) && feeds_only_blas(op)) return "a view feeding only matmul stays a kiln op (read in place)";
  if (auto it = structured().find(kiln_name); it != structured().end()) return it->second.check(op);
  if (op->getNumResults() != 1) return "not an elementwise op";
  auto rt = mlir::cast<mlir::RankedTensorType>(op->getResult(0).getType());
  mlir::Type re = rt.getElementType();
  if (kiln_name == "constant" || kiln_name == "full" || kiln_name == "full_like") {
    if (kiln_name != "constant" && !scalar_attr(op->getAttr("value"))) return "fill value is not a number";
    return {};
  }
  if (kiln_name == "clamp") return is_float(re) ? "" : "only float32 and float64 results are compiled";
  auto it = rules().find(kiln_name);
  if (it == rules().end()) return "not an op the compiler knows";
  const Rule& rule = it->second;
  bool int_ok = rule.int_result && (re.isInteger(32) || re.isInteger(64));
  if (!rule.any_result && (rule.bool_result ? !re.isInteger(1) : !(is_float(re) || int_ok)))
    return "only float32 and float64 results (bool for comparisons, int32/int64 for integer arithmetic) are compiled";
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

llvm::SmallVector<Value> lower(mlir::OpBuilder& b, mlir::Operation* op) {
  mlir::Location loc = op->getLoc();
  llvm::StringRef name = op->getName().getStringRef().drop_front(5);
  if (auto it = structured().find(name); it != structured().end()) return it->second.lower(b, op);
  auto rt = mlir::cast<mlir::RankedTensorType>(op->getResult(0).getType());
  mlir::Type re = rt.getElementType();
  if (name == "constant") {
    auto value = mlir::cast<mlir::TypedAttr>(op->getAttr("value"));
    return {b.create<mlir::arith::ConstantOp>(loc, value)};
  }
  if (name == "full" || name == "full_like") return {filled(b, loc, rt.getShape(), splat_value(re, *scalar_attr(op->getAttr("value"))))};
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
  Space space = Space::parallel(b.getContext(), rt.getShape());
  llvm::SmallVector<std::pair<Value, AffineMap>> ins;
  for (Value v : op->getOperands()) ins.push_back({v, space.broadcast(type_of(v).getShape())});
  return generic(b, loc, space, ins, {{empty(b, loc, rt.getShape(), re), space.full()}},
                 [&](mlir::OpBuilder& nb, mlir::Location nloc, mlir::ValueRange args) -> llvm::SmallVector<Value> {
                   return {body(nb, nloc, args.drop_back(), re)};
                 });
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
        kept.push_back({op->getName().getStringRef().str(), ir::location_text(op->getLoc()), std::move(why)});
        continue;
      }
      b.setInsertionPoint(op);
      llvm::SmallVector<Value> values = lower(b, op);
      op->replaceAllUsesWith(values);
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
  // consumer reads through several operands with the same indexing map is
  // not fused until the canonicalizer has merged those operands, otherwise
  // each operand would inline its own copy of the producer (operands that
  // read it through different maps cannot merge: each gets its copy); and
  // no fused body grows beyond kMaxBodyOps.
  constexpr size_t kMaxBodyOps = 2000, kMaxFusedBuffers = 96;
  mlir::linalg::populateElementwiseOpsFusionPatterns(patterns, [](mlir::OpOperand* operand) {
    auto consumer = mlir::cast<mlir::linalg::LinalgOp>(operand->getOwner());
    for (mlir::OpOperand& other : consumer->getOpOperands())
      if (&other != operand && other.get() == operand->get() &&
          consumer.getMatchingIndexingMap(&other) == consumer.getMatchingIndexingMap(operand))
        return false;
    size_t size = consumer->getRegion(0).front().getOperations().size();
    size_t buffers = consumer->getNumOperands() + consumer->getNumResults();
    if (auto producer = operand->get().getDefiningOp<mlir::linalg::GenericOp>()) {
      size += producer.getRegion().front().getOperations().size();
      buffers += producer->getNumOperands();
    }
    // (the runtime passes a kernel at most 128 buffers: codegen/cpu_program.cpp)
    return size <= kMaxBodyOps && buffers <= kMaxFusedBuffers;
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
