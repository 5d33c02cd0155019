#include "tracer/ir_builder.h"

#include <algorithm>

#include <mlir/Bytecode/BytecodeWriter.h>
#include <mlir/Dialect/Func/IR/FuncOps.h>
#include <mlir/IR/Builders.h>
#include <mlir/IR/BuiltinOps.h>
#include <mlir/IR/Diagnostics.h>
#include <mlir/IR/Verifier.h>
#include <mlir/Parser/Parser.h>
#include <llvm/Support/MemoryBuffer.h>
#include <llvm/Support/SourceMgr.h>

#include "ir/dialect.h"
#include "ir/dialects.h"
#include "codegen/cpu_compiler.h"
#include "passes/simplify.h"

namespace kiln {

namespace {

// Collects MLIR's diagnostics, so a failure can be raised as one IrError.
class Diagnostics {
 public:
  explicit Diagnostics(mlir::MLIRContext* context)
      : handler_(context, [this](mlir::Diagnostic& d) {
          text_ += (text_.empty() ? "" : "\n") + where(d.getLocation()) + ": " + d.str();
          return mlir::success();
        }) {}
  const std::string& text() const { return text_; }

 private:
  // "file:line:col" as compilers print it; other locations as MLIR does.
  static std::string where(mlir::Location loc) {
    if (auto file = mlir::dyn_cast<mlir::FileLineColLoc>(loc))
      return fmt::format("{}:{}:{}", file.getFilename().str(), file.getLine(), file.getColumn());
    std::string text;
    llvm::raw_string_ostream os(text);
    loc.print(os);
    return text;
  }

  std::string text_;
  mlir::ScopedDiagnosticHandler handler_;
};

mlir::Location location_of(mlir::MLIRContext* context, const std::string& where) {
  // "file.py:12" -> file, line; anything else is a name.
  size_t colon = where.rfind(':');
  if (colon != std::string::npos && colon + 1 < where.size() &&
      where.find_first_not_of("0123456789", colon + 1) == std::string::npos)
    return mlir::FileLineColLoc::get(context, where.substr(0, colon), std::stoul(where.substr(colon + 1)), 0);
  if (where.empty()) return mlir::UnknownLoc::get(context);
  return mlir::NameLoc::get(mlir::StringAttr::get(context, where));
}

class Builder {
 public:
  explicit Builder(mlir::MLIRContext* context) : context_(context), b_(context) {
    context->loadDialect<mlir::func::FuncDialect, ir::KilnDialect>();
  }

  mlir::OwningOpRef<mlir::ModuleOp> build(const TracedFunction& fn, bool observe_all = false) {
    const Graph& g = fn.graph;
    std::vector<ValueId> observed;
    if (observe_all)
      for (const GraphNode& node : g.nodes) observed.insert(observed.end(), node.outputs.begin(), node.outputs.end());
    auto module = mlir::ModuleOp::create(b_.getUnknownLoc());
    std::vector<mlir::Type> arg_types, result_types;
    for (ValueId id : g.arguments) arg_types.push_back(type(g.values[id]));
    for (ValueId id : g.captures) arg_types.push_back(type(g.values[id]));
    for (ValueId id : g.results) result_types.push_back(type(g.values[id]));
    for (const auto& wb : g.writebacks) result_types.push_back(type(g.values[wb.value]));
    for (ValueId id : observed) result_types.push_back(type(g.values[id]));

    b_.setInsertionPointToEnd(module.getBody());
    auto func = b_.create<mlir::func::FuncOp>(mlir::NameLoc::get(b_.getStringAttr(g.name)), g.name,
                                              b_.getFunctionType(arg_types, result_types));
    for (size_t i = 0; i < g.captures.size(); ++i)
      func.setArgAttr(g.arguments.size() + i, "kiln.capture", b_.getI64IntegerAttr(static_cast<int64_t>(i)));
    for (const auto& gw : fn.grad_writebacks)
      if (gw.value != kNoValue)
        func.setResultAttr(static_cast<unsigned>(gw.value), "kiln.grad_of", b_.getI64IntegerAttr(gw.capture_index));
    for (size_t k = 0; k < g.writebacks.size(); ++k)
      func.setResultAttr(static_cast<unsigned>(g.results.size() + k), "kiln.writeback",
                         b_.getI64IntegerAttr(g.writebacks[k].capture_index));
    size_t first_observed = g.results.size() + g.writebacks.size();
    for (size_t k = 0; k < observed.size(); ++k)
      func.setResultAttr(static_cast<unsigned>(first_observed + k), "kiln.observe", b_.getI64IntegerAttr(observed[k]));

    mlir::Block* entry = func.addEntryBlock();
    std::vector<mlir::Value> values(g.values.size());
    std::vector<ValueId> inputs = g.arguments;
    inputs.insert(inputs.end(), g.captures.begin(), g.captures.end());
    for (size_t i = 0; i < inputs.size(); ++i) values[inputs[i]] = entry->getArgument(static_cast<unsigned>(i));
    b_.setInsertionPointToEnd(entry);
    emit_nodes(g, values);
    std::vector<mlir::Value> returned;
    for (ValueId id : g.results) returned.push_back(values[id]);
    for (const auto& wb : g.writebacks) returned.push_back(values[wb.value]);
    for (ValueId id : observed) returned.push_back(values[id]);
    b_.create<mlir::func::ReturnOp>(func.getLoc(), returned);
    return module;
  }

 private:
  mlir::Type type(const TensorType& t) { return ir::tensor_type(context_, t); }

  void emit_nodes(const Graph& g, std::vector<mlir::Value>& values) {
    for (const GraphNode& node : g.nodes) {
      std::string name = "kiln." + node.op->name;
      // Building an op MLIR does not know aborts the process: refuse first.
      KILN_CHECK(mlir::RegisteredOperationName::lookup(name, context_), IrError,
                 "{}: op '{}' has no kiln dialect definition (rebuild kiln: the dialect is generated from the "
                 "op registry)",
                 g.name, name);
      mlir::OperationState state(location_of(context_, node.location), name);
      for (const auto& [name, value] : node.attrs.items())
        if (mlir::Attribute attr = ir::to_mlir_attr(context_, value)) state.addAttribute(name, attr);
      if (node.regions.empty()) {
        add_operands(node, values, state);
      } else {
        for (ValueId id : node.inputs) state.addOperands(values[id]);
      }
      for (ValueId id : node.outputs) state.addTypes(type(g.values[id]));
      std::vector<mlir::Region*> regions;
      for (size_t r = 0; r < node.regions.size(); ++r) regions.push_back(state.addRegion());
      mlir::Operation* op = b_.create(state);
      for (size_t r = 0; r < node.regions.size(); ++r) emit_region(*node.regions[r], op->getRegion(static_cast<unsigned>(r)));
      for (size_t k = 0; k < node.outputs.size(); ++k) values[node.outputs[k]] = op->getResult(static_cast<unsigned>(k));
    }
  }

  void emit_region(const Graph& g, mlir::Region& region) {
    mlir::OpBuilder::InsertionGuard guard(b_);
    mlir::Block* block = b_.createBlock(&region);
    std::vector<mlir::Value> values(g.values.size());
    for (ValueId id : g.arguments) values[id] = block->addArgument(type(g.values[id]), b_.getUnknownLoc());
    emit_nodes(g, values);
    std::vector<mlir::Value> yielded;
    for (ValueId id : g.results) yielded.push_back(values[id]);
    b_.create<ir::YieldOp>(b_.getUnknownLoc(), yielded);
  }

  // The node's inputs as operands, per the op's OperandSpecs: absent
  // optional operands are left out, and operandSegmentSizes says how many
  // each operand has when more than one is optional or variadic (the
  // generated op then carries AttrSizedOperandSegments).
  void add_operands(const GraphNode& node, const std::vector<mlir::Value>& values, mlir::OperationState& state) {
    std::vector<OperandSpec> specs = operand_specs(*node.op);
    std::vector<int32_t> sizes;
    int non_fixed = 0;
    size_t next = 0;
    for (const OperandSpec& spec : specs) {
      size_t count = spec.kind == OperandSpec::Variadic ? node.inputs.size() - (specs.size() - 1) : 1;
      std::vector<bool> present;
      for (size_t k = 0; k < count; ++k) {
        ValueId id = node.inputs.at(next++);
        present.push_back(id != kNoValue);
        if (id != kNoValue) state.addOperands(values[id]);
      }
      int32_t n = static_cast<int32_t>(std::count(present.begin(), present.end(), true));
      sizes.push_back(n);
      non_fixed += spec.kind != OperandSpec::Required;
      if (spec.holes && n != static_cast<int32_t>(count)) {
        llvm::SmallVector<bool> mask(present.begin(), present.end());
        state.addAttribute(spec.name + "_present", b_.getDenseBoolArrayAttr(mask));
      }
    }
    if (non_fixed > 1) state.addAttribute("operandSegmentSizes", b_.getDenseI32ArrayAttr(sizes));
  }

  mlir::MLIRContext* context_;
  mlir::OpBuilder b_;
};

std::string print(mlir::ModuleOp module, const IrPrintOptions& options) {
  mlir::OpPrintingFlags flags;
  if (options.locations) flags.enableDebugInfo(/*enable=*/true, /*prettyForm=*/false);
  if (options.generic) flags.printGenericOpForm();
  std::string text;
  llvm::raw_string_ostream os(text);
  module.print(os, flags);
  return text;
}

void verify(mlir::ModuleOp module, const Diagnostics& diagnostics, std::string_view what) {
  if (mlir::failed(mlir::verify(module)))
    fail<IrError>("{}: the kiln IR does not verify:\n{}", what, diagnostics.text());
}

mlir::OwningOpRef<mlir::ModuleOp> build_verified(mlir::MLIRContext* context, const TracedFunction& fn,
                                                 bool observe_all = false) {
  Diagnostics diagnostics(context);
  mlir::OwningOpRef<mlir::ModuleOp> module = Builder(context).build(fn, observe_all);
  verify(*module, diagnostics, fn.graph.name);
  return module;
}

mlir::OwningOpRef<mlir::ModuleOp> parse(mlir::MLIRContext* context, std::string_view source) {
  Diagnostics diagnostics(context);
  mlir::ParserConfig config(context);
  mlir::OwningOpRef<mlir::ModuleOp> module =
      mlir::parseSourceString<mlir::ModuleOp>(llvm::StringRef(source.data(), source.size()), config, "kiln-ir");
  if (!module) fail<IrError>("the kiln IR does not parse:\n{}", diagnostics.text());
  verify(*module, diagnostics, "kiln-ir");
  return module;
}

std::string bytecode(mlir::ModuleOp module) {
  std::string bytes;
  llvm::raw_string_ostream os(bytes);
  if (mlir::failed(mlir::writeBytecodeToFile(module, os))) fail<IrError>("writing MLIR bytecode failed");
  return bytes;
}

}  // namespace

std::string traced_ir(const TracedFunction& fn, std::string_view stage, const IrPrintOptions& options) {
  KILN_CHECK(std::find(std::begin(kIrStages), std::end(kIrStages), stage) != std::end(kIrStages), ValueError,
             "{}: no IR stage '{}'; the stages are 'traced', 'simplified', 'decomposed', 'linalg', 'fused', 'bufferized', "
             "'llvm', 'optimized'",
             fn.graph.name, stage);
  auto context = ir::make_context();
  mlir::OwningOpRef<mlir::ModuleOp> module = build_verified(context.get(), fn, options.observe_all);
  if (stage != "traced" && stage != "simplified")
    return codegen::compile_stage_ir(print(*module, {.locations = true}), stage, options.locations);
  if (stage == "simplified") passes::simplify(*module);
  return print(*module, options);
}

std::string traced_bytecode(const TracedFunction& fn) {
  auto context = ir::make_context();
  return bytecode(*build_verified(context.get(), fn));
}

std::string reprint_ir(std::string_view text_or_bytecode, const IrPrintOptions& options) {
  auto context = ir::make_context();
  return print(*parse(context.get(), text_or_bytecode), options);
}

std::string simplify_ir(std::string_view text_or_bytecode, const IrPrintOptions& options) {
  auto context = ir::make_context();
  mlir::OwningOpRef<mlir::ModuleOp> module = parse(context.get(), text_or_bytecode);
  passes::simplify(*module);
  return print(*module, options);
}

std::string ir_to_bytecode(std::string_view text) {
  auto context = ir::make_context();
  return bytecode(*parse(context.get(), text));
}

}  // namespace kiln
