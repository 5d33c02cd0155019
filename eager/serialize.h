#pragma once
// Tensors to and from files in the safetensors format
// (https://huggingface.co/docs/safetensors), so that other tools read kiln's
// weights and kiln reads theirs:
//
//   8 bytes   little-endian uint64 N, the header's length
//   N bytes   JSON: {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//             "__metadata__": {"key": "value"}}, padded with spaces to a multiple of 8
//   the rest  every tensor's bytes, row-major, little-endian; offsets count from here
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "eager/tensor.h"

namespace kiln {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// Writes the tensors (sorted by name; names must be unique) to a temporary
// file next to `path`, then renames it over `path`: a failure leaves no
// half-written file behind.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Every tensor of the file, sorted by name. A malformed file (truncated,
// bad JSON, offsets out of range or overlapping, an unknown dtype) raises a
// ValueError naming the file and the problem.
NamedTensors load_safetensors(const std::string& path);

// The file's "__metadata__" (empty when it has none).
std::map<std::string, std::string> load_safetensors_metadata(const std::string& path);

// "F32" <-> DType::Float32.
std::string safetensors_dtype(DType dtype);

}  // namespace kiln
