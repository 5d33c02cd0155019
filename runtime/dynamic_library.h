#pragma once
// Optional shared libraries loaded at run time (the CUDA driver, cuBLAS,
// cuDNN), so that kiln links and runs without them.
#include <dlfcn.h>

#include <initializer_list>
#include <string>

namespace kiln {

// The first of `names` that loads, or null; then `error` holds why the
// first one did not.
inline void* open_library(std::initializer_list<const char*> names, std::string& error) {
  for (const char* name : names) {
    if (void* library = dlopen(name, RTLD_NOW | RTLD_LOCAL)) return library;
    if (error.empty()) {
      const char* why = dlerror();
      error = why ? why : "not found";
    }
  }
  return nullptr;
}

// Points `fn` at the symbol `name` of `library`; a missing one is appended
// to `missing` ("a, b").
template <class Fn>
void resolve_symbol(void* library, const char* name, Fn& fn, std::string& missing) {
  fn = reinterpret_cast<Fn>(dlsym(library, name));
  if (!fn) missing += missing.empty() ? name : std::string(", ") + name;
}

}  // namespace kiln
