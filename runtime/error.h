#pragma once
// One error helper for the whole project: kiln::fail<Kind>("fmt", args...).
// Each kind maps to a Python exception type (ShapeError -> ValueError, DTypeError
// -> TypeError, IndexError -> IndexError, DeviceError -> RuntimeError).
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace kiln {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
class ShapeError : public Error {
 public:
  using Error::Error;
};
class DTypeError : public Error {
 public:
  using Error::Error;
};
class IndexError : public Error {
 public:
  using Error::Error;
};
class DeviceError : public Error {
 public:
  using Error::Error;
};
// Inside a traced function: something needs a value that exists only when
// the traced graph runs (.item(), bool(), data-dependent shapes).
class TraceError : public Error {
 public:
  using Error::Error;
};
// A value outside an op's domain (negative size, bad argument value).
class ValueError : public Error {
 public:
  using Error::Error;
};

// IR that does not parse or verify (a corrupted or hand-edited module).
class IrError : public Error {
 public:
  using Error::Error;
};

// kiln.jit(f, check=True): compiled and eager results differ beyond the
// tolerance.
class CheckError : public Error {
 public:
  using Error::Error;
};

template <class Kind = Error, class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Kind(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace kiln

// Formats the message only when the check fails.
#define KILN_CHECK(cond, Kind, ...)       \
  do {                                    \
    if (!(cond)) ::kiln::fail<Kind>(__VA_ARGS__); \
  } while (0)
