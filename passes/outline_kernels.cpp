#include "passes/outline_kernels.h"

#include <cctype>
#include <functional>

#include <llvm/ADT/SmallPtrSet.h>

#include <fmt/format.h>
#include <mlir/Dialect/Arith/IR/Arith.h>
#include <mlir/Dialect/Func/IR/FuncOps.h>
#include <mlir/Dialect/Linalg/IR/Linalg.h>
#include <mlir/Dialect/Tensor/IR/Tensor.h>
#include <mlir/IR/Builders.h>
#include <mlir/IR/BuiltinOps.h>
#include <mlir/IR/IRMapping.h>
#include <mlir/Interfaces/SideEffectInterfaces.h>
#include <mlir/Transforms/RegionUtils.h>

#include "runtime/error.h"

namespace kiln::passes {
namespace {

// "k3_model_py_12" from the first file:line in the generic's (fused) location.
std::string kernel_name(int index, mlir::Location loc) {
  std::string name = fmt::format("k{}", index);
  mlir::FileLineColLoc file;
  loc->walk([&](mlir::Location l) {
    if (auto f = mlir::dyn_cast<mlir::FileLineColLoc>(l)) {
      file = f;
      return mlir::WalkResult::interrupt();
    }
    return mlir::WalkResult::advance();
  });
  if (!file) return name;
  std::string stem = file.getFilename().str();
  if (size_t slash = stem.find_last_of('/'); slash != std::string::npos) stem = stem.substr(slash + 1);
  for (char& c : stem)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return fmt::format("{}_{}_{}", name, stem, file.getLine());
}

// A constant small enough to live in the kernel's code.
bool inlinable_constant(mlir::Value v) {
  auto constant = v.getDefiningOp<mlir::arith::ConstantOp>();
  if (!constant) return false;
  auto dense = mlir::dyn_cast<mlir::DenseElementsAttr>(constant.getValue());
  return !dense || dense.isSplat() || dense.getNumElements() <= 4096;
}

// The element of a splat tensor constant (a reduction's starting value).
mlir::TypedAttr splat_of(mlir::Value v) {
  auto constant = v.getDefiningOp<mlir::arith::ConstantOp>();
  auto dense = constant ? mlir::dyn_cast<mlir::DenseElementsAttr>(constant.getValue()) : nullptr;
  if (!dense || !dense.isSplat() || mlir::cast<mlir::ShapedType>(dense.getType()).getRank() == 0) return nullptr;
  return mlir::dyn_cast<mlir::TypedAttr>(dense.getSplatValue<mlir::Attribute>());
}

// A generic that only fills its output (no inputs) and feeds one consumer:
// it belongs to that consumer's kernel (the zero a reduction starts from).
bool is_fill_for(mlir::Value v) {
  auto fill = v.getDefiningOp<mlir::linalg::GenericOp>();
  return fill && fill.getNumDpsInputs() == 0 && v.hasOneUse() &&
         llvm::all_of(fill.getDpsInits(), [](mlir::Value init) { return init.getDefiningOp<mlir::tensor::EmptyOp>(); });
}

// Outer parallel loop that indexes dim 0 of every output: its trip count.
int64_t tile_extent(mlir::linalg::GenericOp op) {
  if (op.getNumLoops() == 0 || op.getIteratorTypesArray()[0] != mlir::utils::IteratorType::parallel) return 0;
  for (mlir::OpOperand& init : op.getDpsInitsMutable()) {
    mlir::AffineMap map = op.getMatchingIndexingMap(&init);
    if (map.getNumResults() == 0 || map.getResult(0) != mlir::getAffineDimExpr(0, op.getContext())) return 0;
  }
  llvm::SmallVector<int64_t> ranges = op.getStaticLoopRanges();
  return ranges[0] > 1 && !mlir::ShapedType::isDynamic(ranges[0]) ? ranges[0] : 0;
}

int64_t work(mlir::linalg::GenericOp op) {
  int64_t n = 1;
  for (int64_t r : op.getStaticLoopRanges()) n *= mlir::ShapedType::isDynamic(r) ? 1 : r;
  return n;
}

// Whether `g` may join `group` in one kernel: every generic splits the same
// outer parallel loop, and what g reads of the group's results it reads at
// that loop's index, so each tile of rows is computed start to finish by one
// call (the rows are still in cache for the second pass of a softmax).
bool joins(llvm::ArrayRef<mlir::linalg::GenericOp> group, mlir::linalg::GenericOp g) {
  // The runtime calls kernels with at most 128 buffers (codegen/cpu_program.cpp).
  constexpr unsigned kMaxBuffers = 96;
  unsigned buffers = g->getNumOperands() + g->getNumResults();
  for (mlir::linalg::GenericOp member : group) buffers += member->getNumOperands() + member->getNumResults();
  if (buffers > kMaxBuffers) return false;
  int64_t extent = tile_extent(group.front());
  if (extent == 0 || tile_extent(g) != extent) return false;
  for (mlir::OpOperand* operand : g.getDpsInputOperands()) {
    auto producer = operand->get().getDefiningOp<mlir::linalg::GenericOp>();
    if (!producer || !llvm::is_contained(group, producer)) continue;
    mlir::AffineMap map = g.getMatchingIndexingMap(operand);
    if (map.getNumResults() == 0 || map.getResult(0) != mlir::getAffineDimExpr(0, g.getContext())) return false;
  }
  return true;
}

void outline(mlir::ModuleOp module, llvm::ArrayRef<mlir::linalg::GenericOp> group, int index) {
  mlir::MLIRContext* context = module.getContext();
  mlir::OpBuilder b(context);
  mlir::IRMapping map;
  llvm::SmallVector<mlir::Value> arguments;      // what the entry passes
  llvm::SmallVector<mlir::Operation*> prologue;  // ops cloned ahead of the generics
  llvm::SmallPtrSet<mlir::Operation*, 4> members;
  for (mlir::linalg::GenericOp g : group) members.insert(g);

  // Values the kernel receives, the constants and fills it takes along.
  llvm::SetVector<mlir::Value> splat_inits;  // constant initial values of outputs
  auto take = [&](mlir::Value v, bool as_init) {
    if (map.contains(v)) return;
    mlir::Operation* def = v.getDefiningOp();
    if (def && members.contains(def)) return;  // computed inside
    if (as_init && splat_of(v)) {
      splat_inits.insert(v);
      return;
    }
    if (def && (inlinable_constant(v) || (as_init && (mlir::isa<mlir::tensor::EmptyOp>(def) || is_fill_for(v))))) {
      prologue.push_back(def);
      return;
    }
    map.map(v, v);  // taken (remapped to its block argument once the kernel exists)
    arguments.push_back(v);
  };
  llvm::SmallVector<mlir::Type> result_types;
  for (mlir::linalg::GenericOp g : group) {
    for (mlir::Value v : g.getDpsInputs()) take(v, false);
    for (mlir::Value v : g.getDpsInits()) take(v, true);
    llvm::SetVector<mlir::Value> above;
    mlir::getUsedValuesDefinedAbove(g.getRegion(), above);
    for (mlir::Value v : above) {
      KILN_CHECK(inlinable_constant(v), IrError, "outline_kernels: a generic reads a non-constant value from outside");
      take(v, false);
    }
  }
  // Every result is returned, also those only the group reads (the runtime
  // then allocates them once per call instead of each tile allocating them),
  // except a result that a later generic only overwrites in place (its init).
  auto returned = [&](mlir::Value r) {
    for (mlir::OpOperand& use : r.getUses()) {
      auto user = mlir::dyn_cast<mlir::linalg::GenericOp>(use.getOwner());
      if (!user || !members.contains(user) || !user.isDpsInit(&use)) return true;
    }
    return false;
  };
  for (mlir::linalg::GenericOp g : group)
    for (mlir::Value r : g->getResults())
      if (returned(r)) result_types.push_back(r.getType());

  llvm::SmallVector<mlir::Type> argument_types;
  for (mlir::Value v : arguments) argument_types.push_back(v.getType());
  mlir::linalg::GenericOp first = group.front(), last = group.back();
  int64_t total_work = 0;
  for (mlir::linalg::GenericOp g : group) total_work += work(g);
  b.setInsertionPointToEnd(module.getBody());
  auto kernel = b.create<mlir::func::FuncOp>(first.getLoc(), kernel_name(index, first.getLoc()),
                                             b.getFunctionType(argument_types, result_types));
  kernel.setPrivate();
  kernel->setAttr("kiln.kernel", b.getUnitAttr());
  kernel->setAttr("kiln.tile_extent", b.getI64IntegerAttr(tile_extent(first)));
  kernel->setAttr("kiln.work", b.getI64IntegerAttr(total_work));
  mlir::Block* body = kernel.addEntryBlock();
  for (auto [v, arg] : llvm::zip(arguments, body->getArguments())) map.map(v, arg);
  b.setInsertionPointToStart(body);
  // A fill's own init (tensor.empty) comes first.
  std::function<void(mlir::Operation*)> clone = [&](mlir::Operation* op) {
    if (map.contains(op->getResult(0))) return;
    for (mlir::Value operand : op->getOperands())
      if (mlir::Operation* def = operand.getDefiningOp(); def && !map.contains(operand)) clone(def);
    b.clone(*op, map);
  };
  for (mlir::Operation* op : prologue) clone(op);
  // A constant initial value becomes a fill loop of its own for each output
  // it starts: a memref.copy of the whole constant would run in every tile
  // (and keep the kernel from splitting), and a shared one would be copied.
  auto fill_with = [&](mlir::Value v) -> mlir::Value {
    auto type = mlir::cast<mlir::RankedTensorType>(v.getType());
    mlir::Value empty = b.create<mlir::tensor::EmptyOp>(v.getLoc(), type.getShape(), type.getElementType());
    auto identity = b.getMultiDimIdentityMap(static_cast<unsigned>(type.getRank()));
    llvm::SmallVector<mlir::utils::IteratorType> parallel(type.getRank(), mlir::utils::IteratorType::parallel);
    mlir::TypedAttr value = splat_of(v);
    auto fill = b.create<mlir::linalg::GenericOp>(
        v.getLoc(), mlir::TypeRange{type}, mlir::ValueRange{}, mlir::ValueRange{empty},
        llvm::ArrayRef<mlir::AffineMap>{identity}, parallel,
        [&](mlir::OpBuilder& nb, mlir::Location loc, mlir::ValueRange) {
          nb.create<mlir::linalg::YieldOp>(loc, mlir::ValueRange{nb.create<mlir::arith::ConstantOp>(loc, value)});
        });
    return fill.getResult(0);
  };
  llvm::SmallVector<mlir::Value> results;
  for (mlir::linalg::GenericOp g : group) {
    for (mlir::Value v : g.getDpsInits())
      if (splat_inits.contains(v)) map.map(v, fill_with(v));
    mlir::Operation* copy = b.clone(*g, map);
    for (auto [r, c] : llvm::zip(g->getResults(), copy->getResults()))
      if (returned(r)) results.push_back(c);
  }
  b.create<mlir::func::ReturnOp>(first.getLoc(), results);

  // At the last generic: every argument is defined by then, and between the
  // generics there are only constants and tensor.empty ops.
  b.setInsertionPoint(last);
  auto call = b.create<mlir::func::CallOp>(first.getLoc(), kernel, arguments);
  unsigned next = 0;
  for (mlir::linalg::GenericOp g : group)
    for (mlir::Value r : g->getResults())
      if (returned(r)) r.replaceAllUsesWith(call.getResult(next++));
  for (mlir::linalg::GenericOp g : llvm::reverse(group)) g->erase();
  // What only the generics used (their fills, those fills' tensor.empty, ...) goes.
  llvm::SmallVector<mlir::Operation*> dead(prologue.begin(), prologue.end());
  for (mlir::Value v : splat_inits) dead.push_back(v.getDefiningOp());
  llvm::SmallPtrSet<mlir::Operation*, 8> erased;
  while (!dead.empty()) {
    mlir::Operation* op = dead.pop_back_val();
    if (erased.contains(op) || !mlir::isOpTriviallyDead(op)) continue;
    erased.insert(op);
    for (mlir::Value operand : op->getOperands())
      if (mlir::Operation* def = operand.getDefiningOp()) dead.push_back(def);
    op->erase();
  }
}

bool is_fill(mlir::linalg::GenericOp op) {
  if (op.getNumDpsInputs() != 0 || !op->hasOneUse()) return false;
  mlir::OpOperand& use = *op->getUses().begin();
  auto consumer = mlir::dyn_cast<mlir::linalg::GenericOp>(use.getOwner());
  return consumer && consumer.isDpsInit(&use) && is_fill_for(use.get());
}

}  // namespace

int outline_kernels(mlir::ModuleOp module) {
  // Groups of consecutive generics (ignoring constants, tensor.empty and
  // fills, which move into kernels) that make one kernel each.
  std::vector<llvm::SmallVector<mlir::linalg::GenericOp>> groups;
  for (auto func : module.getOps<mlir::func::FuncOp>()) {
    if (func->hasAttr("kiln.kernel")) continue;
    bool open = false;
    for (mlir::Operation& op : func.getBody().front()) {
      if (mlir::isa<mlir::arith::ConstantOp, mlir::tensor::EmptyOp>(op)) continue;
      auto generic = mlir::dyn_cast<mlir::linalg::GenericOp>(op);
      if (!generic) {
        open = false;
        continue;
      }
      if (is_fill(generic)) continue;
      if (open && joins(groups.back(), generic)) {
        groups.back().push_back(generic);
      } else {
        groups.push_back({generic});
        open = true;
      }
    }
  }
  int index = 0;
  for (const auto& group : groups) outline(module, group, index++);
  return index;
}

}  // namespace kiln::passes
