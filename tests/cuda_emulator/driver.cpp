// The emulator's libcuda.so.1: the driver entry points kiln resolves
// (runtime/cuda_driver.cpp), for devices whose memory is host memory: one,
// or KILN_CUDA_EMULATOR_DEVICES of them, so that multi-GPU code runs too. A
// stream belongs to the device whose context was current when it was made,
// and only that context may use it, as in CUDA.
// Work runs when it is queued, so every stream is always idle; a kernel
// that fails makes the context unusable, and every later call returns its
// error, as the real driver does.
#include <cuda.h>

#include <sys/mman.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <vector>

#include "tests/cuda_emulator/emulator.h"

struct CUctx_st {
  int device;
};
struct CUmod_st {};
struct CUstream_st {
  CUctx_st* context;
};
struct CUevent_st {
  CUctx_st* context;
  std::chrono::steady_clock::time_point at;
  bool recorded = false;
};

namespace kiln_cuda_emulator {
namespace {

constexpr size_t kDeviceBytes = size_t{8} << 30;  // what the emulated device reports

// Every call holds this: kernels run one at a time.
std::recursive_mutex calls;
bool initialized = false;
CUresult sticky = CUDA_SUCCESS;  // the error of a failed kernel
// The primary context of each device, and the one current on this thread.
std::vector<CUctx_st> primary_contexts;
thread_local CUctx_st* current_context = nullptr;
int devices() { return static_cast<int>(primary_contexts.size()); }
std::map<uintptr_t, size_t> device_allocations;  // start -> bytes
std::map<uintptr_t, int> allocation_devices;     // start -> device
size_t device_allocated = 0;

// Each device allocation ends 16 bytes or less before a PROT_NONE page, so
// a kernel that runs past its memory faults there (threads.cpp names the
// kernel) instead of quietly using a neighbour's. 16: the alignment kiln's
// vector loads need (CUDA gives 256).
constexpr size_t kPage = 4096, kAlignment = 16;
struct Mapping {
  void* base;
  size_t length;
};
std::map<uintptr_t, Mapping> mappings;  // allocation start -> its pages

void* map_guarded(size_t bytes) {
  const size_t padded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  const size_t length = (padded + kPage - 1) / kPage * kPage + kPage;
  void* base = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) return nullptr;
  char* guard = static_cast<char*>(base) + length - kPage;
  mprotect(guard, kPage, PROT_NONE);
  char* start = guard - padded;
  mappings.emplace(reinterpret_cast<uintptr_t>(start), Mapping{base, length});
  return start;
}
std::set<void*> host_allocations;
std::set<CUstream> streams;

// The state every call starts from: the driver initialized, and the context
// not lost to a failed kernel.
CUresult usable() {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  return sticky;
}

// Work queued from this thread: a context must be current, and a stream
// (other than the legacy default) must be one of its own.
CUresult valid_stream(CUstream stream) {
  if (CUresult r = usable()) return r;
  if (!current_context) return CUDA_ERROR_INVALID_CONTEXT;
  if (stream == nullptr) return CUDA_SUCCESS;
  if (!streams.count(stream)) return CUDA_ERROR_INVALID_HANDLE;
  return stream->context == current_context ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

}  // namespace

bool is_device_memory(const void* p, size_t bytes) { return memory_device(p, bytes) >= 0; }

int memory_device(const void* p, size_t bytes) {
  std::lock_guard lock(calls);
  const auto address = reinterpret_cast<uintptr_t>(p);
  auto it = device_allocations.upper_bound(address);
  if (it == device_allocations.begin()) return -1;
  --it;
  if (address < it->first || address + bytes > it->first + it->second) return -1;
  return allocation_devices.at(it->first);
}

int current_device() {
  std::lock_guard lock(calls);
  return current_context ? current_context->device : -1;
}

}  // namespace kiln_cuda_emulator

using namespace kiln_cuda_emulator;

#define KILN_EXPORT extern "C" __attribute__((visibility("default")))

KILN_EXPORT CUresult cuInit(unsigned int flags) {
  std::lock_guard lock(calls);
  if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
  if (!initialized) {
    const char* n = std::getenv("KILN_CUDA_EMULATOR_DEVICES");
    const int count = n ? std::max(1, std::atoi(n)) : 1;
    for (int i = 0; i < count; ++i) primary_contexts.push_back(CUctx_st{i});
  }
  initialized = true;
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuDriverGetVersion(int* version) {
  if (!version) return CUDA_ERROR_INVALID_VALUE;
  *version = CUDA_VERSION;
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuDeviceGetCount(int* count) {
  std::lock_guard lock(calls);
  if (CUresult r = usable()) return r;
  *count = devices();
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuDeviceGet(CUdevice* device, int ordinal) {
  std::lock_guard lock(calls);
  if (CUresult r = usable()) return r;
  if (ordinal < 0 || ordinal >= devices()) return CUDA_ERROR_INVALID_DEVICE;
  *device = ordinal;
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuDeviceGetName(char* name, int length, CUdevice device) {
  std::lock_guard lock(calls);
  if (CUresult r = usable()) return r;
  if (device < 0 || device >= devices()) return CUDA_ERROR_INVALID_DEVICE;
  std::snprintf(name, static_cast<size_t>(length), "kiln CUDA emulator");
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice device) {
  std::lock_guard lock(calls);
  if (CUresult r = usable()) return r;
  if (device < 0 || device >= devices()) return CUDA_ERROR_INVALID_DEVICE;
  *bytes = kDeviceBytes;
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuDeviceGetAttribute(int* value, CUdevice_attribute attribute, CUdevice device) {
  std::lock_guard lock(calls);
  if (CUresult r = usable()) return r;
  if (device < 0 || device >= devices()) return CUDA_ERROR_INVALID_DEVICE;
  switch (attribute) {
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *value = 9; return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *value = 0; return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *value = 1; return CUDA_SUCCESS;
    default: return CUDA_ERROR_NOT_SUPPORTED;
  }
}

KILN_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext* context, CUdevice device) {
  std::lock_guard lock(calls);
  if (CUresult r = usable()) return r;
  if (device < 0 || device >= devices()) return CUDA_ERROR_INVALID_DEVICE;
  *context = &primary_contexts[device];
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuCtxSetCurrent(CUcontext context) {
  std::lock_guard lock(calls);
  if (CUresult r = usable()) return r;
  if (context && (context < primary_contexts.data() || context >= primary_contexts.data() + devices()))
    return CUDA_ERROR_INVALID_CONTEXT;
  current_context = context;
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuCtxSynchronize() {
  std::lock_guard lock(calls);
  return usable();
}

namespace {
struct ErrorText {
  CUresult code;
  const char* name;
  const char* text;
};
constexpr ErrorText kErrors[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready"},
    {CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", "too many resources requested for launch"},
    {CUDA_ERROR_ILLEGAL_INSTRUCTION, "CUDA_ERROR_ILLEGAL_INSTRUCTION", "an illegal instruction was encountered"},
    {CUDA_ERROR_LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
};
const ErrorText* error_text(CUresult code) {
  for (const ErrorText& e : kErrors)
    if (e.code == code) return &e;
  return nullptr;
}
}  // namespace

KILN_EXPORT CUresult cuGetErrorName(CUresult error, const char** name) {
  const ErrorText* e = error_text(error);
  if (!e) return CUDA_ERROR_INVALID_VALUE;
  *name = e->name;
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuGetErrorString(CUresult error, const char** text) {
  const ErrorText* e = error_text(error);
  if (!e) return CUDA_ERROR_INVALID_VALUE;
  *text = e->text;
  return CUDA_SUCCESS;
}

// ---- memory ----

KILN_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr* pointer, size_t bytes) {
  std::lock_guard lock(calls);
  if (CUresult r = usable()) return r;
  if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  if (!current_context) return CUDA_ERROR_INVALID_CONTEXT;
  if (bytes > kDeviceBytes - device_allocated) return CUDA_ERROR_OUT_OF_MEMORY;
  void* p = map_guarded(bytes);
  if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
  std::memset(p, 0xA5, bytes);  // device memory starts with garbage
  device_allocations.emplace(reinterpret_cast<uintptr_t>(p), bytes);
  allocation_devices.emplace(reinterpret_cast<uintptr_t>(p), current_context->device);
  device_allocated += bytes;
  *pointer = reinterpret_cast<CUdeviceptr>(p);
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuMemFree_v2(CUdeviceptr pointer) {
  std::lock_guard lock(calls);
  if (CUresult r = usable()) return r;
  auto it = device_allocations.find(static_cast<uintptr_t>(pointer));
  if (it == device_allocations.end()) return CUDA_ERROR_INVALID_VALUE;
  device_allocated -= it->second;
  device_allocations.erase(it);
  allocation_devices.erase(static_cast<uintptr_t>(pointer));
  auto mapping = mappings.find(static_cast<uintptr_t>(pointer));
  munmap(mapping->second.base, mapping->second.length);
  mappings.erase(mapping);
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total_bytes) {
  std::lock_guard lock(calls);
  if (CUresult r = usable()) return r;
  *free_bytes = kDeviceBytes - device_allocated;
  *total_bytes = kDeviceBytes;
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuMemHostAlloc(void** pointer, size_t bytes, unsigned int flags) {
  std::lock_guard lock(calls);
  if (CUresult r = usable()) return r;
  if (flags & ~unsigned{CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_WRITECOMBINED})
    return CUDA_ERROR_INVALID_VALUE;
  void* p = std::malloc(bytes ? bytes : 1);
  if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
  host_allocations.insert(p);
  *pointer = p;
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuMemFreeHost(void* pointer) {
  std::lock_guard lock(calls);
  if (CUresult r = usable()) return r;
  if (!host_allocations.erase(pointer)) return CUDA_ERROR_INVALID_VALUE;
  std::free(pointer);
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuMemsetD8Async(CUdeviceptr destination, unsigned char value, size_t bytes, CUstream stream) {
  std::lock_guard lock(calls);
  if (CUresult r = valid_stream(stream)) return r;
  if (!is_device_memory(reinterpret_cast<void*>(destination), bytes)) return CUDA_ERROR_INVALID_VALUE;
  std::memset(reinterpret_cast<void*>(destination), value, bytes);
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr destination, const void* source, size_t bytes, CUstream stream) {
  std::lock_guard lock(calls);
  if (CUresult r = valid_stream(stream)) return r;
  if (!is_device_memory(reinterpret_cast<void*>(destination), bytes) || is_device_memory(source, 1))
    return CUDA_ERROR_INVALID_VALUE;
  std::memcpy(reinterpret_cast<void*>(destination), source, bytes);
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuMemcpyDtoHAsync_v2(void* destination, CUdeviceptr source, size_t bytes, CUstream stream) {
  std::lock_guard lock(calls);
  if (CUresult r = valid_stream(stream)) return r;
  if (!is_device_memory(reinterpret_cast<void*>(source), bytes) || is_device_memory(destination, 1))
    return CUDA_ERROR_INVALID_VALUE;
  std::memcpy(destination, reinterpret_cast<void*>(source), bytes);
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr destination, CUdeviceptr source, size_t bytes, CUstream stream) {
  std::lock_guard lock(calls);
  if (CUresult r = valid_stream(stream)) return r;
  if (!is_device_memory(reinterpret_cast<void*>(destination), bytes) ||
      !is_device_memory(reinterpret_cast<void*>(source), bytes))
    return CUDA_ERROR_INVALID_VALUE;
  std::memmove(reinterpret_cast<void*>(destination), reinterpret_cast<void*>(source), bytes);
  return CUDA_SUCCESS;
}

// ---- streams and events ----

KILN_EXPORT CUresult cuStreamCreate(CUstream* stream, unsigned int flags) {
  std::lock_guard lock(calls);
  if (CUresult r = usable()) return r;
  if (flags & ~unsigned{CU_STREAM_NON_BLOCKING}) return CUDA_ERROR_INVALID_VALUE;
  if (!current_context) return CUDA_ERROR_INVALID_CONTEXT;
  *stream = new CUstream_st{current_context};
  streams.insert(*stream);
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuStreamDestroy_v2(CUstream stream) {
  std::lock_guard lock(calls);
  if (!streams.erase(stream)) return CUDA_ERROR_INVALID_HANDLE;
  delete stream;
  return usable();
}

KILN_EXPORT CUresult cuStreamSynchronize(CUstream stream) {
  std::lock_guard lock(calls);
  return valid_stream(stream);
}

KILN_EXPORT CUresult cuStreamQuery(CUstream stream) {
  std::lock_guard lock(calls);
  return valid_stream(stream);  // its work ran when it was queued
}

KILN_EXPORT CUresult cuStreamWaitEvent(CUstream stream, CUevent event, unsigned int flags) {
  std::lock_guard lock(calls);
  if (CUresult r = valid_stream(stream)) return r;
  return event && flags == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

KILN_EXPORT CUresult cuEventCreate(CUevent* event, unsigned int flags) {
  std::lock_guard lock(calls);
  if (CUresult r = usable()) return r;
  if (flags & ~unsigned{CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING}) return CUDA_ERROR_INVALID_VALUE;
  if (!current_context) return CUDA_ERROR_INVALID_CONTEXT;
  *event = new CUevent_st{current_context};
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuEventDestroy_v2(CUevent event) {
  std::lock_guard lock(calls);
  delete event;
  return usable();
}

KILN_EXPORT CUresult cuEventRecord(CUevent event, CUstream stream) {
  std::lock_guard lock(calls);
  if (CUresult r = valid_stream(stream)) return r;
  if (event->context != current_context) return CUDA_ERROR_INVALID_HANDLE;  // an event of another device
  event->at = std::chrono::steady_clock::now();
  event->recorded = true;
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuEventSynchronize(CUevent) {
  std::lock_guard lock(calls);
  return usable();
}

KILN_EXPORT CUresult cuEventQuery(CUevent) {
  std::lock_guard lock(calls);
  return usable();
}

KILN_EXPORT CUresult cuEventElapsedTime_v2(float* ms, CUevent start, CUevent end) {
  std::lock_guard lock(calls);
  if (CUresult r = usable()) return r;
  if (!start->recorded || !end->recorded) return CUDA_ERROR_INVALID_HANDLE;
  *ms = std::chrono::duration<float, std::milli>(end->at - start->at).count();
  return CUDA_SUCCESS;
}

// ---- modules and launches ----

namespace {
CUmod_st the_module;  // every kernel is in the emulator's registry
}

KILN_EXPORT CUresult cuModuleLoadData(CUmodule* module, const void* image) {
  std::lock_guard lock(calls);
  if (CUresult r = usable()) return r;
  if (!image) return CUDA_ERROR_INVALID_IMAGE;
  *module = &the_module;
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuModuleGetFunction(CUfunction* function, CUmodule module, const char* name) {
  std::lock_guard lock(calls);
  if (CUresult r = usable()) return r;
  if (module != &the_module) return CUDA_ERROR_INVALID_HANDLE;
  const Kernel* kernel = find_kernel(name);
  if (!kernel) return CUDA_ERROR_NOT_FOUND;
  *function = reinterpret_cast<CUfunction>(const_cast<Kernel*>(kernel));
  return CUDA_SUCCESS;
}

KILN_EXPORT CUresult cuLaunchKernel(CUfunction function, unsigned int grid_x, unsigned int grid_y, unsigned int grid_z,
                                    unsigned int block_x, unsigned int block_y, unsigned int block_z,
                                    unsigned int shared_bytes, CUstream stream, void** params, void** extra) {
  std::lock_guard lock(calls);
  if (CUresult r = valid_stream(stream)) return r;
  if (!function) return CUDA_ERROR_INVALID_HANDLE;
  const Kernel& kernel = *reinterpret_cast<const Kernel*>(function);
  // The hardware's limits on a launch (compute capability 9.0).
  const uint64_t threads = uint64_t{block_x} * block_y * block_z;
  if (!grid_x || !grid_y || !grid_z || !threads || grid_x > 0x7fffffffu || grid_y > 65535 || grid_z > 65535 ||
      block_x > 1024 || block_y > 1024 || block_z > 64 || shared_bytes > 48 * 1024 || !params || extra)
    return CUDA_ERROR_INVALID_VALUE;
  if (threads > 1024 || threads > kernel.max_threads) return CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
  static const bool trace = std::getenv("KILN_CUDA_EMULATOR_TRACE") != nullptr;
  if (trace)
    std::fprintf(stderr, "kiln CUDA emulator: %s grid (%u,%u,%u) block (%u,%u,%u)\n", kernel.name, grid_x, grid_y,
                 grid_z, block_x, block_y, block_z);
  const std::string failure = run(kernel, {grid_x, grid_y, grid_z}, {block_x, block_y, block_z}, params);
  if (!failure.empty()) {
    // As a device-side failure: reported here, surfacing at the next call.
    std::fflush(stdout);
    std::fprintf(stderr, "kiln CUDA emulator: %s\n", failure.c_str());
    sticky = CUDA_ERROR_ILLEGAL_INSTRUCTION;
  }
  return CUDA_SUCCESS;
}
