#include "runtime/storage.h"

#include "runtime/cuda_driver.h"
#include "runtime/error.h"

namespace kiln {

Allocator& allocator_for(Device device) {
  if (device.is_cpu()) return cpu_allocator();
  return cuda::allocator(device.index);
}

std::shared_ptr<Storage> Storage::allocate(size_t nbytes, Device device) { return allocate(nbytes, allocator_for(device)); }

std::shared_ptr<Storage> Storage::allocate(size_t nbytes, Allocator& allocator) {
  void* data = allocator.allocate(nbytes);
  return std::shared_ptr<Storage>(new Storage(data, nbytes, allocator.device(), &allocator, nullptr));
}

std::shared_ptr<Storage> Storage::borrow(void* data, size_t nbytes, Device device,
                                         std::function<void()> release) {
  return std::shared_ptr<Storage>(new Storage(data, nbytes, device, nullptr, std::move(release)));
}

Storage::~Storage() {
  if (allocator_) allocator_->deallocate(data_, nbytes_);
  if (release_) release_();
}

}  // namespace kiln
