#pragma once
// The CUDA driver, loaded at run time (dlopen of libcuda.so.1) so that kiln
// builds, loads and runs where there is no GPU or no driver: available() is
// then false and unavailable_reason() says why, for the error a user gets
// when asking for device="cuda". Every driver call is checked; a failing
// CUresult becomes a DeviceError that names the call and the driver's
// message. Work that failed on the device (a device-side assert, a bad
// address) is reported by the next call that waits for it (a copy to the
// host, synchronize()).
//
// Everything here is in terms of device indices and opaque pointers; the
// eager kernels (eager/cuda/) and, later, compiled GPU code build on it:
// memory (a caching BlockAllocator per device), copies, streams and events,
// and loading and launching kernels from fatbin images.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

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

// A DeviceError for `op` unless `device` names a CUDA device that exists.
void require(const Device& device, std::string_view op);

// Turns a failing driver result into a DeviceError naming `call`.
void check(int result, std::string_view call);

// ---- streams and events ----
// Work for a device is queued on the thread's current stream for it: the
// legacy default stream (0) unless a StreamGuard says otherwise. Memory
// freed by a tensor is reused only by work on the stream it was allocated
// on (runtime/block_allocator.h).
StreamId current_stream(int index);

class Event;

// A stream of its own (it waits for the legacy default stream, as
// PyTorch's streams do).
class Stream {
 public:
  explicit Stream(int index);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  StreamId id() const { return id_; }
  int device() const { return index_; }
  void synchronize() const;
  bool query() const;                  // whether its work has finished
  void wait(const Event& event);  // later work on it waits for the event, not the host

 private:
  int index_;
  StreamId id_ = 0;
};

// Makes `stream` the current stream of its device on this thread for a scope.
class StreamGuard {
 public:
  explicit StreamGuard(const Stream& stream);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  int index_;
  StreamId previous_;
};

// A point in a stream's work; elapsed times between two recorded events are
// how GPU work is timed (bench/).
class Event {
 public:
  explicit Event(int index);
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record();  // on the current stream
  void synchronize() const;
  bool query() const;  // whether the work before it has finished
  void wait();         // later work on the current stream waits for it, not the host
  float elapsed_ms(const Event& end) const;  // both recorded and finished
  void* handle() const { return event_; }

 private:
  int index_;
  void* event_ = nullptr;
};

// Waits for all work on the device (its primary context).
void synchronize(int index);

// Makes the device's primary context current on this thread, for libraries
// that work in the current context (cuBLAS).
void make_current(int index);

// ---- memory ----
// The device's raw memory through the driver (allocate returns nullptr
// when it is full); allocator() wraps it in the device's caching allocator.
std::unique_ptr<DeviceMemory> device_memory(int index);
Allocator& allocator(int index);
BlockAllocatorStats memory_stats(int index);
void reset_peak_memory_stats(int index);
struct MemoryInfo {
  size_t free_bytes = 0, total_bytes = 0;
};
MemoryInfo memory_info(int index);  // as the driver sees the device
// Tests: fill every new allocation with 0xFF bytes (NaN for floats, -1 for
// integers), so that elements a kernel failed to write show.
void set_poison_allocations(bool poison);

// Page-locked host memory (device kCPU) for tensors that move to and from
// GPUs often (Tensor::pin_memory): the driver copies it directly instead of
// staging it through a pinned buffer of its own.
Allocator& pinned_allocator();

// Copies queued on the current stream. copy_to_host waits for it (and so
// for the work before it); from_host returns once `host` may be reused.
void copy_from_host(void* device_ptr, const void* host, size_t nbytes, int index);
void copy_to_host(void* host, const void* device_ptr, size_t nbytes, int index);
void copy_on_device(void* dst, const void* src, size_t nbytes, int index);
void memset(void* device_ptr, unsigned char value, size_t nbytes, int index);

// ---- kernels ----
// A fatbin (SASS per architecture plus PTX) linked into the library; it is
// loaded into a device's context the first time one of its kernels runs
// there, and kept for the process.
struct KernelImage {
  const char* name;  // for errors
  const unsigned char* data;
  size_t size;
};

struct LaunchShape {
  unsigned grid_x = 1, grid_y = 1, grid_z = 1;
  unsigned block_x = 1, block_y = 1, block_z = 1;
  unsigned shared_bytes = 0;
};

// Launches `kernel` of `image` on the current stream; `args` points at each
// kernel parameter in order.
void launch(int index, const KernelImage& image, const char* kernel, const LaunchShape& shape, void** args);

}  // namespace kiln::cuda
