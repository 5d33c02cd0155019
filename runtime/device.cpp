#include "runtime/device.h"

#include <charconv>

#include "runtime/error.h"

namespace kiln {

std::string Device::str() const {
  return type == DeviceType::CPU ? "cpu" : fmt::format("cuda:{}", index);
}

Device Device::parse(std::string_view s) {
  if (s == "cpu") return Device{};
  if (s.starts_with("cuda")) {
    std::string_view rest = s.substr(4);
    if (rest.empty()) return Device{DeviceType::CUDA, 0};
    int index = -1;
    if (rest[0] == ':') {
      auto [p, ec] = std::from_chars(rest.data() + 1, rest.data() + rest.size(), index);
      if (ec == std::errc() && p == rest.data() + rest.size() && index >= 0)
        return Device{DeviceType::CUDA, index};
    }
  }
  fail<DeviceError>("unknown device '{}': expected 'cpu', 'cuda' or 'cuda:N'", s);
}

}  // namespace kiln
