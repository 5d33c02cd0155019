#include "runtime/cuda_driver.h"

#include <dlfcn.h>

#include <mutex>
#include <unordered_map>

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
  X(cuMemsetD8_v2) X(cuMemcpyDtoH_v2)

struct Driver {
#define KILN_DECLARE(name) decltype(&::name) name = nullptr;
  KILN_CUDA_DRIVER_CALLS(KILN_DECLARE)
#undef KILN_DECLARE
  std::string unavailable;  // why not, or empty
  int version = 0;
  int devices = 0;
};

template <class Fn>
void resolve(void* library, const char* name, Fn& fn, std::string& missing) {
  fn = reinterpret_cast<Fn>(dlsym(library, name));
  if (!fn) missing += missing.empty() ? name : std::string(", ") + name;
}

const Driver& driver() {
  static const Driver d = [] {
    Driver d;
    void* library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!library) {
      const char* why = dlerror();
      d.unavailable = fmt::format("the NVIDIA driver library libcuda.so.1 could not be loaded ({}); "
                                  "install the NVIDIA driver on a machine with an NVIDIA GPU",
                                  why ? why : "not found");
      return d;
    }
    std::string missing;
#define KILN_RESOLVE(name) resolve(library, #name, d.name, missing);
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
  if (name)
    fail<DeviceError>("CUDA: {} failed: {} ({})", call, name, text ? text : "no description");
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
// primary context, as the CUDA runtime and PyTorch do); it is retained once
// per device and kept for the process.
const Driver& enter(int index, std::string_view what) {
  const Driver& d = usable(what);
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
  return d;
}

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
}  // namespace

void synchronize(int index) {
  const Driver& d = enter(index, "synchronize");
  check(d.cuCtxSynchronize(), "cuCtxSynchronize");
}

std::unique_ptr<DeviceMemory> device_memory(int index) { return std::make_unique<CudaMemory>(index); }

void memset(void* device_ptr, unsigned char value, size_t nbytes, int index) {
  const Driver& d = enter(index, "memset");
  check(d.cuMemsetD8_v2(reinterpret_cast<CUdeviceptr>(device_ptr), value, nbytes), "cuMemsetD8");
}

void copy_to_host(void* host, const void* device_ptr, size_t nbytes, int index) {
  const Driver& d = enter(index, "copy_to_host");
  check(d.cuMemcpyDtoH_v2(host, reinterpret_cast<CUdeviceptr>(device_ptr), nbytes), "cuMemcpyDtoH");
}

void require(const Device& device, std::string_view op) {
  if (device.is_cpu()) return;
  const Driver& d = usable(op);
  device_handle(d, device.index, op);
}
#else
bool available() { return false; }
std::string unavailable_reason() { return "this build of kiln has no CUDA support (cuda.h was not found)"; }
int device_count() { return 0; }
int driver_version() { return 0; }
DeviceProperties device_properties(int) { fail<DeviceError>("device_properties: CUDA is not available: {}", unavailable_reason()); }
void synchronize(int) { fail<DeviceError>("synchronize: CUDA is not available: {}", unavailable_reason()); }
std::unique_ptr<DeviceMemory> device_memory(int) {
  fail<DeviceError>("device memory: CUDA is not available: {}", unavailable_reason());
}
void memset(void*, unsigned char, size_t, int) { fail<DeviceError>("memset: CUDA is not available: {}", unavailable_reason()); }
void copy_to_host(void*, const void*, size_t, int) {
  fail<DeviceError>("copy_to_host: CUDA is not available: {}", unavailable_reason());
}
void require(const Device& device, std::string_view op) {
  if (!device.is_cpu()) fail<DeviceError>("{}: CUDA is not available: {}", op, unavailable_reason());
}
#endif

}  // namespace kiln::cuda
