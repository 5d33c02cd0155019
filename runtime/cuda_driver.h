#pragma once
// The CUDA driver, loaded at run time (dlopen of libcuda.so.1) so that kiln
// builds, loads and runs where there is no GPU or no driver: available() is
// then false and unavailable_reason() says why, for the error a user gets
// when asking for device="cuda". Every driver call is checked; a failing
// CUresult becomes a DeviceError that names the call and the driver's
// message. The allocator, streams and module loading build on this.
#include <cstdint>
#include <string>
#include <string_view>

#include <memory>

#include "runtime/block_allocator.h"
#include "runtime/device.h"

namespace kiln::cuda {

bool available();
std::string unavailable_reason();  // empty when available()
int device_count();                // 0 when not available()
int driver_version();              // e.g. 13000; 0 when the driver did not load

struct DeviceProperties {
  std::string name;
  int64_t total_memory = 0;  // bytes
  int compute_capability_major = 0, compute_capability_minor = 0;
  int multiprocessors = 0;
};
DeviceProperties device_properties(int index);

// Waits for all work on the device (its primary context).
void synchronize(int index);

// The device's memory through the driver, for a BlockAllocator
// (runtime/block_allocator.h); allocate returns nullptr when it is full.
std::unique_ptr<DeviceMemory> device_memory(int index);
// Synchronous helpers for tests and transfers.
void memset(void* device_ptr, unsigned char value, size_t nbytes, int index);
void copy_to_host(void* host, const void* device_ptr, size_t nbytes, int index);

// A DeviceError for `op` unless `device` names a CUDA device that exists.
void require(const Device& device, std::string_view op);

// Turns a failing driver result into a DeviceError naming `call`.
void check(int result, std::string_view call);

}  // namespace kiln::cuda
