#include "codegen/promote_accumulators.h"

#include <mlir/Dialect/MemRef/IR/MemRef.h>
#include <mlir/Dialect/SCF/IR/SCF.h>
#include <mlir/IR/BuiltinOps.h>
#include <mlir/IR/PatternMatch.h>
#include <mlir/Interfaces/LoopLikeInterface.h>
#include <mlir/Interfaces/ViewLikeInterface.h>

namespace kiln::codegen {
namespace {

// The buffer a memref views (through subviews, reshapes, casts).
mlir::Value root(mlir::Value v) {
  while (auto view = v.getDefiningOp<mlir::ViewLikeOpInterface>()) v = view.getViewSource();
  return v;
}

struct Accumulator {
  mlir::memref::LoadOp load;
  mlir::memref::StoreOp store;
};

// The load/store pairs of `loop` that can become loop-carried values.
llvm::SmallVector<Accumulator> accumulators(mlir::scf::ForOp loop) {
  llvm::SmallVector<Accumulator> found;
  mlir::Block* body = loop.getBody();
  for (mlir::Operation& op : *body) {
    auto store = mlir::dyn_cast<mlir::memref::StoreOp>(op);
    if (!store || !loop.isDefinedOutsideOfLoop(store.getMemRef()) ||
        !llvm::all_of(store.getIndices(), [&](mlir::Value i) { return loop.isDefinedOutsideOfLoop(i); }))
      continue;
    mlir::Value buffer = root(store.getMemRef());
    mlir::memref::LoadOp load;
    bool alone = true;
    loop.getBody()->walk([&](mlir::Operation* other) {
      if (other == store.getOperation()) return;
      for (mlir::Value operand : other->getOperands()) {
        if (!mlir::isa<mlir::MemRefType>(operand.getType()) || root(operand) != buffer) continue;
        auto l = mlir::dyn_cast<mlir::memref::LoadOp>(other);
        if (l && !load && l->getBlock() == body && l.getMemRef() == store.getMemRef() &&
            l.getIndices() == store.getIndices() && l->isBeforeInBlock(store))
          load = l;
        else
          alone = false;
      }
    });
    if (alone && load) found.push_back({load, store});
  }
  return found;
}

void promote(mlir::scf::ForOp loop) {
  llvm::SmallVector<Accumulator> pairs = accumulators(loop);
  if (pairs.empty()) return;
  mlir::IRRewriter rewriter(loop.getContext());
  rewriter.setInsertionPoint(loop);
  llvm::SmallVector<mlir::Value> inits;
  for (Accumulator a : pairs)
    inits.push_back(rewriter.create<mlir::memref::LoadOp>(a.load.getLoc(), a.load.getMemRef(), a.load.getIndices()));
  auto replaced = mlir::cast<mlir::LoopLikeOpInterface>(loop.getOperation())
                      .replaceWithAdditionalYields(rewriter, inits, /*replaceInitOperandUsesInLoop=*/false,
                                                   [&](mlir::OpBuilder&, mlir::Location, llvm::ArrayRef<mlir::BlockArgument>) {
                                                     llvm::SmallVector<mlir::Value> yields;
                                                     for (Accumulator a : pairs)
                                                       yields.push_back(a.store.getValueToStore());
                                                     return yields;
                                                   });
  if (mlir::failed(replaced)) return;
  auto promoted = mlir::cast<mlir::scf::ForOp>(replaced->getOperation());
  unsigned first = promoted.getNumRegionIterArgs() - static_cast<unsigned>(pairs.size());
  rewriter.setInsertionPointAfter(promoted);
  for (auto [k, a] : llvm::enumerate(pairs)) {
    unsigned n = first + static_cast<unsigned>(k);
    rewriter.replaceAllUsesWith(a.load.getResult(), promoted.getRegionIterArgs()[n]);
    rewriter.create<mlir::memref::StoreOp>(a.store.getLoc(), promoted.getResult(n), a.store.getMemRef(),
                                           a.store.getIndices());
    rewriter.eraseOp(a.load);
    rewriter.eraseOp(a.store);
  }
}

}  // namespace

void promote_accumulators(mlir::ModuleOp module) {
  // Innermost loops first: an accumulator promoted out of an inner loop may
  // then be promoted out of the loop around it.
  llvm::SmallVector<mlir::scf::ForOp> loops;
  module.walk<mlir::WalkOrder::PostOrder>([&](mlir::scf::ForOp loop) { loops.push_back(loop); });
  for (mlir::scf::ForOp loop : loops) promote(loop);
}

}  // namespace kiln::codegen
