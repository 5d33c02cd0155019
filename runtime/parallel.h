#pragma once
#include <cstdint>
#include <type_traits>

namespace kiln {

// Threads kernels may use, the caller included. KILN_NUM_THREADS overrides
// the default (the number of hardware threads).
int num_threads();
void set_num_threads(int n);
bool in_parallel_region();

namespace detail {
using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end);
void parallel_for_impl(int64_t begin, int64_t end, int64_t grain, RangeFn fn, void* ctx);
}  // namespace detail

// Runs fn(b, e) over disjoint subranges covering [begin, end). Ranges of at
// most `grain` items, nested calls and one-thread pools run inline on the
// caller. An exception from any chunk is rethrown on the caller.
template <class F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, F&& fn) {
  if (end <= begin) return;
  if (end - begin <= grain || in_parallel_region() || num_threads() == 1) {
    fn(begin, end);
    return;
  }
  using Fn = std::remove_reference_t<F>;
  detail::parallel_for_impl(
      begin, end, grain,
      [](void* ctx, int64_t b, int64_t e) { (*static_cast<Fn*>(ctx))(b, e); },
      const_cast<void*>(static_cast<const void*>(&fn)));
}

}  // namespace kiln
