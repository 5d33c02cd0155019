#include "codegen/jit_smoke.h"

#include <algorithm>
#include <dlfcn.h>
#include <llvm/Config/llvm-config.h>
#include <llvm/ExecutionEngine/Orc/DebugObjectManagerPlugin.h>
#include <llvm/ExecutionEngine/Orc/EPCDebugObjectRegistrar.h>
#include <llvm/ExecutionEngine/Orc/ObjectLinkingLayer.h>
#include <llvm/ExecutionEngine/Orc/TargetProcess/JITLoaderGDB.h>
#include <llvm/ExecutionEngine/Orc/JITTargetMachineBuilder.h>
#include <llvm/ExecutionEngine/Orc/LLJIT.h>
#include <llvm/IR/IRBuilder.h>
#include <llvm/IR/InstIterator.h>
#include <llvm/IR/Instructions.h>
#include <llvm/IR/MDBuilder.h>
#include <llvm/IR/LegacyPassManager.h>
#include <llvm/IR/Module.h>
#include <llvm/ADT/StringExtras.h>
#include <llvm/Support/MemoryBuffer.h>
#include <llvm/Support/TargetSelect.h>
#include <llvm/Support/raw_ostream.h>
#include <llvm/Support/xxhash.h>
#include <llvm/Target/TargetMachine.h>
#include <mlir/ExecutionEngine/OptUtils.h>
#include <mlir/IR/BuiltinOps.h>
#include <mlir/IR/Diagnostics.h>
#include <mlir/IR/MLIRContext.h>
#include <mlir/Interfaces/FunctionInterfaces.h>
#include <mlir/Parser/Parser.h>
#include <mlir/Pass/PassManager.h>
#include <mlir/Pass/PassRegistry.h>
#include <mlir/Target/LLVMIR/Export.h>

#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
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

llvm::orc::JITTargetMachineBuilder host_builder() {
  auto builder = llvm::orc::JITTargetMachineBuilder::detectHost();
  if (!builder)
    fail<JitError>("kiln::codegen: detecting the host CPU failed: {}",
                   llvm::toString(builder.takeError()));
  // Kernels are long loops that own the core: use the full AVX-512 width
  // where the CPU's tuning would stop at 256 bits (measured ~1.5x on exp
  // and erf chains here).
  std::vector<std::string> features = builder->getFeatures().getFeatures();
  if (std::find(features.begin(), features.end(), "+avx512f") != features.end())
    builder->getFeatures().AddFeature("prefer-256-bit", false);
  return std::move(*builder);
}

// The host CPU with all its features (AVX-512 here), so that LLVM's
// vectorizers see the real vector width. PIC, because the object is linked
// wherever the JIT's memory lands, far from the process's own symbols.
std::unique_ptr<llvm::TargetMachine> host_target_machine() {
  auto builder = host_builder();
  builder.setCodeGenOptLevel(llvm::CodeGenOptLevel::Default);
  builder.setRelocationModel(llvm::Reloc::PIC_);
  // a * b + c becomes one fused multiply-add (one rounding instead of two, as
  // GCC and XLA do by default): elementwise kernels are bound on their
  // vector operations, and gelu(x * w + b) saves one per vector and more in
  // the division's Newton step.
  llvm::TargetOptions options;
  options.AllowFPOpFusion = llvm::FPOpFusion::Fast;
  builder.setOptions(options);
  auto machine = builder.createTargetMachine();
  if (!machine)
    fail<JitError>("kiln::codegen: creating a target machine failed: {}",
                   llvm::toString(machine.takeError()));
  return std::move(*machine);
}

// What mlir::ExecutionEngine does privately (packFunctionArguments), so that
// invoke_packed can call any function through one signature:
// `_mlir_f(void** args)` loads each argument through args[i] and stores the
// result through args[n].
void add_packed_wrappers(llvm::Module& module) {
  std::vector<llvm::Function*> defined;
  for (llvm::Function& fn : module)
    if (!fn.isDeclaration()) defined.push_back(&fn);
  llvm::IRBuilder<> builder(module.getContext());
  for (llvm::Function* fn : defined) {
    auto* type = llvm::FunctionType::get(builder.getVoidTy(), builder.getPtrTy(), false);
    auto* wrapper = llvm::Function::Create(type, llvm::GlobalValue::ExternalLinkage,
                                           "_mlir_" + fn->getName(), module);
    builder.SetInsertPoint(llvm::BasicBlock::Create(module.getContext(), "", wrapper));
    llvm::Value* packed = wrapper->getArg(0);
    auto slot = [&](uint64_t i) {
      llvm::Value* at = builder.CreateGEP(builder.getPtrTy(), packed, builder.getInt64(i));
      return builder.CreateLoad(builder.getPtrTy(), at);
    };
    std::vector<llvm::Value*> args;
    for (llvm::Argument& arg : fn->args())
      args.push_back(builder.CreateLoad(arg.getType(), slot(arg.getArgNo())));
    llvm::Value* result = builder.CreateCall(fn, args);
    if (!result->getType()->isVoidTy()) builder.CreateStore(result, slot(fn->arg_size()));
    builder.CreateRetVoid();
  }
}

// The kiln object envelope: magic (which carries the format version), then
// the xxh3 of everything after it, then length-prefixed fields. The checksum
// turns any corruption into an error before JITLink sees the bytes, and the
// target id keeps an AVX-512 object off a host without AVX-512.
constexpr std::string_view kObjectMagic{"KILNOBJ\x01", 8};

void put_field(std::string& out, std::string_view field) {
  uint64_t size = field.size();
  out.append(reinterpret_cast<const char*>(&size), sizeof size);
  out.append(field);
}

struct ObjectFields {
  std::string_view target, functions, elf;
};

std::optional<ObjectFields> try_parse_object(std::string_view object) {
  if (object.size() < kObjectMagic.size() + 8 || !object.starts_with(kObjectMagic))
    return std::nullopt;
  uint64_t checksum;
  std::memcpy(&checksum, object.data() + kObjectMagic.size(), 8);
  std::string_view rest = object.substr(kObjectMagic.size() + 8);
  if (llvm::xxh3_64bits(ref(rest)) != checksum) return std::nullopt;
  auto field = [&](std::string_view& into) {
    uint64_t size;
    if (rest.size() < sizeof size) return false;
    std::memcpy(&size, rest.data(), sizeof size);
    rest.remove_prefix(sizeof size);
    if (rest.size() < size) return false;
    into = rest.substr(0, size);
    rest.remove_prefix(size);
    return true;
  };
  ObjectFields fields;
  if (!field(fields.target) || !field(fields.functions) || !field(fields.elf) || !rest.empty())
    return std::nullopt;
  return fields;
}

ObjectFields parse_object(std::string_view object) {
  auto fields = try_parse_object(object);
  if (!fields)
    fail<JitError>("kiln::codegen: not a valid kiln object ({} bytes: truncated, corrupt or not "
                   "from compile_object); compile the module again",
                   object.size());
  return *fields;
}

// The names registered with register_host_symbol.
struct HostSymbols {
  std::mutex mutex;
  std::map<std::string, void*, std::less<>> table;
  static HostSymbols& get() {
    static HostSymbols* symbols = new HostSymbols;  // never destroyed: JITs may outlive statics
    return *symbols;
  }
};

// Python loads the extension that kiln is linked into with RTLD_LOCAL, so
// the process-wide dlsym does not see kiln's own exported C functions; a
// handle to that library does.
void* kiln_library_handle() {
  static void* handle = [] {
    Dl_info info;
    if (!dladdr(reinterpret_cast<void*>(&host_target_id), &info) || !info.dli_fname) return (void*)nullptr;
    return dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  }();
  return handle;
}

void* resolve_host_symbol(const std::string& name) {
  {
    auto& symbols = HostSymbols::get();
    std::lock_guard lock(symbols.mutex);
    if (auto it = symbols.table.find(name); it != symbols.table.end()) return it->second;
  }
  if (void* address = dlsym(RTLD_DEFAULT, name.c_str())) return address;
  if (void* library = kiln_library_handle()) return dlsym(library, name.c_str());
  return nullptr;
}

// Defines, on demand, the symbols an object needs from the host.
class HostSymbolGenerator : public llvm::orc::DefinitionGenerator {
 public:
  llvm::Error tryToGenerate(llvm::orc::LookupState&, llvm::orc::LookupKind, llvm::orc::JITDylib& dylib,
                            llvm::orc::JITDylibLookupFlags,
                            const llvm::orc::SymbolLookupSet& symbols) override {
    llvm::orc::SymbolMap found;
    for (const auto& [name, flags] : symbols)
      if (void* address = resolve_host_symbol((*name).str()))
        found[name] = {llvm::orc::ExecutorAddr::fromPtr(address), llvm::JITSymbolFlags::Exported};
    if (found.empty()) return llvm::Error::success();
    return dylib.define(llvm::orc::absoluteSymbols(std::move(found)));
  }
};

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

std::string host_target_id() {
  static const std::string id = [] {
    auto builder = host_builder();
    std::vector<std::string> features = builder.getFeatures().getFeatures();
    std::sort(features.begin(), features.end());
    return fmt::format("{};cpu={};features={};llvm={}", builder.getTargetTriple().str(),
                       builder.getCPU(), fmt::join(features, ","), LLVM_VERSION_STRING);
  }();
  return id;
}

std::string_view object_elf(std::string_view object) { return parse_object(object).elf; }

void register_host_symbol(std::string name, void* address) {
  auto& symbols = HostSymbols::get();
  std::lock_guard lock(symbols.mutex);
  symbols.table[std::move(name)] = address;
}

namespace {
// The module as LLVM IR, optimized for the host (what the object code is
// emitted from), with the names of the functions it defines.
struct OptimizedModule {
  std::unique_ptr<llvm::LLVMContext> context = std::make_unique<llvm::LLVMContext>();
  std::unique_ptr<llvm::Module> module;
  std::unique_ptr<llvm::TargetMachine> machine;
  std::vector<std::string> functions;
};

// MLIR marks a kernel's streaming stores (codegen/streaming_stores.h) on its
// scalar stores, but the loop vectorizer will not widen a store marked
// non-temporal unless the scalar's own alignment covers a whole vector. So
// the mark crosses the optimizer as a TBAA tag of a root of its own (no other
// access carries one, so it tells alias analysis nothing), and becomes
// !nontemporal again only on vector stores that LLVM proved aligned: x86
// splits an unaligned one into scalar streaming stores, far slower than the
// plain store it replaces.
llvm::MDNode* streaming_tag(llvm::LLVMContext& context) {
  llvm::MDBuilder md(context);
  llvm::MDNode* type = md.createTBAAScalarTypeNode("streaming store", md.createTBAARoot("kiln streaming stores"));
  return md.createTBAAStructTagNode(type, type, 0);
}

void hide_streaming_marks(llvm::Module& module) {
  llvm::MDNode* tag = streaming_tag(module.getContext());
  for (llvm::Function& fn : module)
    for (llvm::Instruction& inst : llvm::instructions(fn))
      if (auto* store = llvm::dyn_cast<llvm::StoreInst>(&inst); store && store->getMetadata(llvm::LLVMContext::MD_nontemporal)) {
        store->setMetadata(llvm::LLVMContext::MD_nontemporal, nullptr);
        store->setMetadata(llvm::LLVMContext::MD_tbaa, tag);
      }
}

void restore_streaming_marks(llvm::Module& module) {
  llvm::MDNode* tag = streaming_tag(module.getContext());
  llvm::MDNode* flag = llvm::MDNode::get(module.getContext(),
      llvm::ConstantAsMetadata::get(llvm::ConstantInt::get(llvm::Type::getInt32Ty(module.getContext()), 1)));
  const llvm::DataLayout& layout = module.getDataLayout();
  for (llvm::Function& fn : module)
    for (llvm::Instruction& inst : llvm::instructions(fn)) {
      auto* store = llvm::dyn_cast<llvm::StoreInst>(&inst);
      if (!store || store->getMetadata(llvm::LLVMContext::MD_tbaa) != tag) continue;
      store->setMetadata(llvm::LLVMContext::MD_tbaa, nullptr);
      llvm::Type* type = store->getValueOperand()->getType();
      if (type->isVectorTy() && store->getAlign().value() >= layout.getTypeStoreSize(type).getFixedValue())
        store->setMetadata(llvm::LLVMContext::MD_nontemporal, flag);
    }
}

OptimizedModule optimize_for_host(std::string_view mlir_source) {
  initialize_native_target();
  auto context = ir::make_context();
  DiagnosticCapture diags(*context);
  auto module = parse_and_lower(*context, mlir_source, diags);

  OptimizedModule out;
  out.module = mlir::translateModuleToLLVMIR(*module, *out.context, "kiln");
  if (!out.module)
    fail<JitError>("kiln::codegen: translating the llvm dialect to LLVM IR failed:\n{}",
                   diags.take());
  // Static constructors would need the JIT platform's initializer support,
  // which a linked object does not get; nothing kiln generates has them.
  if (out.module->getNamedGlobal("llvm.global_ctors"))
    fail<JitError>("kiln::codegen: the module has global constructors, which the object JIT "
                   "does not run; initialize globals from an explicit init function instead");
  for (llvm::Function& fn : *out.module)
    if (!fn.isDeclaration()) out.functions.push_back(fn.getName().str());
  std::sort(out.functions.begin(), out.functions.end());

  out.machine = host_target_machine();
  out.module->setDataLayout(out.machine->createDataLayout());
  out.module->setTargetTriple(out.machine->getTargetTriple().getTriple());
  add_packed_wrappers(*out.module);
  hide_streaming_marks(*out.module);
  auto optimize = mlir::makeOptimizingTransformer(kOptLevel, /*sizeLevel=*/0, out.machine.get());
  if (auto error = optimize(out.module.get()))
    fail<JitError>("kiln::codegen: optimizing the LLVM IR failed: {}",
                   llvm::toString(std::move(error)));
  restore_streaming_marks(*out.module);
  return out;
}
}  // namespace

std::string optimized_llvm_ir(std::string_view mlir_source) {
  OptimizedModule m = optimize_for_host(mlir_source);
  std::string text;
  llvm::raw_string_ostream os(text);
  m.module->print(os, nullptr);
  return text;
}

std::string compile_object(std::string_view mlir_source) {
  OptimizedModule m = optimize_for_host(mlir_source);
  auto& llvm_module = m.module;
  auto& machine = m.machine;
  auto& functions = m.functions;

  llvm::SmallVector<char, 0> elf;
  llvm::raw_svector_ostream elf_os(elf);
  llvm::legacy::PassManager codegen;
  if (machine->addPassesToEmitFile(codegen, elf_os, nullptr, llvm::CodeGenFileType::ObjectFile))
    fail<JitError>("kiln::codegen: the host target machine cannot emit object files");
  codegen.run(*llvm_module);

  std::string body;
  put_field(body, host_target_id());
  put_field(body, fmt::format("{}", fmt::join(functions, "\n")));
  put_field(body, {elf.data(), elf.size()});
  uint64_t checksum = llvm::xxh3_64bits(llvm::StringRef(body));
  std::string object(kObjectMagic);
  object.append(reinterpret_cast<const char*>(&checksum), sizeof checksum);
  return object + body;
}

// ORC reports why linking failed (an undefined symbol, say) to the session,
// not to the lookup that triggered it, and would print it to stderr.
struct LinkErrors {
  std::mutex mutex;
  std::string text;
};

struct CpuJit::Impl {
  std::string object;
  std::vector<std::string> functions;
  std::shared_ptr<LinkErrors> link_errors = std::make_shared<LinkErrors>();
  std::unique_ptr<llvm::orc::LLJIT> jit;

  std::string take_link_errors() {
    std::lock_guard lock(link_errors->mutex);
    return std::exchange(link_errors->text, {});
  }
};

CpuJit::CpuJit(std::string_view mlir_source) : CpuJit(from_object(compile_object(mlir_source))) {}
CpuJit::CpuJit(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CpuJit CpuJit::from_object(std::string_view object) {
  initialize_native_target();
  auto impl = std::make_unique<Impl>();
  impl->object = std::string(object);
  ObjectFields fields = parse_object(impl->object);
  if (fields.target != host_target_id())
    fail<JitError>("kiln::codegen: the object was compiled for '{}' but this host is '{}'; "
                   "compile the module again here",
                   fields.target, host_target_id());
  if (!fields.functions.empty())
    for (auto name : llvm::split(ref(fields.functions), '\n')) impl->functions.push_back(name.str());

  auto jit = llvm::orc::LLJITBuilder().setJITTargetMachineBuilder(host_builder()).create();
  if (!jit)
    fail<JitError>("kiln::codegen: creating the JIT failed: {}", llvm::toString(jit.takeError()));
  impl->jit = std::move(*jit);
  impl->jit->getExecutionSession().setErrorReporter([errors = impl->link_errors](llvm::Error error) {
    std::lock_guard lock(errors->mutex);
    errors->text += llvm::toString(std::move(error)) + "\n";
  });
  impl->jit->getMainJITDylib().addGenerator(std::make_unique<HostSymbolGenerator>());
  // Registers each loaded object with GDB's JIT interface, so that a
  // debugger sees the kernels with their line tables (the user's lines).
  // LLVM's own setup looks the registration function up among the process's
  // global symbols, where a Python extension's libLLVM is not.
  if (auto* linker = llvm::dyn_cast<llvm::orc::ObjectLinkingLayer>(&impl->jit->getObjLinkingLayer())) {
    auto& session = impl->jit->getExecutionSession();
    auto registrar = std::make_unique<llvm::orc::EPCDebugObjectRegistrar>(
        session, llvm::orc::ExecutorAddr::fromPtr(&llvm_orc_registerJITLoaderGDBWrapper));
    linker->addPlugin(std::make_unique<llvm::orc::DebugObjectManagerPlugin>(
        session, std::move(registrar), /*RequireDebugSections=*/true, /*AutoRegisterCode=*/true));
  }
  // A copy, because the ELF parser wants the object aligned, which it is not
  // inside the envelope.
  auto buffer = llvm::MemoryBuffer::getMemBufferCopy(ref(fields.elf), "kiln-object");
  if (auto error = impl->jit->addObjectFile(std::move(buffer)))
    fail<JitError>("kiln::codegen: the object does not load: {}", llvm::toString(std::move(error)));
  // Linking is lazy; do it now, so that an unresolved symbol is an error of
  // loading and not of some later call.
  if (!impl->functions.empty()) {
    auto linked = impl->jit->lookup("_mlir_" + impl->functions.front());
    if (!linked)
      fail<JitError>("kiln::codegen: linking the object failed: {}\n{}",
                     llvm::toString(linked.takeError()), impl->take_link_errors());
  }
  return CpuJit(std::move(impl));
}

CpuJit::~CpuJit() = default;
CpuJit::CpuJit(CpuJit&&) noexcept = default;
CpuJit& CpuJit::operator=(CpuJit&&) noexcept = default;

const std::vector<std::string>& CpuJit::functions() const { return impl_->functions; }

const std::string& CpuJit::object_code() const { return impl_->object; }

void* CpuJit::lookup(std::string_view symbol) const {
  auto address = impl_->jit->lookup(ref(symbol));
  if (!address)
    fail<JitError>("kiln::codegen: no symbol '{}' in the JIT module ({}{}); functions: {}", symbol,
                   llvm::toString(address.takeError()), impl_->take_link_errors(),
                   fmt::join(impl_->functions, ", "));
  return address->toPtr<void*>();
}

void CpuJit::invoke_packed(std::string_view name, std::span<void*> args) const {
  // Checked here so that a typo is a JitError listing the choices, not a
  // lookup of the wrapper "_mlir_<name>", which the user never wrote.
  if (!std::binary_search(impl_->functions.begin(), impl_->functions.end(), name))
    fail<JitError>("kiln::codegen: no function '{}' in the JIT module; functions: {}", name,
                   fmt::join(impl_->functions, ", "));
  auto* wrapper = reinterpret_cast<void (*)(void**)>(lookup(fmt::format("_mlir_{}", name)));
  wrapper(args.data());
}

}  // namespace kiln::codegen
