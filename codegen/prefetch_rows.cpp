#include "codegen/prefetch_rows.h"

#include <mlir/Dialect/Arith/IR/Arith.h>
#include <mlir/Dialect/Func/IR/FuncOps.h>
#include <mlir/Dialect/MemRef/IR/MemRef.h>
#include <mlir/Dialect/SCF/IR/SCF.h>
#include <mlir/Dialect/Utils/StaticValueUtils.h>
#include <mlir/IR/Builders.h>
#include <mlir/IR/BuiltinOps.h>

#include "codegen/streaming_stores.h"

namespace kiln::codegen {
namespace {

// 16 cache lines of float32 per burst of prefetches (as many as L1 has fill
// buffers), into L1 (softmax of 4096 x 4096: 3.7 against 4.25 ms without;
// chunks of 128, 384, 512 or 1024 columns, or into L2, measured no better)
constexpr int64_t kChunkElements = 256;
constexpr int64_t kLineBytes = 64;

bool is_constant(mlir::Value v, int64_t c) { return mlir::getConstantIntValue(v) == c; }

// The loop directly in `row_loop`'s body that runs x's columns [0, n) and
// loads x[row, column] (null if none).
mlir::scf::ForOp column_loop(mlir::scf::ForOp row_loop, mlir::Value x, int64_t n) {
  for (mlir::Operation& op : *row_loop.getBody()) {
    auto loop = mlir::dyn_cast<mlir::scf::ForOp>(op);
    if (!loop || !is_constant(loop.getLowerBound(), 0) || !is_constant(loop.getUpperBound(), n) ||
        !is_constant(loop.getStep(), 1))
      continue;
    bool reads = false;
    loop.getBody()->walk([&](mlir::memref::LoadOp load) {
      reads |= load.getMemRef() == x && load.getIndices()[0] == row_loop.getInductionVar() &&
               load.getIndices()[1] == loop.getInductionVar();
    });
    if (reads) return loop;
  }
  return nullptr;
}

// Splits `loop` (columns [0, n) of row `row`) into chunks, each followed by
// prefetches of the same columns of row `next`.
void chunk_and_prefetch(mlir::scf::ForOp loop, mlir::Value x, mlir::Value next, int64_t n, int64_t itemsize) {
  mlir::OpBuilder b(loop);
  mlir::Location loc = loop.getLoc();
  auto index = [&](int64_t v) { return b.create<mlir::arith::ConstantIndexOp>(loc, v); };
  mlir::Value zero = index(0), end = index(n), chunk = index(kChunkElements);
  mlir::Value line = index(std::max<int64_t>(1, kLineBytes / itemsize));
  auto chunks = b.create<mlir::scf::ForOp>(loc, zero, end, chunk, loop.getInitArgs());
  loop->replaceAllUsesWith(chunks.getResults());
  mlir::Block* body = chunks.getBody();
  if (!body->empty() && mlir::isa<mlir::scf::YieldOp>(body->back())) body->back().erase();
  loop->moveBefore(body, body->end());
  b.setInsertionPoint(loop);
  mlir::Value from = chunks.getInductionVar();
  // (a whole number of chunks keeps the trip counts constant, so LLVM
  // needs no remainder handling per chunk)
  mlir::Value to = b.create<mlir::arith::AddIOp>(loc, from, chunk);
  if (n % kChunkElements != 0) to = b.create<mlir::arith::MinSIOp>(loc, to, end);
  loop.getLowerBoundMutable().assign(from);
  loop.getUpperBoundMutable().assign(to);
  loop.getInitArgsMutable().assign(chunks.getRegionIterArgs());
  b.setInsertionPointAfter(loop);
  auto prefetches = b.create<mlir::scf::ForOp>(loc, from, to, line);
  b.setInsertionPointToStart(prefetches.getBody());
  b.create<mlir::memref::PrefetchOp>(loc, x, mlir::ValueRange{next, prefetches.getInductionVar()},
                                     /*isWrite=*/false, /*localityHint=*/3, /*isDataCache=*/true);
  b.setInsertionPointAfter(prefetches);
  b.create<mlir::scf::YieldOp>(loc, loop.getResults());
}

}  // namespace

void prefetch_next_rows(mlir::ModuleOp module) {
  for (auto kernel : module.getOps<mlir::func::FuncOp>()) {
    auto inputs = kernel->getAttrOfType<mlir::IntegerAttr>("kiln.inputs");
    auto extent = kernel->getAttrOfType<mlir::IntegerAttr>("kiln.tile_extent");
    if (!inputs || !extent || extent.getInt() == 0 || kernel->hasAttr("kiln.tile_columns") || kernel.isExternal())
      continue;
    mlir::Block& body = kernel.getBody().front();
    mlir::Value begin = body.getArgument(0), end = body.getArgument(1);
    llvm::SmallVector<mlir::scf::ForOp> row_loops;
    for (mlir::Operation& op : body)
      if (auto loop = mlir::dyn_cast<mlir::scf::ForOp>(op); loop && loop.getLowerBound() == begin && loop.getUpperBound() == end)
        row_loops.push_back(loop);
    for (unsigned i = 2; i < 2 + static_cast<unsigned>(inputs.getInt()) && i < kernel.getNumArguments(); ++i) {
      mlir::Value x = kernel.getArgument(i);
      auto type = mlir::dyn_cast<mlir::MemRefType>(x.getType());
      if (!type || type.getRank() != 2 || !type.hasStaticShape() || !type.getLayout().isIdentity() ||
          type.getDimSize(0) != extent.getInt() || !type.getElementType().isIntOrFloat())
        continue;
      int64_t itemsize = type.getElementTypeBitWidth() / 8, n = type.getDimSize(1);
      if (itemsize == 0 || type.getNumElements() * itemsize < kStreamingStoreBytes || n < kChunkElements) continue;
      // the pass that first reads x's rows, and the next one that reads them again
      mlir::scf::ForOp first, again;
      for (mlir::scf::ForOp row_loop : row_loops) {
        if (!column_loop(row_loop, x, n)) continue;
        if (!first) {
          first = row_loop;
        } else {
          again = row_loop;
          break;
        }
      }
      // Only a pass that computes enough to hide the prefetches behind:
      // one with a transcendental (softmax's exp). layer_norm's passes are
      // memory-bound already, and measured slower with them.
      mlir::scf::ForOp columns = again ? column_loop(again, x, n) : nullptr;
      bool heavy = false;
      if (columns)
        columns->walk([&](mlir::Operation* op) {
          heavy |= op->getDialect() && op->getDialect()->getNamespace() == "math";
        });
      if (!heavy) continue;
      mlir::OpBuilder b = mlir::OpBuilder::atBlockBegin(again.getBody());
      mlir::Location loc = again.getLoc();
      mlir::Value last = b.create<mlir::arith::ConstantIndexOp>(loc, type.getDimSize(0) - 1);
      mlir::Value next = b.create<mlir::arith::MinSIOp>(
          loc, b.create<mlir::arith::AddIOp>(loc, again.getInductionVar(), b.create<mlir::arith::ConstantIndexOp>(loc, 1)),
          last);
      chunk_and_prefetch(columns, x, next, n, itemsize);
    }
  }
}

}  // namespace kiln::codegen
