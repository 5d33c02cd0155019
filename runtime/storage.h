#pragma once
#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>

#include "runtime/allocator.h"
#include "runtime/device.h"

namespace kiln {

// A refcounted block of device memory that tensors view. It owns its bytes
// through an allocator, or borrows them from outside (NumPy arrays) and
// calls a deleter when the last view goes away.
class Storage {
 public:
  static std::shared_ptr<Storage> allocate(size_t nbytes, Device device);
  static std::shared_ptr<Storage> allocate(size_t nbytes, Allocator& allocator);
  static std::shared_ptr<Storage> borrow(void* data, size_t nbytes, Device device,
                                         std::function<void()> release);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }
  const Allocator* allocator() const { return allocator_; }  // null for borrowed memory

  // Bumped by every in-place write to any view of this storage; autograd
  // uses it to detect tensors modified after being saved.
  uint64_t version() const { return version_.load(std::memory_order_relaxed); }
  void bump_version() { version_.fetch_add(1, std::memory_order_relaxed); }

 private:
  Storage(void* data, size_t nbytes, Device device, Allocator* allocator,
          std::function<void()> release)
      : data_(data), nbytes_(nbytes), device_(device), allocator_(allocator),
        release_(std::move(release)) {}

  void* data_;
  size_t nbytes_;
  Device device_;
  Allocator* allocator_;  // null for borrowed memory
  std::function<void()> release_;
  std::atomic<uint64_t> version_{0};
};

Allocator& allocator_for(Device device);

}  // namespace kiln
