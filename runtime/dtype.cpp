#include "runtime/dtype.h"

#include "runtime/error.h"

namespace kiln {

namespace {
struct DTypeInfo {
  std::string_view name;
  size_t size;
  DTypeCategory category;
};
constexpr DTypeInfo kInfo[kNumDTypes] = {
    {"bool", 1, DTypeCategory::Bool},         {"uint8", 1, DTypeCategory::Integral},
    {"int8", 1, DTypeCategory::Integral},     {"int32", 4, DTypeCategory::Integral},
    {"int64", 8, DTypeCategory::Integral},    {"float16", 2, DTypeCategory::Floating},
    {"bfloat16", 2, DTypeCategory::Floating}, {"float32", 4, DTypeCategory::Floating},
    {"float64", 8, DTypeCategory::Floating},
};
const DTypeInfo& info(DType d) { return kInfo[static_cast<int>(d)]; }
}  // namespace

size_t itemsize(DType d) { return info(d).size; }
std::string_view dtype_name(DType d) { return info(d).name; }
DTypeCategory category(DType d) { return info(d).category; }

DType dtype_from_name(std::string_view name) {
  for (int i = 0; i < kNumDTypes; ++i)
    if (kInfo[i].name == name) return static_cast<DType>(i);
  if (name == "float" || name == "float_") return DType::Float32;
  if (name == "double") return DType::Float64;
  if (name == "half") return DType::Float16;
  if (name == "int") return DType::Int32;  // as torch.int
  if (name == "long") return DType::Int64;
  fail<DTypeError>("unknown dtype '{}': expected one of bool, uint8, int8, int32, int64, float16, "
                   "bfloat16, float32, float64",
                   name);
}

DType promote_types(DType a, DType b) {
  if (a == b) return a;
  // The two pairs that are not ordered on the lattice.
  auto is_pair = [&](DType x, DType y) { return (a == x && b == y) || (a == y && b == x); };
  if (is_pair(DType::UInt8, DType::Int8)) return DType::Int32;  // torch: int16, which kiln lacks
  if (is_pair(DType::Float16, DType::BFloat16)) return DType::Float32;
  return static_cast<int>(a) > static_cast<int>(b) ? a : b;
}

DType default_dtype(DTypeCategory c) {
  switch (c) {
    case DTypeCategory::Bool: return DType::Bool;
    case DTypeCategory::Integral: return DType::Int64;
    case DTypeCategory::Floating: return DType::Float32;
  }
  return DType::Float32;
}

bool can_cast(DType from, DType to) {
  return static_cast<int>(category(from)) <= static_cast<int>(category(to));
}

namespace detail {
void unsupported_dtype(const char* op, DType dtype, const char* allowed) {
  fail<DTypeError>("{}: dtype {} is not supported (expected {})", op, dtype_name(dtype), allowed);
}
}  // namespace detail

}  // namespace kiln
