#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "runtime/half.h"

namespace kiln {

// Ordered by PyTorch's promotion lattice within each category.
enum class DType : uint8_t { Bool, UInt8, Int8, Int32, Int64, Float16, BFloat16, Float32, Float64 };
inline constexpr int kNumDTypes = 9;

enum class DTypeCategory : uint8_t { Bool, Integral, Floating };

size_t itemsize(DType dtype);
std::string_view dtype_name(DType dtype);  // "float32"
DType dtype_from_name(std::string_view name);  // throws DTypeError
DTypeCategory category(DType dtype);
inline bool is_floating(DType d) { return category(d) == DTypeCategory::Floating; }
inline bool is_integral(DType d) { return category(d) == DTypeCategory::Integral; }

// PyTorch's promote_types for two tensors of equal priority.
DType promote_types(DType a, DType b);
// The dtype PyTorch gives a wrapped Python number of this category.
DType default_dtype(DTypeCategory c);
// A value of `from` can be written into `to` by an in-place op without a
// category downgrade (float result into an int tensor is an error).
bool can_cast(DType from, DType to);

template <class T> struct dtype_of;
template <> struct dtype_of<bool> { static constexpr DType value = DType::Bool; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::UInt8; };
template <> struct dtype_of<int8_t> { static constexpr DType value = DType::Int8; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::Int32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::Int64; };
template <> struct dtype_of<Half> { static constexpr DType value = DType::Float16; };
template <> struct dtype_of<BFloat16> { static constexpr DType value = DType::BFloat16; };
template <> struct dtype_of<float> { static constexpr DType value = DType::Float32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::Float64; };
template <class T> inline constexpr DType dtype_v = dtype_of<T>::value;

// The type kernels compute in: 16-bit floats widen to float.
template <class T> struct compute_type { using type = T; };
template <> struct compute_type<Half> { using type = float; };
template <> struct compute_type<BFloat16> { using type = float; };
template <class T> using compute_t = typename compute_type<T>::type;

template <class T> inline constexpr bool is_floating_v =
    std::is_floating_point_v<T> || std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>;

}  // namespace kiln

// Calls `fn.template operator()<T>()` with the C++ type of `dtype`.
// Usage: dispatch(dtype, "add", [&]<class T>() { ... });
namespace kiln::detail {
[[noreturn]] void unsupported_dtype(const char* op, DType dtype, const char* allowed);
}

#define KILN_DISPATCH_CASE(enumval, T) \
  case ::kiln::DType::enumval:          \
    return fn.template operator()<T>();

namespace kiln {
template <class F>
decltype(auto) dispatch_all(DType dtype, const char* op, F&& fn) {
  switch (dtype) {
    KILN_DISPATCH_CASE(Bool, bool)
    KILN_DISPATCH_CASE(UInt8, uint8_t)
    KILN_DISPATCH_CASE(Int8, int8_t)
    KILN_DISPATCH_CASE(Int32, int32_t)
    KILN_DISPATCH_CASE(Int64, int64_t)
    KILN_DISPATCH_CASE(Float16, Half)
    KILN_DISPATCH_CASE(BFloat16, BFloat16)
    KILN_DISPATCH_CASE(Float32, float)
    KILN_DISPATCH_CASE(Float64, double)
  }
  detail::unsupported_dtype(op, dtype, "any dtype");
}
template <class F>
decltype(auto) dispatch_numeric(DType dtype, const char* op, F&& fn) {  // all but bool
  switch (dtype) {
    KILN_DISPATCH_CASE(UInt8, uint8_t)
    KILN_DISPATCH_CASE(Int8, int8_t)
    KILN_DISPATCH_CASE(Int32, int32_t)
    KILN_DISPATCH_CASE(Int64, int64_t)
    KILN_DISPATCH_CASE(Float16, Half)
    KILN_DISPATCH_CASE(BFloat16, BFloat16)
    KILN_DISPATCH_CASE(Float32, float)
    KILN_DISPATCH_CASE(Float64, double)
    default: break;
  }
  detail::unsupported_dtype(op, dtype, "numeric dtypes (not bool)");
}
template <class F>
decltype(auto) dispatch_floating(DType dtype, const char* op, F&& fn) {
  switch (dtype) {
    KILN_DISPATCH_CASE(Float16, Half)
    KILN_DISPATCH_CASE(BFloat16, BFloat16)
    KILN_DISPATCH_CASE(Float32, float)
    KILN_DISPATCH_CASE(Float64, double)
    default: break;
  }
  detail::unsupported_dtype(op, dtype, "floating dtypes");
}
template <class F>
decltype(auto) dispatch_integral(DType dtype, const char* op, F&& fn) {  // ints and bool
  switch (dtype) {
    KILN_DISPATCH_CASE(Bool, bool)
    KILN_DISPATCH_CASE(UInt8, uint8_t)
    KILN_DISPATCH_CASE(Int8, int8_t)
    KILN_DISPATCH_CASE(Int32, int32_t)
    KILN_DISPATCH_CASE(Int64, int64_t)
    default: break;
  }
  detail::unsupported_dtype(op, dtype, "integer or bool dtypes");
}
}  // namespace kiln
