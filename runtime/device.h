#pragma once
#include <string>
#include <string_view>

namespace kiln {

enum class DeviceType : uint8_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;

  bool is_cpu() const { return type == DeviceType::CPU; }
  bool operator==(const Device&) const = default;
  std::string str() const;                 // "cpu", "cuda:0"
  static Device parse(std::string_view s);  // "cpu", "cuda", "cuda:1"; DeviceError otherwise
};

inline const Device kCPU{};

}  // namespace kiln
