#pragma once
// A Program (codegen/cpu_program.h) as bytes and back, for the disk cache:
// a cache hit rebuilds the schedule without MLIR. Kernel addresses are not
// stored (the caller links the object code and looks them up).
#include <string>
#include <string_view>
#include <vector>

#include "codegen/cpu_program.h"

namespace kiln::codegen {

std::string serialize_program(const Program& program, const std::vector<std::string>& notes);

// Error if `bytes` is malformed or names an op this build does not have.
Program deserialize_program(std::string_view bytes, std::vector<std::string>& notes);

}  // namespace kiln::codegen
