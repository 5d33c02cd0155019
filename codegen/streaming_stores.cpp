#include "codegen/streaming_stores.h"

#include <mlir/Dialect/Arith/IR/Arith.h>
#include <mlir/Dialect/Func/IR/FuncOps.h>
#include <mlir/Dialect/MemRef/IR/MemRef.h>
#include <mlir/Dialect/SCF/IR/SCF.h>
#include <mlir/Dialect/Utils/StaticValueUtils.h>
#include <mlir/IR/Builders.h>
#include <mlir/IR/BuiltinOps.h>
#include <mlir/Interfaces/ViewLikeInterface.h>

#include "runtime/allocator.h"

namespace kiln::codegen {
namespace {

mlir::Value root(mlir::Value v) {
  while (auto view = v.getDefiningOp<mlir::ViewLikeOpInterface>()) v = view.getViewSource();
  return v;
}

// The stores into `out` if the kernel only writes it. A buffer it also
// reads (softmax normalizing the exponentials it stored) is in cache by its
// last store, where a streaming store would first have to evict the line.
llvm::SmallVector<mlir::memref::StoreOp> write_only_stores(mlir::func::FuncOp kernel, mlir::Value out) {
  llvm::SmallVector<mlir::memref::StoreOp> stores;
  bool read = false;
  kernel.walk([&](mlir::Operation* op) {
    if (mlir::isa<mlir::ViewLikeOpInterface>(op)) return;  // its users are what count
    auto store = mlir::dyn_cast<mlir::memref::StoreOp>(op);
    if (store && root(store.getMemRef()) == out && root(store.getValueToStore()) != out) {
      stores.push_back(store);
      return;
    }
    for (mlir::Value operand : op->getOperands())
      read |= mlir::isa<mlir::MemRefType>(operand.getType()) && root(operand) == out;
  });
  if (read) stores.clear();
  return stores;
}

// The loop at the kernel's top level that `op` is in (null if none).
mlir::scf::ForOp top_loop(mlir::Operation* op, mlir::Block& body) {
  while (op && op->getBlock() != &body) op = op->getParentOp();
  return op ? mlir::dyn_cast<mlir::scf::ForOp>(op) : nullptr;
}

bool is_constant(mlir::Value v, int64_t c) { return mlir::getConstantIntValue(v) == c; }

// Whether `store` runs once for every element of `out`'s rows in its top
// loop `last`: out[i, j, ...] in a perfect nest whose inner loops run each
// dimension whole.
bool writes_every_element(mlir::memref::StoreOp store, mlir::scf::ForOp last, mlir::MemRefType type) {
  mlir::ValueRange index = store.getIndices();
  mlir::Operation* parent = last;
  for (int64_t d = 1; d < type.getRank(); ++d) {
    mlir::scf::ForOp loop = mlir::scf::getForInductionVarOwner(index[d]);
    if (!loop || loop->getParentOp() != parent || !is_constant(loop.getLowerBound(), 0) ||
        !is_constant(loop.getUpperBound(), type.getDimSize(d)) || !is_constant(loop.getStep(), 1))
      return false;
    parent = loop;
  }
  return store->getParentOp() == parent;
}

// A tiled kernel's output that earlier loops write and its last loop reads
// back and rewrites in place (softmax: exponentials, then scaled by 1/sum)
// would reach its final store already in cache, where streaming cannot
// help. The earlier values go instead to a scratch buffer of the call's
// rows on the stack (this call's rows [begin, end), at most a few rows:
// cpu_program.cpp), so the output is only written, once.
void stage_rewritten_output(mlir::func::FuncOp kernel, mlir::BlockArgument out) {
  auto type = mlir::cast<mlir::MemRefType>(out.getType());
  auto extent = kernel->getAttrOfType<mlir::IntegerAttr>("kiln.tile_extent");
  if (type.getRank() == 0 || !extent || extent.getInt() == 0 || kernel->hasAttr("kiln.tile_columns")) return;
  int64_t row_bytes = type.getElementTypeBitWidth() / 8;
  for (int64_t d = 1; d < type.getRank(); ++d) row_bytes *= type.getDimSize(d);
  if (row_bytes > kScratchRowBytes) return;
  mlir::Block& body = kernel.getBody().front();
  mlir::Value begin = body.getArgument(0), end = body.getArgument(1);
  llvm::SmallVector<mlir::Operation*> accesses;
  mlir::scf::ForOp last;
  for (mlir::Operation* user : out.getUsers()) {
    auto load = mlir::dyn_cast<mlir::memref::LoadOp>(user);
    auto store = mlir::dyn_cast<mlir::memref::StoreOp>(user);
    if (!load && !store) return;
    if (store && store.getValueToStore() == out) return;
    mlir::scf::ForOp loop = top_loop(user, body);
    if (!loop || loop.getLowerBound() != begin || loop.getUpperBound() != end) return;
    if ((load ? load.getIndices() : store.getIndices())[0] != loop.getInductionVar()) return;
    if (!last || last->isBeforeInBlock(loop)) last = loop;
    accesses.push_back(user);
  }
  if (!last) return;
  mlir::memref::StoreOp final_store;
  bool earlier = false, reread = false;
  for (mlir::Operation* access : accesses) {
    if (top_loop(access, body) != last) {
      earlier = true;
      continue;
    }
    if (auto store = mlir::dyn_cast<mlir::memref::StoreOp>(access)) {
      if (final_store) return;
      final_store = store;
    } else {
      reread = true;
    }
  }
  if (!final_store || !earlier || !reread || !writes_every_element(final_store, last, type)) return;
  for (mlir::Operation* access : accesses)
    if (auto load = mlir::dyn_cast<mlir::memref::LoadOp>(access);
        load && top_loop(load, body) == last && load.getIndices() != final_store.getIndices())
      return;  // it could read an element this loop already rewrote

  mlir::OpBuilder b = mlir::OpBuilder::atBlockBegin(&body);
  mlir::Location loc = kernel.getLoc();
  llvm::SmallVector<int64_t> shape(type.getShape());
  shape[0] = mlir::ShapedType::kDynamic;
  mlir::Value rows = b.create<mlir::arith::SubIOp>(loc, end, begin);
  mlir::Value scratch = b.create<mlir::memref::AllocaOp>(loc, mlir::MemRefType::get(shape, type.getElementType()),
                                                        mlir::ValueRange{rows});
  for (mlir::Operation* access : accesses) {
    if (access == final_store.getOperation()) continue;
    b.setInsertionPoint(access);
    auto redirect = [&](auto op) {
      mlir::OpOperand& row = op.getIndicesMutable()[0];
      row.set(b.create<mlir::arith::SubIOp>(op.getLoc(), row.get(), begin));
      op.getMemrefMutable().assign(scratch);
    };
    if (auto load = mlir::dyn_cast<mlir::memref::LoadOp>(access))
      redirect(load);
    else
      redirect(mlir::cast<mlir::memref::StoreOp>(access));
  }
}

}  // namespace

void mark_streaming_stores(mlir::ModuleOp module) {
  for (auto kernel : module.getOps<mlir::func::FuncOp>()) {
    auto inputs = kernel->getAttrOfType<mlir::IntegerAttr>("kiln.inputs");
    if (!inputs || kernel.isExternal()) continue;
    mlir::OpBuilder b = mlir::OpBuilder::atBlockBegin(&kernel.getBody().front());
    for (unsigned i = 2 + static_cast<unsigned>(inputs.getInt()); i < kernel.getNumArguments(); ++i) {
      mlir::BlockArgument out = kernel.getArgument(i);
      auto type = mlir::dyn_cast<mlir::MemRefType>(out.getType());
      if (!type || !type.hasStaticShape() || !type.getLayout().isIdentity() || !type.getElementType().isIntOrFloat())
        continue;
      if (type.getNumElements() * type.getElementTypeBitWidth() / 8 < kStreamingStoreBytes) continue;
      stage_rewritten_output(kernel, out);
      llvm::SmallVector<mlir::memref::StoreOp> stores = write_only_stores(kernel, out);
      if (stores.empty()) continue;
      for (mlir::memref::StoreOp store : stores) store.setNontemporal(true);
      b.create<mlir::memref::AssumeAlignmentOp>(kernel.getLoc(), out, static_cast<uint32_t>(kCpuAlignment));
    }
  }
}

}  // namespace kiln::codegen
