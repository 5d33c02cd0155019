#pragma once
#include <cstdint>

#include "runtime/dtype.h"

namespace kiln {

// A Python-style number: bool, integer or floating. In binary ops it is a
// "wrapped number": it never widens a tensor's dtype within its category
// (int32_tensor + 2 stays int32; int32_tensor + 2.5 becomes float32).
class Scalar {
 public:
  Scalar(bool v) : category_(DTypeCategory::Bool), i_(v), d_(v) {}
  Scalar(int v) : Scalar(static_cast<int64_t>(v)) {}
  Scalar(long v) : category_(DTypeCategory::Integral), i_(v), d_(static_cast<double>(v)) {}
  Scalar(long long v) : category_(DTypeCategory::Integral), i_(v), d_(static_cast<double>(v)) {}
  Scalar(float v) : Scalar(static_cast<double>(v)) {}
  Scalar(double v) : category_(DTypeCategory::Floating), i_(static_cast<int64_t>(v)), d_(v) {}

  DTypeCategory category() const { return category_; }
  double to_double() const { return d_; }
  int64_t to_int() const { return i_; }
  template <class T>
  T to() const {
    if constexpr (is_floating_v<T>) return T(static_cast<compute_t<T>>(d_));
    else if constexpr (std::is_same_v<T, bool>) return category_ == DTypeCategory::Floating ? d_ != 0 : i_ != 0;
    else return static_cast<T>(category_ == DTypeCategory::Floating ? static_cast<int64_t>(d_) : i_);
  }

 private:
  DTypeCategory category_;
  int64_t i_;
  double d_;
};

}  // namespace kiln
