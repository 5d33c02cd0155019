// The emulator's libcudnn.so.9: the classic 2-D convolution API kiln calls
// (runtime/cudnn.cpp) for NCHW tensors, computed in plain loops. It checks
// what cuDNN checks (the output shape against the convolution's, groups,
// types) and that every pointer is device memory, and it asks for a
// workspace, so that kiln's workspace path runs.
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include <cudnn.h>

#include <cstdint>
#include <vector>

#include "tests/cuda_emulator/emulator.h"
#include "tests/cuda_emulator/values.h"

struct cudnnContext {
  int device = -1;  // current when it was created
  cudaStream_t stream = nullptr;
};
struct cudnnTensorStruct {
  cudnnDataType_t type = CUDNN_DATA_FLOAT;
  int n = 0, c = 0, h = 0, w = 0;
  bool set = false;
};
struct cudnnFilterStruct : cudnnTensorStruct {};
struct cudnnConvolutionStruct {
  int pad_h = 0, pad_w = 0, stride_h = 1, stride_w = 1, dilation_h = 1, dilation_w = 1, groups = 1;
  cudnnDataType_t compute = CUDNN_DATA_FLOAT;
  bool set = false;
};

namespace {

constexpr size_t kWorkspaceBytes = 256;  // asked for by every algorithm, checked by every call

using kiln_cuda_emulator::Format;

// (set_4d takes only these)
Format format_of(const cudnnTensorStruct& t) {
  switch (t.type) {
    case CUDNN_DATA_FLOAT: return Format::F32;
    case CUDNN_DATA_DOUBLE: return Format::F64;
    case CUDNN_DATA_HALF: return Format::F16;
    default: return Format::BF16;
  }
}
double load(const void* p, const cudnnTensorStruct& t, int64_t i) { return kiln_cuda_emulator::load(p, format_of(t), i); }

int64_t elements(const cudnnTensorStruct& t) { return int64_t{t.n} * t.c * t.h * t.w; }

// Memory of the device that is current (and the handle's: checked first).
bool on_device(const void* p, const cudnnTensorStruct& t) {
  return elements(t) == 0 || kiln_cuda_emulator::memory_device(p, elements(t) * kiln_cuda_emulator::format_bytes(format_of(t))) ==
                                 kiln_cuda_emulator::current_device();
}

// The shapes of one convolution, checked as cuDNN does.
struct Shapes {
  const cudnnTensorStruct& x;
  const cudnnFilterStruct& w;
  const cudnnConvolutionStruct& conv;
  const cudnnTensorStruct& y;

  cudnnStatus_t check() const {
    if (!x.set || !w.set || !conv.set || !y.set) return CUDNN_STATUS_BAD_PARAM;
    if (x.type != w.type || x.type != y.type) return CUDNN_STATUS_BAD_PARAM;
    if ((x.type == CUDNN_DATA_DOUBLE) != (conv.compute == CUDNN_DATA_DOUBLE)) return CUDNN_STATUS_NOT_SUPPORTED;
    if (w.c * conv.groups != x.c || w.n % conv.groups != 0 || y.c != w.n || y.n != x.n) return CUDNN_STATUS_BAD_PARAM;
    auto out = [](int in, int pad, int kernel, int stride, int dilation) {
      return (in + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1;
    };
    if (y.h != out(x.h, conv.pad_h, w.h, conv.stride_h, conv.dilation_h) ||
        y.w != out(x.w, conv.pad_w, w.w, conv.stride_w, conv.dilation_w))
      return CUDNN_STATUS_BAD_PARAM;
    return CUDNN_STATUS_SUCCESS;
  }

  // Calls f(y index, x index, w index) for every product of the
  // convolution (y[n, o, oh, ow] += x[n, c, ih, iw] * w[o, c - group's first, kh, kw]).
  template <class F>
  void each_product(F f) const {
    const int per_group_out = w.n / conv.groups;
    for (int64_t n = 0; n < x.n; ++n)
      for (int64_t o = 0; o < w.n; ++o) {
        const int64_t group = o / per_group_out;
        for (int64_t oh = 0; oh < y.h; ++oh)
          for (int64_t ow = 0; ow < y.w; ++ow) {
            const int64_t yi = ((n * y.c + o) * y.h + oh) * y.w + ow;
            for (int64_t c = 0; c < w.c; ++c)
              for (int64_t kh = 0; kh < w.h; ++kh) {
                const int64_t ih = oh * conv.stride_h - conv.pad_h + kh * conv.dilation_h;
                if (ih < 0 || ih >= x.h) continue;
                for (int64_t kw = 0; kw < w.w; ++kw) {
                  const int64_t iw = ow * conv.stride_w - conv.pad_w + kw * conv.dilation_w;
                  if (iw < 0 || iw >= x.w) continue;
                  const int64_t xi = ((n * x.c + group * w.c + c) * x.h + ih) * x.w + iw;
                  const int64_t wi = ((o * w.c + c) * w.h + kh) * w.w + kw;
                  f(yi, xi, wi);
                }
              }
          }
      }
  }
};

// out = alpha * sum + beta * out over `out`'s elements (beta == 0: out is
// not read).
void blend(const void* alpha, const void* beta, const cudnnTensorStruct& t, void* out, const std::vector<double>& sum) {
  const bool f64 = t.type == CUDNN_DATA_DOUBLE;
  const double a = f64 ? *static_cast<const double*>(alpha) : *static_cast<const float*>(alpha);
  const double b = f64 ? *static_cast<const double*>(beta) : *static_cast<const float*>(beta);
  for (int64_t i = 0; i < elements(t); ++i)
    kiln_cuda_emulator::store(out, format_of(t), i, a * sum[static_cast<size_t>(i)] + (b == 0 ? 0 : b * load(out, t, i)));
}

template <class Perf, class Algo>
cudnnStatus_t one_algorithm(const Shapes& s, int requested, int* returned, Perf* perf, Algo algo) {
  if (requested < 1 || !returned || !perf) return CUDNN_STATUS_BAD_PARAM;
  if (cudnnStatus_t status = s.check()) return status;
  perf[0] = {};
  perf[0].algo = algo;
  perf[0].status = CUDNN_STATUS_SUCCESS;
  perf[0].memory = kWorkspaceBytes;
  *returned = 1;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t workspace_size(const Shapes& s, size_t* bytes) {
  if (cudnnStatus_t status = s.check()) return status;
  *bytes = kWorkspaceBytes;
  return CUDNN_STATUS_SUCCESS;
}

// A call's handle (of the current device), shapes and workspace.
cudnnStatus_t usable(cudnnHandle_t handle, const Shapes& s, void* workspace, size_t workspace_bytes) {
  if (!handle || handle->device != kiln_cuda_emulator::current_device()) return CUDNN_STATUS_EXECUTION_FAILED;
  if (cudnnStatus_t status = s.check()) return status;
  if (workspace_bytes < kWorkspaceBytes ||
      kiln_cuda_emulator::memory_device(workspace, kWorkspaceBytes) != handle->device)
    return CUDNN_STATUS_BAD_PARAM;
  return CUDNN_STATUS_SUCCESS;
}

// One call: the tensor `written` (y forward, x backward data, w backward
// filter) = alpha * the sum of the other two's products + beta * itself.
enum class Written { Y, X, W };
cudnnStatus_t convolve(cudnnHandle_t handle, const Shapes& s, void* workspace, size_t workspace_bytes,
                       const void* alpha, const void* beta, const void* x, const void* w, const void* y,
                       Written written) {
  if (cudnnStatus_t status = usable(handle, s, workspace, workspace_bytes)) return status;
  if (!on_device(x, s.x) || !on_device(w, s.w) || !on_device(y, s.y)) return CUDNN_STATUS_BAD_PARAM;
  const cudnnTensorStruct& out = written == Written::Y ? s.y : written == Written::X ? s.x : s.w;
  std::vector<double> sum(static_cast<size_t>(elements(out)));
  s.each_product([&](int64_t yi, int64_t xi, int64_t wi) {
    switch (written) {
      case Written::Y: sum[yi] += load(x, s.x, xi) * load(w, s.w, wi); break;
      case Written::X: sum[xi] += load(y, s.y, yi) * load(w, s.w, wi); break;
      case Written::W: sum[wi] += load(y, s.y, yi) * load(x, s.x, xi); break;
    }
  });
  void* target = const_cast<void*>(written == Written::Y ? y : written == Written::X ? x : w);
  blend(alpha, beta, out, target, sum);
  return CUDNN_STATUS_SUCCESS;
}

}  // namespace

#define KILN_EXPORT extern "C" __attribute__((visibility("default")))

KILN_EXPORT cudnnStatus_t cudnnCreate(cudnnHandle_t* handle) {
  if (!handle) return CUDNN_STATUS_BAD_PARAM;
  const int device = kiln_cuda_emulator::current_device();
  if (device < 0) return CUDNN_STATUS_NOT_INITIALIZED;  // no context current
  *handle = new cudnnContext{device};
  return CUDNN_STATUS_SUCCESS;
}

KILN_EXPORT cudnnStatus_t cudnnSetStream(cudnnHandle_t handle, cudaStream_t stream) {
  if (!handle) return CUDNN_STATUS_BAD_PARAM;
  handle->stream = stream;
  return CUDNN_STATUS_SUCCESS;
}

KILN_EXPORT const char* cudnnGetErrorString(cudnnStatus_t status) {
  switch (status) {
    case CUDNN_STATUS_SUCCESS: return "CUDNN_STATUS_SUCCESS";
    case CUDNN_STATUS_BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM";
    case CUDNN_STATUS_NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED";
    default: return "CUDNN_STATUS_EXECUTION_FAILED";
  }
}

KILN_EXPORT cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t* t) {
  *t = new cudnnTensorStruct;
  return CUDNN_STATUS_SUCCESS;
}
KILN_EXPORT cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t t) {
  delete t;
  return CUDNN_STATUS_SUCCESS;
}
KILN_EXPORT cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t* f) {
  *f = new cudnnFilterStruct;
  return CUDNN_STATUS_SUCCESS;
}
KILN_EXPORT cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t f) {
  delete f;
  return CUDNN_STATUS_SUCCESS;
}
KILN_EXPORT cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t* c) {
  *c = new cudnnConvolutionStruct;
  return CUDNN_STATUS_SUCCESS;
}
KILN_EXPORT cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t c) {
  delete c;
  return CUDNN_STATUS_SUCCESS;
}

namespace {
cudnnStatus_t set_4d(cudnnTensorStruct* t, cudnnTensorFormat_t format, cudnnDataType_t type, int n, int c, int h,
                     int w) {
  if (!t || format != CUDNN_TENSOR_NCHW || n <= 0 || c <= 0 || h <= 0 || w <= 0) return CUDNN_STATUS_BAD_PARAM;
  if (type != CUDNN_DATA_FLOAT && type != CUDNN_DATA_DOUBLE && type != CUDNN_DATA_HALF && type != CUDNN_DATA_BFLOAT16)
    return CUDNN_STATUS_NOT_SUPPORTED;
  *t = {type, n, c, h, w, true};
  return CUDNN_STATUS_SUCCESS;
}
}  // namespace

KILN_EXPORT cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t t, cudnnTensorFormat_t format,
                                                     cudnnDataType_t type, int n, int c, int h, int w) {
  return set_4d(t, format, type, n, c, h, w);
}

KILN_EXPORT cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t f, cudnnDataType_t type,
                                                     cudnnTensorFormat_t format, int k, int c, int h, int w) {
  return set_4d(f, format, type, k, c, h, w);
}

KILN_EXPORT cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t conv, int pad_h, int pad_w,
                                                          int stride_h, int stride_w, int dilation_h, int dilation_w,
                                                          cudnnConvolutionMode_t mode, cudnnDataType_t compute) {
  if (!conv || pad_h < 0 || pad_w < 0 || stride_h <= 0 || stride_w <= 0 || dilation_h <= 0 || dilation_w <= 0)
    return CUDNN_STATUS_BAD_PARAM;
  if (mode != CUDNN_CROSS_CORRELATION || (compute != CUDNN_DATA_FLOAT && compute != CUDNN_DATA_DOUBLE))
    return CUDNN_STATUS_NOT_SUPPORTED;
  conv->pad_h = pad_h, conv->pad_w = pad_w, conv->stride_h = stride_h, conv->stride_w = stride_w;
  conv->dilation_h = dilation_h, conv->dilation_w = dilation_w, conv->compute = compute, conv->set = true;
  return CUDNN_STATUS_SUCCESS;
}

KILN_EXPORT cudnnStatus_t cudnnSetConvolutionGroupCount(cudnnConvolutionDescriptor_t conv, int groups) {
  if (!conv || groups < 1) return CUDNN_STATUS_BAD_PARAM;
  conv->groups = groups;
  return CUDNN_STATUS_SUCCESS;
}

KILN_EXPORT cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t conv, cudnnMathType_t math) {
  if (!conv) return CUDNN_STATUS_BAD_PARAM;
  return math == CUDNN_DEFAULT_MATH || math == CUDNN_TENSOR_OP_MATH || math == CUDNN_FMA_MATH ||
                 math == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION
             ? CUDNN_STATUS_SUCCESS
             : CUDNN_STATUS_BAD_PARAM;
}

// ---- forward: y = x (*) w ----

KILN_EXPORT cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(cudnnHandle_t, const cudnnTensorDescriptor_t x,
                                                                 const cudnnFilterDescriptor_t w,
                                                                 const cudnnConvolutionDescriptor_t conv,
                                                                 const cudnnTensorDescriptor_t y, const int requested,
                                                                 int* returned, cudnnConvolutionFwdAlgoPerf_t* perf) {
  return one_algorithm(Shapes{*x, *w, *conv, *y}, requested, returned, perf, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM);
}

KILN_EXPORT cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(cudnnHandle_t, const cudnnTensorDescriptor_t x,
                                                                  const cudnnFilterDescriptor_t w,
                                                                  const cudnnConvolutionDescriptor_t conv,
                                                                  const cudnnTensorDescriptor_t y,
                                                                  cudnnConvolutionFwdAlgo_t, size_t* bytes) {
  return workspace_size(Shapes{*x, *w, *conv, *y}, bytes);
}

KILN_EXPORT cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t handle, const void* alpha, const cudnnTensorDescriptor_t x_desc,
                                                  const void* x, const cudnnFilterDescriptor_t w_desc, const void* w,
                                                  const cudnnConvolutionDescriptor_t conv, cudnnConvolutionFwdAlgo_t,
                                                  void* workspace, size_t workspace_bytes, const void* beta,
                                                  const cudnnTensorDescriptor_t y_desc, void* y) {
  return convolve(handle, {*x_desc, *w_desc, *conv, *y_desc}, workspace, workspace_bytes, alpha, beta, x, w, y,
                  Written::Y);
}

// ---- backward data: dx = dy (*)^T w ----

KILN_EXPORT cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(cudnnHandle_t, const cudnnFilterDescriptor_t w,
                                                                     const cudnnTensorDescriptor_t dy,
                                                                     const cudnnConvolutionDescriptor_t conv,
                                                                     const cudnnTensorDescriptor_t dx,
                                                                     const int requested, int* returned,
                                                                     cudnnConvolutionBwdDataAlgoPerf_t* perf) {
  return one_algorithm(Shapes{*dx, *w, *conv, *dy}, requested, returned, perf, CUDNN_CONVOLUTION_BWD_DATA_ALGO_1);
}

KILN_EXPORT cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(cudnnHandle_t, const cudnnFilterDescriptor_t w,
                                                                       const cudnnTensorDescriptor_t dy,
                                                                       const cudnnConvolutionDescriptor_t conv,
                                                                       const cudnnTensorDescriptor_t dx,
                                                                       cudnnConvolutionBwdDataAlgo_t, size_t* bytes) {
  return workspace_size(Shapes{*dx, *w, *conv, *dy}, bytes);
}

KILN_EXPORT cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t handle, const void* alpha,
                                                       const cudnnFilterDescriptor_t w_desc, const void* w,
                                                       const cudnnTensorDescriptor_t dy_desc, const void* dy,
                                                       const cudnnConvolutionDescriptor_t conv,
                                                       cudnnConvolutionBwdDataAlgo_t, void* workspace,
                                                       size_t workspace_bytes, const void* beta,
                                                       const cudnnTensorDescriptor_t dx_desc, void* dx) {
  return convolve(handle, {*dx_desc, *w_desc, *conv, *dy_desc}, workspace, workspace_bytes, alpha, beta, dx, w, dy,
                  Written::X);
}

// ---- backward filter: dw = x (*)^T dy ----

KILN_EXPORT cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(cudnnHandle_t, const cudnnTensorDescriptor_t x,
                                                                       const cudnnTensorDescriptor_t dy,
                                                                       const cudnnConvolutionDescriptor_t conv,
                                                                       const cudnnFilterDescriptor_t dw,
                                                                       const int requested, int* returned,
                                                                       cudnnConvolutionBwdFilterAlgoPerf_t* perf) {
  return one_algorithm(Shapes{*x, *dw, *conv, *dy}, requested, returned, perf, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1);
}

KILN_EXPORT cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(cudnnHandle_t, const cudnnTensorDescriptor_t x,
                                                                         const cudnnTensorDescriptor_t dy,
                                                                         const cudnnConvolutionDescriptor_t conv,
                                                                         const cudnnFilterDescriptor_t dw,
                                                                         cudnnConvolutionBwdFilterAlgo_t, size_t* bytes) {
  return workspace_size(Shapes{*x, *dw, *conv, *dy}, bytes);
}

KILN_EXPORT cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t handle, const void* alpha,
                                                         const cudnnTensorDescriptor_t x_desc, const void* x,
                                                         const cudnnTensorDescriptor_t dy_desc, const void* dy,
                                                         const cudnnConvolutionDescriptor_t conv,
                                                         cudnnConvolutionBwdFilterAlgo_t, void* workspace,
                                                         size_t workspace_bytes, const void* beta,
                                                         const cudnnFilterDescriptor_t dw_desc, void* dw) {
  return convolve(handle, {*x_desc, *dw_desc, *conv, *dy_desc}, workspace, workspace_bytes, alpha, beta, x, dw, dy,
                  Written::W);
}
