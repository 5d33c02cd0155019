#pragma once
// cuDNN, loaded at run time like cuBLAS (runtime/cublas.h): convolutions on
// the GPU (eager/nn/conv.cpp). NCHW tensors, contiguous.
#include <cstdint>
#include <string>

#include "runtime/dtype.h"

namespace kiln::cudnn {

bool available();
std::string unavailable_reason();  // empty when available()

// A 2-d convolution's geometry (PyTorch's conv2d: cross-correlation).
struct Conv2d {
  int64_t N, C, H, W;     // input
  int64_t O, kh, kw;      // weight (O, C / groups, kh, kw)
  int64_t sh, sw, ph, pw, dh, dw, groups;
  int64_t Ho, Wo;         // output
  DType dtype;
};

// On cuda:`device`'s current stream; workspace from kiln's allocator.
// float32 uses TF32 tensor cores only when cublas::allow_tf32() (one flag
// for matmul and convolution).
void conv2d_forward(int device, const Conv2d& g, const void* x, const void* w, void* y);
void conv2d_backward_data(int device, const Conv2d& g, const void* w, const void* dy, void* dx);
void conv2d_backward_filter(int device, const Conv2d& g, const void* x, const void* dy, void* dw);

}  // namespace kiln::cudnn
