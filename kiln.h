#pragma once
// The C++ umbrella header: tensors, every eager op, and the runtime knobs.
#include "eager/autograd.h"
#include "eager/ops.h"
#include "eager/tensor.h"
#include "runtime/allocator.h"
#include "runtime/parallel.h"
#include "tracer/jit.h"
