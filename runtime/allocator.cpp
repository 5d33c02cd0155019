#include "runtime/allocator.h"

#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
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

class HostCachingAllocator final : public Allocator {
 public:
  HostCachingAllocator(std::function<void*(size_t)> raw_allocate, std::function<void(void*)> raw_release,
                       std::string what)
      : raw_allocate_(std::move(raw_allocate)), raw_release_(std::move(raw_release)), what_(std::move(what)) {}
  ~HostCachingAllocator() override { empty_cache(); }

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
    void* p = raw_allocate_(cls);
    if (!p) {
      empty_cache();
      p = raw_allocate_(cls);
    }
    if (!p) fail<Error>("out of memory: could not allocate {} bytes of {}", nbytes, what_);
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
      raw_release_(ptr);
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
      for (void* p : blocks) raw_release_(p);
    free_.clear();
    stats_.cached_bytes = 0;
  }

 private:
  static constexpr size_t kMaxCachedBytes = size_t{4} << 30;

  void note_alloc(size_t cls) {
    stats_.allocated_bytes += cls;
    stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
  }

  std::function<void*(size_t)> raw_allocate_;
  std::function<void(void*)> raw_release_;
  std::string what_;
  mutable std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  AllocatorStats stats_;
};

}  // namespace

std::unique_ptr<Allocator> make_host_caching_allocator(std::function<void*(size_t)> allocate,
                                                       std::function<void(void*)> release, std::string what) {
  return std::make_unique<HostCachingAllocator>(std::move(allocate), std::move(release), std::move(what));
}

Allocator& cpu_allocator() {
  // Leaked on purpose: tensors held by static objects may be freed after main.
  static Allocator* allocator =
      make_host_caching_allocator([](size_t n) { return std::aligned_alloc(kCpuAlignment, n); }, std::free, "cpu memory")
          .release();
  return *allocator;
}

}  // namespace kiln
