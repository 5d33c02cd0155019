#pragma once
// kiln's CUDA emulator: runs kiln's CUDA kernels on the host, so that the GPU
// code (kernels, launchers, the driver calls behind them) is tested on
// machines without a GPU. It is a test tool, not a device: nothing here is
// fast, and passing under it is not passing on a GPU.
//
// The pieces:
// - the kernels of eager/cuda/*.cu compiled as host C++ (kernel_shim.h maps
//   threadIdx, __syncthreads, warp shuffles and atomics onto this header);
// - threads.cpp: each block's threads run as fibers on one host thread,
//   switching at barriers and shuffles, which it checks the way the
//   hardware requires them (every named lane present, no divergent waits);
// - driver.cpp, cublas.cpp, cudnn.cpp: libcuda.so.1, libcublas.so.13 and
//   libcudnn.so.9 with the entry points kiln uses, found through
//   LD_LIBRARY_PATH ahead of any real ones. Device memory is host memory,
//   but every copy, memset and library call checks that the pointers it
//   is given as device memory lie inside an allocation.
#include <cstddef>
#include <cstdint>
#include <string>

namespace kiln_cuda_emulator {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};
struct ThreadIds {
  Dim3 thread_idx, block_idx, block_dim, grid_dim;
};

// The emulated thread running now (threadIdx and friends read it).
extern const ThreadIds* current;

// Called by kernels, through kernel_shim.h.
void sync_block();
uint64_t shuffle_xor(uint64_t bits, unsigned mask, int lane_mask);
[[noreturn]] void trap(const char* why);

// ---- kernels, registered by name as the kernel files are loaded ----
using Entry = void (*)(void** params);
struct Kernel {
  const char* name;
  Entry entry;
  unsigned max_threads;  // __launch_bounds__
};
bool add_kernel(const Kernel& kernel);
const Kernel* find_kernel(const char* name);

template <class F>
struct Parameter;
template <class A>
struct Parameter<void (*)(A)> {
  using type = A;
};
template <auto F>
bool register_kernel(const char* name, unsigned max_threads) {
  using A = typename Parameter<decltype(F)>::type;
  return add_kernel({name, [](void** params) { F(*static_cast<A*>(params[0])); }, max_threads});
}

// Runs every block of the grid in turn; returns why the kernel failed, or
// an empty string.
std::string run(const Kernel& kernel, Dim3 grid, Dim3 block, void** params);

// Whether [p, p + bytes) lies inside one device allocation, and the device
// that has it (-1: none); the device of the context current on this thread
// (-1: none). driver.cpp answers; cublas.cpp and cudnn.cpp check with them.
bool is_device_memory(const void* p, size_t bytes);
int memory_device(const void* p, size_t bytes);
int current_device();

}  // namespace kiln_cuda_emulator
