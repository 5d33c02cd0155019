#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "runtime/device.h"

namespace kiln {

struct AllocatorStats {
  size_t allocated_bytes = 0;  // handed out and not yet returned
  size_t cached_bytes = 0;     // returned and kept for reuse
  size_t peak_allocated_bytes = 0;
  uint64_t num_allocs = 0;
  uint64_t num_cache_hits = 0;
};

// Memory for one device. Pointers are opaque: a device allocator's memory
// need not be addressable from the host.
class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t nbytes) = 0;
  virtual void deallocate(void* ptr, size_t nbytes) = 0;
  virtual Device device() const = 0;
  virtual AllocatorStats stats() const = 0;
  virtual void empty_cache() = 0;
};

inline constexpr size_t kCpuAlignment = 64;

// 64-byte aligned host memory; freed blocks are kept in size-class bins and
// reused, so large temporaries do not pay page faults on every op (glibc
// returns blocks of 32 MiB and more to the OS on free).
Allocator& cpu_allocator();

// Host memory from `allocate` (nullptr when out of memory) and `release`,
// cached in size classes as cpu_allocator()'s is; `what` names it in errors.
// For page-locked memory (runtime/cuda_driver.h).
std::unique_ptr<Allocator> make_host_caching_allocator(std::function<void*(size_t)> allocate,
                                                       std::function<void(void*)> release, std::string what);

}  // namespace kiln
