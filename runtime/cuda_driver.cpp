#include "runtime/cuda_driver.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string_view>
#include <unordered_map>

#include "runtime/dynamic_library.h"
#include "runtime/error.h"

#if __has_include(<cuda.h>)
#include <cuda.h>
#define KILN_HAVE_CUDA_H 1
#endif

namespace kiln::cuda {
namespace {

#ifdef KILN_HAVE_CUDA_H
// The entry points kiln uses, by their exported (versioned) names; each
// becomes a member of that name, resolved with dlsym.
#define KILN_CUDA_DRIVER_CALLS(X)                                                                      \
  X(cuInit) X(cuDriverGetVersion) X(cuDeviceGetCount) X(cuDeviceGet) X(cuDeviceGetName)               \
  X(cuDeviceTotalMem_v2) X(cuDeviceGetAttribute) X(cuDevicePrimaryCtxRetain) X(cuCtxSetCurrent)       \
  X(cuCtxSynchronize) X(cuGetErrorName) X(cuGetErrorString) X(cuMemAlloc_v2) X(cuMemFree_v2)         \
  X(cuMemGetInfo_v2) X(cuMemsetD8Async) X(cuMemcpyHtoDAsync_v2) X(cuMemcpyDtoHAsync_v2)                \
  X(cuMemcpyDtoDAsync_v2) X(cuStreamCreate) X(cuStreamDestroy_v2) X(cuStreamSynchronize)              \
  X(cuEventCreate) X(cuEventDestroy_v2) X(cuEventRecord) X(cuEventSynchronize) X(cuEventElapsedTime_v2) \
  X(cuModuleLoadData) X(cuModuleGetFunction) X(cuLaunchKernel) X(cuMemHostAlloc) X(cuMemFreeHost)                \
  X(cuStreamQuery) X(cuEventQuery) X(cuStreamWaitEvent)

struct Driver {
#define KILN_DECLARE(name) decltype(&::name) name = nullptr;
  KILN_CUDA_DRIVER_CALLS(KILN_DECLARE)
#undef KILN_DECLARE
  std::string unavailable;  // why not, or empty
  int version = 0;
  int devices = 0;
};

const Driver& driver() {
  static const Driver d = [] {
    Driver d;
    std::string why;
    void* library = open_library({"libcuda.so.1"}, why);
    if (!library) {
      d.unavailable = fmt::format("the NVIDIA driver library libcuda.so.1 could not be loaded ({}); "
                                  "install the NVIDIA driver on a machine with an NVIDIA GPU",
                                  why);
      return d;
    }
    std::string missing;
#define KILN_RESOLVE(name) resolve_symbol(library, #name, d.name, missing);
    KILN_CUDA_DRIVER_CALLS(KILN_RESOLVE)
#undef KILN_RESOLVE
    if (!missing.empty()) {
      d.unavailable = fmt::format("libcuda.so.1 lacks {}: the NVIDIA driver is too old for kiln", missing);
      return d;
    }
    if (d.cuDriverGetVersion(&d.version) != CUDA_SUCCESS) d.version = 0;
    if (CUresult r = d.cuInit(0); r != CUDA_SUCCESS) {
      const char* name = nullptr;
      if (d.cuGetErrorName(r, &name) != CUDA_SUCCESS) name = nullptr;
      if (r == CUDA_ERROR_NO_DEVICE)
        d.unavailable = "the NVIDIA driver is installed but sees no GPU";
      else if (r == CUDA_ERROR_STUB_LIBRARY)
        d.unavailable = "the libcuda.so.1 found is the CUDA toolkit's stub for linking, not a driver "
                        "(a stubs directory on LD_LIBRARY_PATH?)";
      else
        d.unavailable = fmt::format("cuInit failed: {}", name ? std::string(name) : fmt::format("CUresult {}", int(r)));
      return d;
    }
    if (d.cuDeviceGetCount(&d.devices) != CUDA_SUCCESS || d.devices == 0) {
      d.devices = 0;
      d.unavailable = "the NVIDIA driver is installed but sees no GPU";
    }
    return d;
  }();
  return d;
}

const Driver& usable(std::string_view what) {
  const Driver& d = driver();
  KILN_CHECK(d.unavailable.empty(), DeviceError, "{}: CUDA is not available: {}", what, d.unavailable);
  return d;
}

CUdevice device_handle(const Driver& d, int index, std::string_view what) {
  KILN_CHECK(index >= 0 && index < d.devices, DeviceError, "{}: no CUDA device {}: this machine has {} (cuda:0..cuda:{})",
             what, index, d.devices, d.devices - 1);
  CUdevice device;
  check(d.cuDeviceGet(&device, index), "cuDeviceGet");
  return device;
}
#endif

}  // namespace

void check(int result, std::string_view call) {
  if (result == 0) return;
#ifdef KILN_HAVE_CUDA_H
  const Driver& d = driver();
  const char* name = nullptr;
  const char* text = nullptr;
  if (d.cuGetErrorName && d.cuGetErrorName(static_cast<CUresult>(result), &name) != CUDA_SUCCESS) name = nullptr;
  if (d.cuGetErrorString && d.cuGetErrorString(static_cast<CUresult>(result), &text) != CUDA_SUCCESS) text = nullptr;
  // Errors of kernels that ran earlier reach the host at the next call that
  // waits; the context is lost then, as with any CUDA program.
  const bool kernel_failed = result == CUDA_ERROR_LAUNCH_FAILED || result == CUDA_ERROR_ILLEGAL_ADDRESS ||
                             result == CUDA_ERROR_ASSERT || result == CUDA_ERROR_ILLEGAL_INSTRUCTION ||
                             result == CUDA_ERROR_MISALIGNED_ADDRESS || result == CUDA_ERROR_HARDWARE_STACK_ERROR;
  const char* hint = kernel_failed ? "; a kernel queued earlier failed (kiln's kernels print what went wrong, such "
                                     "as an index out of range, on stdout); the GPU context is unusable now: restart "
                                     "the process"
                                   : "";
  if (name)
    fail<DeviceError>("CUDA: {} failed: {} ({}){}", call, name, text ? text : "no description", hint);
#endif
  fail<DeviceError>("CUDA: {} failed with CUresult {}", call, result);
}

#ifdef KILN_HAVE_CUDA_H
bool available() { return driver().unavailable.empty(); }
std::string unavailable_reason() { return driver().unavailable; }
int device_count() { return driver().devices; }
int driver_version() { return driver().version; }

DeviceProperties device_properties(int index) {
  const Driver& d = usable("device_properties");
  CUdevice device = device_handle(d, index, "device_properties");
  DeviceProperties p;
  char name[256] = {};
  check(d.cuDeviceGetName(name, sizeof name - 1, device), "cuDeviceGetName");
  p.name = name;
  size_t bytes = 0;
  check(d.cuDeviceTotalMem_v2(&bytes, device), "cuDeviceTotalMem");
  p.total_memory = static_cast<int64_t>(bytes);
  check(d.cuDeviceGetAttribute(&p.compute_capability_major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device),
        "cuDeviceGetAttribute");
  check(d.cuDeviceGetAttribute(&p.compute_capability_minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device),
        "cuDeviceGetAttribute");
  check(d.cuDeviceGetAttribute(&p.multiprocessors, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, device),
        "cuDeviceGetAttribute");
  return p;
}

namespace {
// Makes the device's primary context current on this thread (kiln uses the
// primary context, as the CUDA runtime, cuBLAS and PyTorch do); it is
// retained once per device and kept for the process.
const Driver& enter(int index, std::string_view what) {
  const Driver& d = usable(what);
  thread_local int current = -1;
  if (current == index) return d;
  CUdevice device = device_handle(d, index, what);
  static std::mutex mutex;
  static std::unordered_map<int, CUcontext> contexts;
  CUcontext context;
  {
    std::lock_guard lock(mutex);
    auto [it, added] = contexts.try_emplace(index, nullptr);
    if (added) {
      CUresult r = d.cuDevicePrimaryCtxRetain(&it->second, device);
      if (r != CUDA_SUCCESS) contexts.erase(it);
      check(r, "cuDevicePrimaryCtxRetain");
    }
    context = contexts.at(index);
  }
  check(d.cuCtxSetCurrent(context), "cuCtxSetCurrent");
  current = index;
  return d;
}

CUstream stream_handle(int index) { return reinterpret_cast<CUstream>(current_stream(index)); }

class CudaMemory final : public DeviceMemory {
 public:
  explicit CudaMemory(int index) : index_(index) { enter(index, "device memory"); }
  void* allocate(size_t nbytes) override {
    const Driver& d = enter(index_, "allocate");
    CUdeviceptr p = 0;
    CUresult r = d.cuMemAlloc_v2(&p, nbytes);
    if (r == CUDA_ERROR_OUT_OF_MEMORY) return nullptr;
    check(r, "cuMemAlloc");
    return reinterpret_cast<void*>(p);
  }
  void release(void* ptr) override {
    const Driver& d = enter(index_, "release");
    check(d.cuMemFree_v2(reinterpret_cast<CUdeviceptr>(ptr)), "cuMemFree");
  }
  Device device() const override { return Device{DeviceType::CUDA, index_}; }

 private:
  int index_;
};

// The device's BlockAllocator, serving each request from the blocks of the
// current stream. KILN_CUDA_NO_CACHING=1 (PyTorch's
// PYTORCH_NO_CUDA_MEMORY_CACHING) gives each tensor memory of its own from
// the driver instead, freed when the tensor is: slow, but an access past
// a tensor's end is past its allocation, which memory checkers (and the
// CUDA emulator) see. memory_stats() then stays at zero.
std::atomic<bool> poison_allocations{false};

class CudaAllocator final : public Allocator {
 public:
  explicit CudaAllocator(int index) : index_(index), blocks_(device_memory(index)) {
    if (const char* v = std::getenv("KILN_CUDA_NO_CACHING"); v && *v && std::string_view(v) != "0")
      uncached_ = device_memory(index);
  }
  void* allocate(size_t nbytes) override {
    void* p = uncached_ ? uncached_->allocate(std::max<size_t>(nbytes, 1)) : blocks_.allocate(nbytes, current_stream(index_));
    KILN_CHECK(p, DeviceError, "out of memory on cuda:{}: tried to allocate {} bytes (KILN_CUDA_NO_CACHING is set)",
               index_, nbytes);
    if (poison_allocations && nbytes) cuda::memset(p, 0xFF, nbytes, index_);
    return p;
  }
  void deallocate(void* ptr, size_t nbytes) override {
    // (cuMemFree waits for the work queued on the memory)
    if (uncached_) uncached_->release(ptr);
    else blocks_.deallocate(ptr, nbytes);
  }
  Device device() const override { return blocks_.device(); }
  AllocatorStats stats() const override { return blocks_.stats(); }
  void empty_cache() override { blocks_.empty_cache(); }
  BlockAllocatorStats block_stats() const { return blocks_.block_stats(); }
  void reset_peak_stats() { blocks_.reset_peak_stats(); }

 private:
  int index_;
  BlockAllocator blocks_;
  std::unique_ptr<DeviceMemory> uncached_;  // KILN_CUDA_NO_CACHING
};

CudaAllocator& cuda_allocator(int index) {
  const Driver& d = usable("allocate");
  device_handle(d, index, "allocate");
  static std::mutex mutex;
  // Never destroyed: tensors may outlive static destruction order.
  static auto* allocators = new std::unordered_map<int, std::unique_ptr<CudaAllocator>>;
  std::lock_guard lock(mutex);
  auto& slot = (*allocators)[index];
  if (!slot) slot = std::make_unique<CudaAllocator>(index);
  return *slot;
}

thread_local std::unordered_map<int, StreamId> current_streams;

}  // namespace

// Page-locked host memory, portable to every device's context; cached like
// the CPU's (pinning is slow). Never destroyed, like the device allocators.
Allocator& pinned_allocator() {
  const Driver& d = usable("pin_memory");
  static Allocator* allocator = make_host_caching_allocator(
      [&d](size_t n) -> void* {
        enter(0, "pin_memory");
        void* p = nullptr;
        CUresult r = d.cuMemHostAlloc(&p, n, CU_MEMHOSTALLOC_PORTABLE);
        if (r == CUDA_ERROR_OUT_OF_MEMORY) return nullptr;
        check(r, "cuMemHostAlloc");
        return p;
      },
      [&d](void* p) { d.cuMemFreeHost(p); }, "pinned host memory").release();
  return *allocator;
}

void synchronize(int index) {
  const Driver& d = enter(index, "synchronize");
  check(d.cuCtxSynchronize(), "cuCtxSynchronize");
}

void make_current(int index) { enter(index, "make_current"); }

StreamId current_stream(int index) {
  auto it = current_streams.find(index);
  return it == current_streams.end() ? 0 : it->second;
}

Stream::Stream(int index) : index_(index) {
  const Driver& d = enter(index, "Stream");
  CUstream s = nullptr;
  check(d.cuStreamCreate(&s, CU_STREAM_DEFAULT), "cuStreamCreate");
  id_ = reinterpret_cast<StreamId>(s);
}
Stream::~Stream() {
  // Waits for the stream's work first: memory its tensors freed is cached
  // under its handle, which a new stream may be given again.
  if (!id_) return;
  driver().cuStreamSynchronize(reinterpret_cast<CUstream>(id_));
  driver().cuStreamDestroy_v2(reinterpret_cast<CUstream>(id_));
}
void Stream::synchronize() const {
  const Driver& d = enter(index_, "Stream.synchronize");
  check(d.cuStreamSynchronize(reinterpret_cast<CUstream>(id_)), "cuStreamSynchronize");
}

namespace {
// cuStreamQuery / cuEventQuery: done, not yet, or an error.
bool finished(CUresult r, const char* call) {
  if (r == CUDA_ERROR_NOT_READY) return false;
  check(r, call);
  return true;
}
}  // namespace

bool Stream::query() const {
  const Driver& d = enter(index_, "Stream.query");
  return finished(d.cuStreamQuery(reinterpret_cast<CUstream>(id_)), "cuStreamQuery");
}
void Stream::wait(const Event& event) {
  const Driver& d = enter(index_, "Stream.wait_event");
  check(d.cuStreamWaitEvent(reinterpret_cast<CUstream>(id_), static_cast<CUevent>(event.handle()), 0),
        "cuStreamWaitEvent");
}

StreamGuard::StreamGuard(const Stream& stream) : index_(stream.device()), previous_(current_stream(stream.device())) {
  current_streams[index_] = stream.id();
}
StreamGuard::~StreamGuard() { current_streams[index_] = previous_; }

Event::Event(int index) : index_(index) {
  const Driver& d = enter(index, "Event");
  CUevent e = nullptr;
  check(d.cuEventCreate(&e, CU_EVENT_DEFAULT), "cuEventCreate");
  event_ = e;
}
Event::~Event() {
  if (event_) driver().cuEventDestroy_v2(static_cast<CUevent>(event_));
}
void Event::record() {
  const Driver& d = enter(index_, "Event.record");
  check(d.cuEventRecord(static_cast<CUevent>(event_), stream_handle(index_)), "cuEventRecord");
}
void Event::synchronize() const {
  const Driver& d = enter(index_, "Event.synchronize");
  check(d.cuEventSynchronize(static_cast<CUevent>(event_)), "cuEventSynchronize");
}
bool Event::query() const {
  const Driver& d = enter(index_, "Event.query");
  return finished(d.cuEventQuery(static_cast<CUevent>(event_)), "cuEventQuery");
}
void Event::wait() {
  const Driver& d = enter(index_, "Event.wait");
  check(d.cuStreamWaitEvent(stream_handle(index_), static_cast<CUevent>(event_), 0), "cuStreamWaitEvent");
}
float Event::elapsed_ms(const Event& end) const {
  const Driver& d = enter(index_, "Event.elapsed_ms");
  float ms = 0;
  check(d.cuEventElapsedTime_v2(&ms, static_cast<CUevent>(event_), static_cast<CUevent>(end.event_)),
        "cuEventElapsedTime");
  return ms;
}

std::unique_ptr<DeviceMemory> device_memory(int index) { return std::make_unique<CudaMemory>(index); }
Allocator& allocator(int index) { return cuda_allocator(index); }
void set_poison_allocations(bool poison) { poison_allocations = poison; }
BlockAllocatorStats memory_stats(int index) { return cuda_allocator(index).block_stats(); }
void reset_peak_memory_stats(int index) { cuda_allocator(index).reset_peak_stats(); }

MemoryInfo memory_info(int index) {
  const Driver& d = enter(index, "memory_info");
  MemoryInfo info;
  check(d.cuMemGetInfo_v2(&info.free_bytes, &info.total_bytes), "cuMemGetInfo");
  return info;
}

void memset(void* device_ptr, unsigned char value, size_t nbytes, int index) {
  const Driver& d = enter(index, "memset");
  check(d.cuMemsetD8Async(reinterpret_cast<CUdeviceptr>(device_ptr), value, nbytes, stream_handle(index)),
        "cuMemsetD8Async");
}

void copy_from_host(void* device_ptr, const void* host, size_t nbytes, int index) {
  if (nbytes == 0) return;
  const Driver& d = enter(index, "copy to the GPU");
  CUstream stream = stream_handle(index);
  check(d.cuMemcpyHtoDAsync_v2(reinterpret_cast<CUdeviceptr>(device_ptr), host, nbytes, stream), "cuMemcpyHtoDAsync");
  // From pageable memory the driver may still be reading `host` when the
  // call returns; the caller is free to release it after this.
  check(d.cuStreamSynchronize(stream), "cuStreamSynchronize (after a copy to the GPU)");
}

void copy_to_host(void* host, const void* device_ptr, size_t nbytes, int index) {
  const Driver& d = enter(index, "copy to the host");
  CUstream stream = stream_handle(index);
  if (nbytes)
    check(d.cuMemcpyDtoHAsync_v2(host, reinterpret_cast<CUdeviceptr>(device_ptr), nbytes, stream),
          "cuMemcpyDtoHAsync");
  check(d.cuStreamSynchronize(stream), "cuStreamSynchronize (after a copy to the host)");
}

void copy_on_device(void* dst, const void* src, size_t nbytes, int index) {
  if (nbytes == 0) return;
  const Driver& d = enter(index, "copy on the GPU");
  check(d.cuMemcpyDtoDAsync_v2(reinterpret_cast<CUdeviceptr>(dst), reinterpret_cast<CUdeviceptr>(src), nbytes,
                               stream_handle(index)),
        "cuMemcpyDtoDAsync");
}

namespace {
CUfunction find_kernel(const Driver& d, int index, const KernelImage& image, const char* kernel) {
  static std::mutex mutex;
  static std::unordered_map<std::string, CUfunction> functions;   // "<device>/<kernel>"
  static std::unordered_map<std::string, CUmodule> modules;       // "<device>/<image>"
  std::string key = fmt::format("{}/{}", index, kernel);
  std::lock_guard lock(mutex);
  if (auto it = functions.find(key); it != functions.end()) return it->second;
  std::string module_key = fmt::format("{}/{}", index, image.name);
  auto [m, added] = modules.try_emplace(module_key, nullptr);
  if (added) {
    CUresult r = d.cuModuleLoadData(&m->second, image.data);
    if (r == CUDA_ERROR_NO_BINARY_FOR_GPU || r == CUDA_ERROR_UNSUPPORTED_PTX_VERSION) {
      modules.erase(m);
      DeviceProperties p = device_properties(index);
      fail<DeviceError>("CUDA: kiln's {} kernels have no code for {} (compute capability {}.{}): they are built for "
                        "sm_80 and sm_90 plus PTX, which needs a driver for CUDA 13 or newer (this one is {})",
                        image.name, p.name, p.compute_capability_major, p.compute_capability_minor, driver_version());
    }
    if (r != CUDA_SUCCESS) modules.erase(m);
    check(r, fmt::format("cuModuleLoadData ({} kernels)", image.name));
  }
  CUfunction f = nullptr;
  check(d.cuModuleGetFunction(&f, m->second, kernel), fmt::format("cuModuleGetFunction ({})", kernel));
  functions.emplace(std::move(key), f);
  return f;
}
}  // namespace

void launch(int index, const KernelImage& image, const char* kernel, const LaunchShape& s, void** args) {
  const Driver& d = enter(index, kernel);
  CUfunction f = find_kernel(d, index, image, kernel);
  CUresult r = d.cuLaunchKernel(f, s.grid_x, s.grid_y, s.grid_z, s.block_x, s.block_y, s.block_z, s.shared_bytes,
                                stream_handle(index), args, nullptr);
  if (r != CUDA_SUCCESS) check(r, fmt::format("cuLaunchKernel ({}, grid {}x{}x{}, block {}x{}x{})", kernel, s.grid_x,
                                              s.grid_y, s.grid_z, s.block_x, s.block_y, s.block_z));
}

void require(const Device& device, std::string_view op) {
  if (device.is_cpu()) return;
  const Driver& d = usable(op);
  device_handle(d, device.index, op);
}
#else
namespace {
[[noreturn]] void no_cuda(std::string_view what) {
  fail<DeviceError>("{}: CUDA is not available: {}", what, unavailable_reason());
}
}  // namespace
bool available() { return false; }
std::string unavailable_reason() { return "this build of kiln has no CUDA support (cuda.h was not found)"; }
int device_count() { return 0; }
int driver_version() { return 0; }
DeviceProperties device_properties(int) { no_cuda("device_properties"); }
void synchronize(int) { no_cuda("synchronize"); }
void make_current(int) { no_cuda("make_current"); }
StreamId current_stream(int) { return 0; }
Stream::Stream(int index) : index_(index) { no_cuda("Stream"); }
Stream::~Stream() = default;
void Stream::synchronize() const { no_cuda("Stream.synchronize"); }
bool Stream::query() const { no_cuda("Stream.query"); }
void Stream::wait(const Event&) { no_cuda("Stream.wait_event"); }
StreamGuard::StreamGuard(const Stream& stream) : index_(stream.device()), previous_(0) {}
StreamGuard::~StreamGuard() = default;
Event::Event(int index) : index_(index) { no_cuda("Event"); }
Event::~Event() = default;
void Event::record() { no_cuda("Event.record"); }
void Event::synchronize() const { no_cuda("Event.synchronize"); }
bool Event::query() const { no_cuda("Event.query"); }
void Event::wait() { no_cuda("Event.wait"); }
float Event::elapsed_ms(const Event&) const { no_cuda("Event.elapsed_ms"); }
std::unique_ptr<DeviceMemory> device_memory(int) { no_cuda("device memory"); }
Allocator& allocator(int) { no_cuda("allocate"); }
BlockAllocatorStats memory_stats(int) { no_cuda("memory_stats"); }
void reset_peak_memory_stats(int) { no_cuda("reset_peak_memory_stats"); }
MemoryInfo memory_info(int) { no_cuda("memory_info"); }
void set_poison_allocations(bool) {}
Allocator& pinned_allocator() { no_cuda("pin_memory"); }
void memset(void*, unsigned char, size_t, int) { no_cuda("memset"); }
void copy_from_host(void*, const void*, size_t, int) { no_cuda("copy to the GPU"); }
void copy_to_host(void*, const void*, size_t, int) { no_cuda("copy to the host"); }
void copy_on_device(void*, const void*, size_t, int) { no_cuda("copy on the GPU"); }
void launch(int, const KernelImage&, const char* kernel, const LaunchShape&, void**) { no_cuda(kernel); }
void require(const Device& device, std::string_view op) {
  if (!device.is_cpu()) no_cuda(op);
}
#endif

}  // namespace kiln::cuda
