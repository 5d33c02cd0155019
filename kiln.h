#pragma once
// The C++ umbrella header: tensors, every eager op, and the runtime knobs.
#include "eager/ops.h"
#include "eager/tensor.h"
#include "runtime/allocator.h"
#include "runtime/parallel.h"
