#pragma once
// kiln's version (python/kiln/__init__.py's __version__ says the same).
namespace kiln {
inline constexpr const char* kKilnVersion = "0.1.0";
}
