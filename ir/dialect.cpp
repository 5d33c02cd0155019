#include "ir/dialect.h"

#include <mlir/IR/Builders.h>
#include <mlir/IR/Diagnostics.h>

#include "eager/autograd.h"
#include "eager/ops.h"

namespace kiln::ir {

// ---- types ----
mlir::Type element_type(mlir::MLIRContext* context, DType dtype) {
  mlir::Builder b(context);
  switch (dtype) {
    case DType::Bool: return b.getI1Type();
    case DType::UInt8: return mlir::IntegerType::get(context, 8, mlir::IntegerType::Unsigned);
    case DType::Int8: return b.getI8Type();
    case DType::Int32: return b.getI32Type();
    case DType::Int64: return b.getI64Type();
    case DType::Float16: return b.getF16Type();
    case DType::BFloat16: return b.getBF16Type();
    case DType::Float32: return b.getF32Type();
    case DType::Float64: return b.getF64Type();
  }
  fail<Error>("element_type: unknown dtype");
}

std::optional<DType> dtype_of(mlir::Type t) {
  if (t.isInteger(1)) return DType::Bool;
  if (t.isUnsignedInteger(8)) return DType::UInt8;
  if (t.isSignlessInteger(8)) return DType::Int8;
  if (t.isSignlessInteger(32)) return DType::Int32;
  if (t.isSignlessInteger(64)) return DType::Int64;
  if (t.isF16()) return DType::Float16;
  if (t.isBF16()) return DType::BFloat16;
  if (t.isF32()) return DType::Float32;
  if (t.isF64()) return DType::Float64;
  return std::nullopt;
}

mlir::RankedTensorType tensor_type(mlir::MLIRContext* context, const TensorType& type) {
  // kDynamic and mlir::ShapedType::kDynamic are both INT64_MIN.
  static_assert(kDynamic == mlir::ShapedType::kDynamic);
  return mlir::RankedTensorType::get(type.shape, element_type(context, type.dtype));
}

std::optional<TensorType> kiln_type(mlir::Type type) {
  auto ranked = mlir::dyn_cast<mlir::RankedTensorType>(type);
  if (!ranked) return std::nullopt;
  std::optional<DType> dtype = dtype_of(ranked.getElementType());
  if (!dtype) return std::nullopt;
  return TensorType{Shape(ranked.getShape().begin(), ranked.getShape().end()), *dtype};
}

// ---- attributes ----
mlir::Attribute to_mlir_attr(mlir::MLIRContext* context, const AttrValue& value) {
  mlir::Builder b(context);
  return std::visit(
      [&](const auto& v) -> mlir::Attribute {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::monostate>) return {};
        else if constexpr (std::is_same_v<T, bool>) return b.getBoolAttr(v);
        else if constexpr (std::is_same_v<T, int64_t>) return b.getI64IntegerAttr(v);
        else if constexpr (std::is_same_v<T, double>) return b.getF64FloatAttr(v);
        else if constexpr (std::is_same_v<T, std::string>) return b.getStringAttr(v);
        else if constexpr (std::is_same_v<T, std::vector<int64_t>>) return b.getDenseI64ArrayAttr(v);
        else if constexpr (std::is_same_v<T, DType>) return mlir::TypeAttr::get(element_type(context, v));
        else {  // Scalar: its category decides the attribute
          switch (v.category()) {
            case DTypeCategory::Bool: return b.getBoolAttr(v.template to<bool>());
            case DTypeCategory::Integral: return b.getI64IntegerAttr(v.to_int());
            case DTypeCategory::Floating: return b.getF64FloatAttr(v.to_double());
          }
          return {};
        }
      },
      value);
}

std::optional<AttrValue> from_mlir_attr(mlir::Attribute attr, AttrKind kind) {
  auto as_bool = mlir::dyn_cast<mlir::BoolAttr>(attr);
  auto as_int = mlir::dyn_cast<mlir::IntegerAttr>(attr);
  auto as_float = mlir::dyn_cast<mlir::FloatAttr>(attr);
  switch (kind) {
    case AttrKind::Bool:
      if (as_bool) return as_bool.getValue();
      break;
    case AttrKind::Int:
      if (as_int && !as_bool) return as_int.getInt();
      break;
    case AttrKind::Float:
      if (as_float) return as_float.getValueAsDouble();
      break;
    case AttrKind::String:
      if (auto s = mlir::dyn_cast<mlir::StringAttr>(attr)) return s.str();
      break;
    case AttrKind::Ints:
      if (auto a = mlir::dyn_cast<mlir::DenseI64ArrayAttr>(attr)) return std::vector<int64_t>(a.asArrayRef().begin(), a.asArrayRef().end());
      break;
    case AttrKind::DType:
      if (auto t = mlir::dyn_cast<mlir::TypeAttr>(attr))
        if (auto d = dtype_of(t.getValue())) return *d;
      break;
    case AttrKind::Scalar:
      if (as_bool) return Scalar(as_bool.getValue());
      if (as_int) return Scalar(static_cast<int64_t>(as_int.getInt()));
      if (as_float) return Scalar(as_float.getValueAsDouble());
      break;
  }
  return std::nullopt;
}

Attrs op_attrs(const OpDef& def, mlir::DictionaryAttr attributes) {
  Attrs attrs;
  for (const AttrSpec& spec : def.attrs) {
    mlir::Attribute attr = attributes ? attributes.get(spec.name) : mlir::Attribute();
    if (!attr) {
      KILN_CHECK(spec.optional, Error, "kiln.{}: missing attribute '{}'", def.name, spec.name);
      attrs.set(spec.name, {});
      continue;
    }
    std::optional<AttrValue> value = from_mlir_attr(attr, spec.kind);
    KILN_CHECK(value, Error, "kiln.{}: attribute '{}' has the wrong kind", def.name, spec.name);
    attrs.set(spec.name, std::move(*value));
  }
  return attrs;
}

namespace {
// Splits an op's flat operand list by its OperandSpecs into the eager
// op's inputs: one entry per required or optional operand (absent: null),
// and the whole group for a variadic one.
template <class T>
std::vector<T> eager_operands(const OpDef& def, llvm::ArrayRef<T> flat, mlir::DictionaryAttr attributes) {
  std::vector<OperandSpec> specs = operand_specs(def);
  std::vector<int32_t> sizes;
  auto segments = attributes ? attributes.getAs<mlir::DenseI32ArrayAttr>("operandSegmentSizes") : nullptr;
  if (segments) {
    sizes.assign(segments.asArrayRef().begin(), segments.asArrayRef().end());
  } else {
    // At most one operand is not exactly one value: it gets the rest.
    int32_t fixed = 0;
    for (const OperandSpec& s : specs) fixed += s.kind == OperandSpec::Required;
    for (const OperandSpec& s : specs)
      sizes.push_back(s.kind == OperandSpec::Required ? 1 : static_cast<int32_t>(flat.size()) - fixed);
  }
  KILN_CHECK(sizes.size() == specs.size(), Error, "kiln.{}: {} operand groups, expected {}", def.name, sizes.size(),
             specs.size());
  std::vector<T> out;
  size_t next = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    KILN_CHECK(sizes[i] >= 0 && next + sizes[i] <= flat.size(), Error, "kiln.{}: operand counts do not add up",
               def.name);
    if (specs[i].kind == OperandSpec::Optional && sizes[i] == 0) out.push_back(T());
    auto present = attributes && specs[i].holes
                       ? attributes.getAs<mlir::DenseBoolArrayAttr>(specs[i].name + "_present")
                       : nullptr;
    if (present) {
      int32_t taken = 0;
      for (bool p : present.asArrayRef()) {
        out.push_back(p && taken < sizes[i] ? flat[next + taken++] : T());
      }
      KILN_CHECK(taken == sizes[i], Error, "kiln.{}: {}_present marks {} operands, there are {}", def.name,
                 specs[i].name, taken, sizes[i]);
      next += static_cast<size_t>(sizes[i]);
      continue;
    }
    for (int32_t k = 0; k < sizes[i]; ++k) out.push_back(flat[next++]);
  }
  KILN_CHECK(next == flat.size(), Error, "kiln.{}: {} operands, expected {}", def.name, flat.size(), next);
  return out;
}
}  // namespace

mlir::LogicalResult infer_result_types(llvm::StringRef op, mlir::MLIRContext* context,
                                       std::optional<mlir::Location> location, mlir::ValueRange operands,
                                       mlir::DictionaryAttr attributes, llvm::SmallVectorImpl<mlir::Type>& types) {
  // Meta rules throw kiln errors; none may unwind through MLIR's frames.
  try {
    const OpDef& def = op_def(std::string_view(op.data(), op.size()));
    llvm::SmallVector<mlir::Value> flat(operands.begin(), operands.end());
    std::vector<TensorType> inputs;
    for (mlir::Value v : eager_operands<mlir::Value>(def, flat, attributes)) {
      if (!v) {
        inputs.push_back({.defined = false});
        continue;
      }
      std::optional<TensorType> t = kiln_type(v.getType());
      KILN_CHECK(t, DTypeError, "kiln.{}: operand type {} is not a kiln tensor type", def.name,
                 [&] {
                   std::string s;
                   llvm::raw_string_ostream os(s);
                   v.getType().print(os);
                   return s;
                 }());
      inputs.push_back(*t);
    }
    TraceScope no_trace(nullptr);
    for (const TensorType& t : def.meta(inputs, op_attrs(def, attributes))) types.push_back(tensor_type(context, t));
    return mlir::success();
  } catch (const std::exception& e) {
    return mlir::emitOptionalError(location, e.what());
  }
}

// ---- folding ----
namespace {
// Ops that are the identity when the result type equals the operand type.
bool is_identity_for_equal_types(llvm::StringRef op) {
  static const llvm::StringRef names[] = {"reshape", "view",    "expand", "broadcast_to", "contiguous",
                                          "clone",   "to",      "flatten", "squeeze"};
  return llvm::is_contained(names, op);
}

// Constant folding runs the eager kernel; past this size it would bloat the
// IR and take longer than the compiled code.
constexpr int64_t kMaxFoldElements = 1 << 12;

}  // namespace

Tensor tensor_from_attr(mlir::DenseElementsAttr attr) {
  std::optional<TensorType> type = kiln_type(attr.getType());
  KILN_CHECK(type, Error, "constant of an unsupported type");
  if (is_floating(type->dtype)) {
    std::vector<double> values;
    for (const llvm::APFloat& v : attr.getValues<llvm::APFloat>()) values.push_back(llvm::APFloat(v).convertToDouble());
    return from_blob_copy(values.data(), type->shape, DType::Float64).to(type->dtype);
  }
  std::vector<int64_t> values;
  bool is_unsigned = type->dtype == DType::Bool || type->dtype == DType::UInt8;
  for (const llvm::APInt& v : attr.getValues<llvm::APInt>())
    values.push_back(is_unsigned ? static_cast<int64_t>(v.getZExtValue()) : v.getSExtValue());
  return from_blob_copy(values.data(), type->shape, DType::Int64).to(type->dtype);
}

namespace {
// All elements equal (and at least one): a splat constant prints as one value.
bool same_bits(const llvm::APFloat& a, const llvm::APFloat& b) { return a.bitwiseIsEqual(b); }
bool same_bits(const llvm::APInt& a, const llvm::APInt& b) { return a == b; }
template <class V>
bool uniform(const std::vector<V>& values) {
  return !values.empty() &&
         std::all_of(values.begin(), values.end(), [&](const V& v) { return same_bits(v, values.front()); });
}

mlir::DenseElementsAttr attr_from_tensor(mlir::MLIRContext* context, const Tensor& t) {
  auto type = tensor_type(context, type_of(t));
  if (is_floating(t.dtype())) {
    Tensor f = t.to(DType::Float64).contiguous();
    const auto& semantics = mlir::cast<mlir::FloatType>(type.getElementType()).getFloatSemantics();
    std::vector<llvm::APFloat> values;
    for (int64_t i = 0; i < f.numel(); ++i) {
      llvm::APFloat v(f.data<double>()[i]);
      bool lost = false;
      v.convert(semantics, llvm::APFloat::rmNearestTiesToEven, &lost);
      values.push_back(v);
    }
    return uniform(values) ? mlir::DenseElementsAttr::get(type, values.front())
                           : mlir::DenseElementsAttr::get(type, values);
  }
  Tensor n = t.to(DType::Int64).contiguous();
  unsigned width = type.getElementType().getIntOrFloatBitWidth();
  std::vector<llvm::APInt> values;
  for (int64_t i = 0; i < n.numel(); ++i)
    values.emplace_back(width, static_cast<uint64_t>(n.data<int64_t>()[i]), /*isSigned=*/width > 1);
  return uniform(values) ? mlir::DenseElementsAttr::get(type, values.front())
                         : mlir::DenseElementsAttr::get(type, values);
}
}  // namespace

std::string location_text(mlir::Location loc) {
  if (auto file = loc->findInstanceOf<mlir::FileLineColLoc>())
    return fmt::format("{}:{}", file.getFilename().str(), file.getLine());
  std::string text;
  llvm::raw_string_ostream os(text);
  loc.print(os);
  return text;
}

std::optional<EagerCall> eager_call(mlir::Operation* op) {
  if (op->getName().getDialectNamespace() != "kiln") return std::nullopt;
  llvm::StringRef name = op->getName().stripDialect();
  const OpDef* def = find_op(std::string_view(name.data(), name.size()));
  if (!def) return std::nullopt;
  // Operand i is numbered i + 1 so that an absent one (0) stands out.
  llvm::SmallVector<int> numbers;
  for (unsigned i = 0; i < op->getNumOperands(); ++i) numbers.push_back(static_cast<int>(i) + 1);
  EagerCall call{def, {}, op_attrs(*def, op->getAttrDictionary())};
  for (int n : eager_operands<int>(*def, numbers, op->getAttrDictionary())) call.operands.push_back(n - 1);
  return call;
}

mlir::LogicalResult fold_eager_op(mlir::Operation* op, llvm::ArrayRef<mlir::Attribute> operands,
                                  llvm::SmallVectorImpl<mlir::OpFoldResult>& results) {
  llvm::StringRef name = op->getName().stripDialect();
  if (op->getNumOperands() == 1 && op->getNumResults() == 1 && is_identity_for_equal_types(name)) {
    auto type = mlir::cast<mlir::RankedTensorType>(op->getResult(0).getType());
    if (type.hasStaticShape() && type == op->getOperand(0).getType()) {
      results.push_back(op->getOperand(0));
      return mlir::success();
    }
  }
  const OpDef* def = find_op(std::string_view(name.data(), name.size()));
  if (!def || def->stateful) return mlir::failure();
  int64_t elements = 0;
  for (mlir::Attribute a : operands) {
    auto dense = mlir::dyn_cast_if_present<mlir::DenseElementsAttr>(a);
    if (!dense) return mlir::failure();
    elements += dense.getNumElements();
  }
  for (mlir::Type t : op->getResultTypes()) {
    auto ranked = mlir::cast<mlir::RankedTensorType>(t);
    if (!ranked.hasStaticShape()) return mlir::failure();
    elements += ranked.getNumElements();
  }
  if (elements > kMaxFoldElements) return mlir::failure();
  try {
    TraceScope no_trace(nullptr);
    NoGradGuard no_grad;
    std::vector<Tensor> inputs;
    for (mlir::Attribute a : eager_operands<mlir::Attribute>(*def, operands, op->getAttrDictionary()))
      inputs.push_back(a ? tensor_from_attr(mlir::cast<mlir::DenseElementsAttr>(a)) : Tensor());
    std::vector<Tensor> outputs = def->run(inputs, op_attrs(*def, op->getAttrDictionary()));
    for (const Tensor& t : outputs) results.push_back(attr_from_tensor(op->getContext(), t));
    return mlir::success();
  } catch (const std::exception&) {
    results.clear();
    return mlir::failure();  // the op stays; running it reports the error
  }
}

// ---- hand-written ops ----
mlir::OpFoldResult ConstantOp::fold(FoldAdaptor) { return getValue(); }

namespace {
mlir::LogicalResult verify_region(mlir::Operation* op, mlir::Region& region, const char* what, size_t num_args,
                                  mlir::TypeRange yielded) {
  mlir::Block& block = region.front();
  if (block.getNumArguments() != num_args)
    return op->emitOpError() << what << " region takes " << block.getNumArguments() << " arguments, expected "
                             << num_args;
  auto yield = mlir::dyn_cast<YieldOp>(block.getTerminator());
  if (!yield) return op->emitOpError() << what << " region must end with kiln.yield";
  if (yield.getValues().getTypes() != yielded)
    return op->emitOpError() << what << " region yields " << yield.getValues().getTypes() << ", expected "
                             << yielded;
  return mlir::success();
}
}  // namespace

mlir::LogicalResult CondOp::verify() {
  auto n = static_cast<size_t>(getNumOperands()), then_refs = static_cast<size_t>(getNumThenRefs());
  if (n < 1 + then_refs || getInputs().size() < 1 + n + then_refs) return emitOpError("operand counts do not add up");
  size_t else_refs = getInputs().size() - 1 - n - then_refs;
  if (mlir::failed(verify_region(*this, getThenRegion(), "then", n + then_refs, getResultTypes()))) return mlir::failure();
  return verify_region(*this, getElseRegion(), "else", n + else_refs, getResultTypes());
}

mlir::LogicalResult WhileLoopOp::verify() {
  auto n = static_cast<size_t>(getNumOperands()), cond_refs = static_cast<size_t>(getNumThenRefs());
  if (getInputs().size() < n + cond_refs) return emitOpError("operand counts do not add up");
  size_t body_refs = getInputs().size() - n - cond_refs;
  if (mlir::TypeRange(getResultTypes()) != mlir::TypeRange(getInputs()).take_front(n))
    return emitOpError("results must have the types of the loop values");
  auto flag = mlir::RankedTensorType::get({}, mlir::IntegerType::get(getContext(), 1));
  mlir::Region& cond = getCondRegion();
  if (cond.front().getNumArguments() != n + cond_refs)
    return emitOpError() << "cond region takes " << cond.front().getNumArguments() << " arguments, expected "
                         << n + cond_refs;
  auto yield = mlir::dyn_cast<YieldOp>(cond.front().getTerminator());
  if (!yield || yield.getValues().size() != 1 ||
      mlir::cast<mlir::RankedTensorType>(yield.getValues()[0].getType()).getElementType() != flag.getElementType())
    return emitOpError("cond region must yield one bool tensor");
  return verify_region(*this, getBodyRegion(), "body", n + body_refs, getResultTypes());
}

// ---- the dialect ----
void KilnDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "ir/KilnOps.op-defs.inc"
      >();
}

mlir::Operation* KilnDialect::materializeConstant(mlir::OpBuilder& builder, mlir::Attribute value, mlir::Type type,
                                                  mlir::Location loc) {
  auto elements = mlir::dyn_cast<mlir::ElementsAttr>(value);
  if (!elements || elements.getType() != type) return nullptr;
  return builder.create<ConstantOp>(loc, type, elements);
}

}  // namespace kiln::ir

#include "ir/KilnOps.dialect-defs.inc"
#define GET_OP_CLASSES
#include "ir/KilnOps.op-defs.inc"

namespace kiln::ir {
#include "ir/KilnOpsInfer.cpp.inc"
}  // namespace kiln::ir
