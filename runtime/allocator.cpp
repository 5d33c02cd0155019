#include "runtime/allocator.h"

#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "runtime/error.h"

namespace kiln {
namespace {

// Size classes: multiples of 64 B up to 4 KiB, then 8 classes per power of
// two (at most 12.5% waste).
size_t size_class(size_t n) {
  if (n <= 4096) return (n + 63) & ~size_t{63};
  int log2 = 63 - __builtin_clzll(n - 1);  // n - 1 < 2^(log2+1)
  size_t step = size_t{1} << (log2 - 3);
  return (n + step - 1) & ~(step - 1);
}

class CpuCachingAllocator final : public Allocator {
 public:
  ~CpuCachingAllocator() override { empty_cache(); }

  void* allocate(size_t nbytes) override {
    size_t cls = size_class(std::max<size_t>(nbytes, 1));
    {
      std::lock_guard lock(mutex_);
      ++stats_.num_allocs;
      auto it = free_.find(cls);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        stats_.cached_bytes -= cls;
        ++stats_.num_cache_hits;
        note_alloc(cls);
        return p;
      }
    }
    void* p = std::aligned_alloc(kCpuAlignment, cls);
    if (!p) {
      empty_cache();
      p = std::aligned_alloc(kCpuAlignment, cls);
    }
    if (!p) fail<Error>("out of memory: could not allocate {} bytes on cpu", nbytes);
    std::lock_guard lock(mutex_);
    note_alloc(cls);
    return p;
  }

  void deallocate(void* ptr, size_t nbytes) override {
    if (!ptr) return;
    size_t cls = size_class(std::max<size_t>(nbytes, 1));
    std::lock_guard lock(mutex_);
    stats_.allocated_bytes -= cls;
    if (stats_.cached_bytes + cls > kMaxCachedBytes) {
      std::free(ptr);
      return;
    }
    free_[cls].push_back(ptr);
    stats_.cached_bytes += cls;
  }

  Device device() const override { return kCPU; }

  AllocatorStats stats() const override {
    std::lock_guard lock(mutex_);
    return stats_;
  }

  void empty_cache() override {
    std::lock_guard lock(mutex_);
    for (auto& [cls, blocks] : free_)
      for (void* p : blocks) std::free(p);
    free_.clear();
    stats_.cached_bytes = 0;
  }

 private:
  static constexpr size_t kMaxCachedBytes = size_t{4} << 30;

  void note_alloc(size_t cls) {
    stats_.allocated_bytes += cls;
    stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
  }

  mutable std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  AllocatorStats stats_;
};

}  // namespace

Allocator& cpu_allocator() {
  // Leaked on purpose: tensors held by static objects may be freed after main.
  static auto* allocator = new CpuCachingAllocator();
  return *allocator;
}

}  // namespace kiln
