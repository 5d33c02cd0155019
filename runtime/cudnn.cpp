#include "runtime/cudnn.h"

#include <limits>
#include <mutex>
#include <unordered_map>

#include "runtime/cublas.h"
#include "runtime/cuda_driver.h"
#include "runtime/dynamic_library.h"
#include "runtime/error.h"

#if __has_include(<cudnn.h>)
// The classic convolution API is deprecated in cuDNN 9 (for its graph API)
// but present and what kiln uses.
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <cudnn.h>
#define KILN_HAVE_CUDNN_H 1
#endif

namespace kiln::cudnn {

#ifdef KILN_HAVE_CUDNN_H
namespace {

#define KILN_CUDNN_CALLS(X)                                                                                  \
  X(cudnnCreate) X(cudnnSetStream) X(cudnnGetErrorString) X(cudnnCreateTensorDescriptor)                      \
  X(cudnnSetTensor4dDescriptor) X(cudnnDestroyTensorDescriptor) X(cudnnCreateFilterDescriptor)                \
  X(cudnnSetFilter4dDescriptor) X(cudnnDestroyFilterDescriptor) X(cudnnCreateConvolutionDescriptor)           \
  X(cudnnSetConvolution2dDescriptor) X(cudnnSetConvolutionGroupCount) X(cudnnSetConvolutionMathType)          \
  X(cudnnDestroyConvolutionDescriptor) X(cudnnGetConvolutionForwardAlgorithm_v7)                              \
  X(cudnnGetConvolutionForwardWorkspaceSize) X(cudnnConvolutionForward)                                       \
  X(cudnnGetConvolutionBackwardDataAlgorithm_v7) X(cudnnGetConvolutionBackwardDataWorkspaceSize)              \
  X(cudnnConvolutionBackwardData) X(cudnnGetConvolutionBackwardFilterAlgorithm_v7)                            \
  X(cudnnGetConvolutionBackwardFilterWorkspaceSize) X(cudnnConvolutionBackwardFilter)

struct Library {
#define KILN_DECLARE(name) decltype(&::name) name = nullptr;
  KILN_CUDNN_CALLS(KILN_DECLARE)
#undef KILN_DECLARE
  std::string unavailable;
};

const Library& library() {
  static const Library lib = [] {
    Library lib;
    std::string why, missing;
    void* handle = open_library({"libcudnn.so.9", "libcudnn.so", "/usr/local/cuda/lib64/libcudnn.so.9"}, why);
    if (!handle) {
      lib.unavailable = fmt::format("cuDNN (libcudnn.so.9) could not be loaded ({}); install cuDNN 9 or put its "
                                    "directory on LD_LIBRARY_PATH",
                                    why);
      return lib;
    }
#define KILN_RESOLVE(name) resolve_symbol(handle, #name, lib.name, missing);
    KILN_CUDNN_CALLS(KILN_RESOLVE)
#undef KILN_RESOLVE
    if (!missing.empty()) lib.unavailable = fmt::format("libcudnn.so.9 lacks {}: kiln needs cuDNN 9", missing);
    return lib;
  }();
  return lib;
}

const Library& usable(int device, const char* op) {
  cuda::require(Device{DeviceType::CUDA, device}, op);
  const Library& lib = library();
  KILN_CHECK(lib.unavailable.empty(), DeviceError, "{} on cuda:{}: {}", op, device, lib.unavailable);
  return lib;
}

void check(cudnnStatus_t status, const char* call) {
  if (status == CUDNN_STATUS_SUCCESS) return;
  fail<DeviceError>("cuDNN: {} failed: {}", call, library().cudnnGetErrorString(status));
}

cudnnHandle_t handle(const Library& lib, int device) {
  static std::mutex mutex;
  static std::unordered_map<int, cudnnHandle_t> handles;
  cuda::make_current(device);
  std::lock_guard lock(mutex);
  auto [it, added] = handles.try_emplace(device, nullptr);
  if (added) {
    cudnnStatus_t s = lib.cudnnCreate(&it->second);
    if (s != CUDNN_STATUS_SUCCESS) handles.erase(it);
    check(s, "cudnnCreate");
  }
  check(lib.cudnnSetStream(it->second, reinterpret_cast<cudaStream_t>(cuda::current_stream(device))), "cudnnSetStream");
  return it->second;
}

int as_int(int64_t v) {
  KILN_CHECK(v >= 0 && v <= std::numeric_limits<int>::max(), ShapeError,
             "conv2d on CUDA: size {} is beyond cuDNN's 32-bit sizes", v);
  return static_cast<int>(v);
}

// The descriptors of one convolution, destroyed with it.
struct Descriptors {
  const Library& lib;
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  const void* one;
  const void* zero;

  Descriptors(const Library& l, const Conv2d& g) : lib(l) {
    static const float one32 = 1, zero32 = 0;
    static const double one64 = 1, zero64 = 0;
    cudnnDataType_t type, compute = CUDNN_DATA_FLOAT;
    cudnnMathType_t math = CUDNN_TENSOR_OP_MATH;
    switch (g.dtype) {
      case DType::Float32: type = CUDNN_DATA_FLOAT; math = cublas::allow_tf32() ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH; break;
      case DType::Float16: type = CUDNN_DATA_HALF; break;
      case DType::BFloat16: type = CUDNN_DATA_BFLOAT16; break;
      case DType::Float64: type = compute = CUDNN_DATA_DOUBLE; math = CUDNN_DEFAULT_MATH; break;
      default: fail<DTypeError>("conv2d on CUDA: {} is not supported (floating types are)", dtype_name(g.dtype));
    }
    one = g.dtype == DType::Float64 ? static_cast<const void*>(&one64) : &one32;
    zero = g.dtype == DType::Float64 ? static_cast<const void*>(&zero64) : &zero32;
    check(lib.cudnnCreateTensorDescriptor(&x), "cudnnCreateTensorDescriptor");
    check(lib.cudnnCreateTensorDescriptor(&y), "cudnnCreateTensorDescriptor");
    check(lib.cudnnCreateFilterDescriptor(&w), "cudnnCreateFilterDescriptor");
    check(lib.cudnnCreateConvolutionDescriptor(&conv), "cudnnCreateConvolutionDescriptor");
    check(lib.cudnnSetTensor4dDescriptor(x, CUDNN_TENSOR_NCHW, type, as_int(g.N), as_int(g.C), as_int(g.H), as_int(g.W)),
          "cudnnSetTensor4dDescriptor");
    check(lib.cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NCHW, type, as_int(g.N), as_int(g.O), as_int(g.Ho), as_int(g.Wo)),
          "cudnnSetTensor4dDescriptor");
    check(lib.cudnnSetFilter4dDescriptor(w, type, CUDNN_TENSOR_NCHW, as_int(g.O), as_int(g.C / g.groups), as_int(g.kh),
                                         as_int(g.kw)),
          "cudnnSetFilter4dDescriptor");
    check(lib.cudnnSetConvolution2dDescriptor(conv, as_int(g.ph), as_int(g.pw), as_int(g.sh), as_int(g.sw), as_int(g.dh),
                                              as_int(g.dw), CUDNN_CROSS_CORRELATION, compute),
          "cudnnSetConvolution2dDescriptor");
    check(lib.cudnnSetConvolutionGroupCount(conv, as_int(g.groups)), "cudnnSetConvolutionGroupCount");
    check(lib.cudnnSetConvolutionMathType(conv, math), "cudnnSetConvolutionMathType");
  }
  ~Descriptors() {
    if (conv) lib.cudnnDestroyConvolutionDescriptor(conv);
    if (w) lib.cudnnDestroyFilterDescriptor(w);
    if (y) lib.cudnnDestroyTensorDescriptor(y);
    if (x) lib.cudnnDestroyTensorDescriptor(x);
  }
};

// Scratch memory for one call, from the device's caching allocator (freed
// right after queueing: the next user on this stream runs after it).
struct Workspace {
  int device;
  size_t bytes;
  void* ptr;
  Workspace(int d, size_t n) : device(d), bytes(n), ptr(n ? cuda::allocator(d).allocate(n) : nullptr) {}
  ~Workspace() {
    if (ptr) cuda::allocator(device).deallocate(ptr, bytes);
  }
};

// One convolution call: the heuristics' first algorithm that works (as
// PyTorch without cudnn.benchmark), its workspace, the call.
//   find(lib, handle, descriptors, max, &count, perf), size(..., algo, &bytes),
//   run(..., algo, workspace, bytes)
template <class Perf, int kMax, class Find, class Size, class Run>
void convolve(int device, const Conv2d& g, const char* op, Find find, Size size, Run run) {
  const Library& lib = usable(device, op);
  Descriptors d(lib, g);
  cudnnHandle_t h = handle(lib, device);
  Perf perf[kMax];
  int count = 0;
  check(find(lib, h, d, kMax, &count, perf), "cudnnGetConvolution*Algorithm_v7");
  int chosen = 0;
  while (chosen < count && perf[chosen].status != CUDNN_STATUS_SUCCESS) ++chosen;
  KILN_CHECK(chosen < count, DeviceError, "cuDNN: no algorithm for this {} ({}x{}x{}x{} input, {}x{}x{}x{} weight)", op,
             g.N, g.C, g.H, g.W, g.O, g.C / g.groups, g.kh, g.kw);
  size_t bytes = 0;
  check(size(lib, h, d, perf[chosen].algo, &bytes), "cudnnGetConvolution*WorkspaceSize");
  Workspace ws(device, bytes);
  check(run(lib, h, d, perf[chosen].algo, ws.ptr, bytes), op);
}

}  // namespace

bool available() { return cuda::available() && library().unavailable.empty(); }
std::string unavailable_reason() { return cuda::available() ? library().unavailable : cuda::unavailable_reason(); }

void conv2d_forward(int device, const Conv2d& g, const void* x, const void* w, void* y) {
  convolve<cudnnConvolutionFwdAlgoPerf_t, CUDNN_CONVOLUTION_FWD_ALGO_COUNT>(
      device, g, "conv2d",
      [](const Library& l, cudnnHandle_t h, const Descriptors& d, int max, int* count, auto* perf) {
        return l.cudnnGetConvolutionForwardAlgorithm_v7(h, d.x, d.w, d.conv, d.y, max, count, perf);
      },
      [](const Library& l, cudnnHandle_t h, const Descriptors& d, auto algo, size_t* bytes) {
        return l.cudnnGetConvolutionForwardWorkspaceSize(h, d.x, d.w, d.conv, d.y, algo, bytes);
      },
      [&](const Library& l, cudnnHandle_t h, const Descriptors& d, auto algo, void* ws, size_t bytes) {
        return l.cudnnConvolutionForward(h, d.one, d.x, x, d.w, w, d.conv, algo, ws, bytes, d.zero, d.y, y);
      });
}

void conv2d_backward_data(int device, const Conv2d& g, const void* w, const void* dy, void* dx) {
  convolve<cudnnConvolutionBwdDataAlgoPerf_t, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT>(
      device, g, "conv2d_backward (input)",
      [](const Library& l, cudnnHandle_t h, const Descriptors& d, int max, int* count, auto* perf) {
        return l.cudnnGetConvolutionBackwardDataAlgorithm_v7(h, d.w, d.y, d.conv, d.x, max, count, perf);
      },
      [](const Library& l, cudnnHandle_t h, const Descriptors& d, auto algo, size_t* bytes) {
        return l.cudnnGetConvolutionBackwardDataWorkspaceSize(h, d.w, d.y, d.conv, d.x, algo, bytes);
      },
      [&](const Library& l, cudnnHandle_t h, const Descriptors& d, auto algo, void* ws, size_t bytes) {
        return l.cudnnConvolutionBackwardData(h, d.one, d.w, w, d.y, dy, d.conv, algo, ws, bytes, d.zero, d.x, dx);
      });
}

void conv2d_backward_filter(int device, const Conv2d& g, const void* x, const void* dy, void* dw) {
  convolve<cudnnConvolutionBwdFilterAlgoPerf_t, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT>(
      device, g, "conv2d_backward (weight)",
      [](const Library& l, cudnnHandle_t h, const Descriptors& d, int max, int* count, auto* perf) {
        return l.cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, d.x, d.y, d.conv, d.w, max, count, perf);
      },
      [](const Library& l, cudnnHandle_t h, const Descriptors& d, auto algo, size_t* bytes) {
        return l.cudnnGetConvolutionBackwardFilterWorkspaceSize(h, d.x, d.y, d.conv, d.w, algo, bytes);
      },
      [&](const Library& l, cudnnHandle_t h, const Descriptors& d, auto algo, void* ws, size_t bytes) {
        return l.cudnnConvolutionBackwardFilter(h, d.one, d.x, x, d.y, dy, d.conv, algo, ws, bytes, d.zero, d.w, dw);
      });
}

#else
bool available() { return false; }
std::string unavailable_reason() { return "this build of kiln has no cuDNN support (cudnn.h was not found)"; }
void conv2d_forward(int device, const Conv2d&, const void*, const void*, void*) {
  fail<DeviceError>("conv2d on cuda:{}: {}", device, unavailable_reason());
}
void conv2d_backward_data(int device, const Conv2d&, const void*, const void*, void*) {
  fail<DeviceError>("conv2d_backward on cuda:{}: {}", device, unavailable_reason());
}
void conv2d_backward_filter(int device, const Conv2d&, const void*, const void*, void*) {
  fail<DeviceError>("conv2d_backward on cuda:{}: {}", device, unavailable_reason());
}
#endif

}  // namespace kiln::cudnn
