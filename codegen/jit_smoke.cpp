#include "codegen/jit_smoke.h"

#include <llvm/ExecutionEngine/Orc/JITTargetMachineBuilder.h>
#include <llvm/Support/TargetSelect.h>
#include <llvm/Support/raw_ostream.h>
#include <llvm/Target/TargetMachine.h>
#include <mlir/ExecutionEngine/ExecutionEngine.h>
#include <mlir/ExecutionEngine/OptUtils.h>
#include <mlir/IR/BuiltinOps.h>
#include <mlir/IR/Diagnostics.h>
#include <mlir/IR/MLIRContext.h>
#include <mlir/Interfaces/FunctionInterfaces.h>
#include <mlir/Parser/Parser.h>
#include <mlir/Pass/PassManager.h>
#include <mlir/Pass/PassRegistry.h>

#include <fmt/ranges.h>

#include <algorithm>
#include <utility>

#include "ir/dialects.h"
#include "passes/registration.h"

namespace kiln::codegen {
namespace {

// The PassManager is anchored on builtin.module, so the pipeline must not be
// wrapped in builtin.module(...): that would run it on nested modules only,
// i.e. on nothing. expand-strided-metadata emits affine.apply, hence
// lower-affine after it; both precede the scf and memref conversions.
constexpr std::string_view kLowerToLLVM =
    "func.func(convert-linalg-to-loops),expand-strided-metadata,lower-affine,"
    "convert-scf-to-cf,finalize-memref-to-llvm,convert-math-to-llvm,"
    "convert-arith-to-llvm,convert-func-to-llvm,convert-cf-to-llvm,"
    "reconcile-unrealized-casts";

constexpr unsigned kOptLevel = 2;

llvm::StringRef ref(std::string_view s) { return {s.data(), s.size()}; }

// Collects diagnostics into a string for the exception, instead of letting
// MLIR print them to stderr. Appends only: throwing from the handler would
// unwind through MLIR, which is built without exceptions.
class DiagnosticCapture {
 public:
  explicit DiagnosticCapture(mlir::MLIRContext& context)
      : handler_(&context, [this](mlir::Diagnostic& diag) {
          append(diag);
          return mlir::success();
        }) {}

  std::string take() {
    while (!text_.empty() && text_.back() == '\n') text_.pop_back();
    return std::exchange(text_, {});
  }

 private:
  void append(mlir::Diagnostic& diag) {
    llvm::raw_string_ostream os(text_);
    print(os, diag);
    for (mlir::Diagnostic& note : diag.getNotes()) print(os, note);
  }

  static void print(llvm::raw_ostream& os, mlir::Diagnostic& diag) {
    // "input:3:12: error: ...", like mlir-opt, whatever wraps the location.
    if (auto loc = diag.getLocation()->findInstanceOf<mlir::FileLineColLoc>())
      os << loc.getFilename().getValue() << ':' << loc.getLine() << ':' << loc.getColumn();
    else
      os << diag.getLocation();
    switch (diag.getSeverity()) {
      case mlir::DiagnosticSeverity::Error: os << ": error: "; break;
      case mlir::DiagnosticSeverity::Warning: os << ": warning: "; break;
      case mlir::DiagnosticSeverity::Note: os << ": note: "; break;
      case mlir::DiagnosticSeverity::Remark: os << ": remark: "; break;
    }
    os << diag << '\n';
  }

  std::string text_;
  mlir::ScopedDiagnosticHandler handler_;
};

mlir::OwningOpRef<mlir::ModuleOp> parse_and_lower(mlir::MLIRContext& context,
                                                  std::string_view source,
                                                  DiagnosticCapture& diags) {
  mlir::ParserConfig config(&context);
  auto module = mlir::parseSourceString<mlir::ModuleOp>(ref(source), config, "input");
  if (!module) fail<JitError>("kiln::codegen: parsing the MLIR input failed:\n{}", diags.take());

  passes::register_upstream_passes();
  mlir::PassManager pm(&context, mlir::ModuleOp::getOperationName());
  std::string pipeline_error;
  llvm::raw_string_ostream pipeline_os(pipeline_error);
  if (mlir::failed(mlir::parsePassPipeline(ref(kLowerToLLVM), pm, pipeline_os)))
    fail<JitError>("kiln::codegen: invalid lowering pipeline '{}': {}", kLowerToLLVM,
                   pipeline_error);
  // Conversions are partial: an op they cannot convert (a tensor op, say)
  // is left in place without an error, and would only surface as a vaguer
  // translation failure. Name the innermost such op (walks are post-order).
  bool lowered = mlir::succeeded(pm.run(*module));
  if (lowered) {
    module->walk([&](mlir::Operation* op) {
      if (op == module->getOperation() || op->getName().getDialectNamespace() == "llvm")
        return mlir::WalkResult::advance();
      op->emitError() << "'" << op->getName() << "' was not lowered to the llvm dialect";
      lowered = false;
      return mlir::WalkResult::interrupt();
    });
  }
  if (!lowered)
    fail<JitError>("kiln::codegen: lowering to the llvm dialect failed:\n{}", diags.take());
  return module;
}

void initialize_native_target() {
  static const bool done = [] {
    llvm::InitializeNativeTarget();
    llvm::InitializeNativeTargetAsmPrinter();
    return true;
  }();
  (void)done;
}

// The host CPU with all its features (AVX-512 here), so that LLVM's
// vectorizers see the real vector width. The JIT compiles with this machine
// itself, so its codegen level is the one that counts.
std::unique_ptr<llvm::TargetMachine> host_target_machine() {
  auto builder = llvm::orc::JITTargetMachineBuilder::detectHost();
  if (!builder)
    fail<JitError>("kiln::codegen: detecting the host CPU failed: {}",
                   llvm::toString(builder.takeError()));
  builder->setCodeGenOptLevel(llvm::CodeGenOptLevel::Default);
  auto machine = builder->createTargetMachine();
  if (!machine)
    fail<JitError>("kiln::codegen: creating a target machine failed: {}",
                   llvm::toString(machine.takeError()));
  return std::move(*machine);
}

}  // namespace

std::string lower_to_llvm_dialect(std::string_view mlir_source) {
  auto context = ir::make_context();
  DiagnosticCapture diags(*context);
  auto module = parse_and_lower(*context, mlir_source, diags);
  std::string text;
  llvm::raw_string_ostream os(text);
  module->print(os);
  return text;
}

struct CpuJit::Impl {
  std::unique_ptr<mlir::ExecutionEngine> engine;
  std::vector<std::string> functions;
};

CpuJit::CpuJit(std::string_view mlir_source) : impl_(std::make_unique<Impl>()) {
  initialize_native_target();
  // The context only lives through compilation: the engine owns its own
  // LLVM module and context.
  auto context = ir::make_context();
  DiagnosticCapture diags(*context);
  auto module = parse_and_lower(*context, mlir_source, diags);
  for (auto fn : module->getOps<mlir::FunctionOpInterface>())
    if (!fn.isExternal()) impl_->functions.push_back(fn.getName().str());
  std::sort(impl_->functions.begin(), impl_->functions.end());

  auto machine = host_target_machine();
  // The optimizer runs inside create(), after the engine has taken ownership
  // of `machine`; the raw pointer stays valid.
  auto optimize = mlir::makeOptimizingTransformer(kOptLevel, /*sizeLevel=*/0, machine.get());
  mlir::ExecutionEngineOptions options;
  options.transformer = optimize;
  options.jitCodeGenOptLevel = llvm::CodeGenOptLevel::Default;
  auto engine = mlir::ExecutionEngine::create(*module, options, std::move(machine));
  if (!engine)
    fail<JitError>("kiln::codegen: JIT compilation failed: {}\n{}",
                   llvm::toString(engine.takeError()), diags.take());
  impl_->engine = std::move(*engine);
}

CpuJit::~CpuJit() = default;
CpuJit::CpuJit(CpuJit&&) noexcept = default;
CpuJit& CpuJit::operator=(CpuJit&&) noexcept = default;

const std::vector<std::string>& CpuJit::functions() const { return impl_->functions; }

void* CpuJit::lookup(std::string_view symbol) const {
  auto address = impl_->engine->lookup(ref(symbol));
  if (!address)
    fail<JitError>("kiln::codegen: no symbol '{}' in the JIT module ({}); functions: {}", symbol,
                   llvm::toString(address.takeError()), fmt::join(impl_->functions, ", "));
  return *address;
}

void CpuJit::invoke_packed(std::string_view name, std::span<void*> args) const {
  // Checked here so that a typo is a JitError listing the choices, not a
  // lookup of the wrapper "_mlir_<name>", which the user never wrote.
  if (!std::binary_search(impl_->functions.begin(), impl_->functions.end(), name))
    fail<JitError>("kiln::codegen: no function '{}' in the JIT module; functions: {}", name,
                   fmt::join(impl_->functions, ", "));
  if (auto error = impl_->engine->invokePacked(ref(name), {args.data(), args.size()}))
    fail<JitError>("kiln::codegen: calling '{}' failed: {}", name,
                   llvm::toString(std::move(error)));
}

}  // namespace kiln::codegen
