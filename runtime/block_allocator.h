#pragma once
// A caching allocator for device memory: PyTorch's CUDA allocator reduced
// to its core. Memory comes from the device in segments (cuMemAlloc is slow
// and synchronizes), is handed out as blocks carved from them, and a freed
// block is kept, merged with free neighbours, and reused by later requests
// on the same stream (work queued on one stream may still use it; reuse on
// another would race). Requests take the best-fitting free block, split
// when much larger. Small requests (up to 1 MiB) share 2 MiB segments; large
// ones get segments rounded to 2 MiB. When the device is out of memory, the
// cache's unused segments are released and the request is retried once; then
// it fails with a DeviceError saying how much is in use and reserved. The
// device is reached through DeviceMemory, so the logic is tested on the CPU
// (tests/cpp/test_block_allocator.cpp).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <unordered_map>

#include "runtime/allocator.h"

namespace kiln {

using StreamId = uintptr_t;  // an opaque stream handle; 0 is the default stream

// Raw memory of one device.
class DeviceMemory {
 public:
  virtual ~DeviceMemory() = default;
  virtual void* allocate(size_t nbytes) = 0;  // nullptr when out of memory
  virtual void release(void* ptr) = 0;
  virtual Device device() const = 0;
};

struct BlockAllocatorStats {
  size_t allocated_bytes = 0, peak_allocated_bytes = 0;  // in blocks handed out
  size_t reserved_bytes = 0, peak_reserved_bytes = 0;    // in segments taken from the device
  uint64_t num_allocs = 0, num_cache_hits = 0;           // hits: served without a new segment
  uint64_t num_segments = 0, num_oom_retries = 0;        // segments held now; retries after releasing the cache
};

class BlockAllocator final : public Allocator {
 public:
  static constexpr size_t kRound = 512;             // block sizes and alignment
  static constexpr size_t kSmallSize = 1 << 20;     // up to this, from the small pool
  static constexpr size_t kSmallSegment = 2 << 20;  // the small pool's segment size
  static constexpr size_t kLargeRound = 2 << 20;    // large segments are multiples of this
  static constexpr size_t kLargeSplit = 1 << 20;    // a large block splits off more than this

  explicit BlockAllocator(std::unique_ptr<DeviceMemory> memory);
  ~BlockAllocator() override;  // returns every segment to the device

  void* allocate(size_t nbytes) override { return allocate(nbytes, 0); }
  void* allocate(size_t nbytes, StreamId stream);
  void deallocate(void* ptr, size_t nbytes) override;
  Device device() const override;
  AllocatorStats stats() const override;
  BlockAllocatorStats block_stats() const;
  void reset_peak_stats();  // the peaks start again from the current values
  void empty_cache() override;  // returns the segments no block is using

 private:
  struct Block {
    char* ptr;
    size_t size;
    StreamId stream;
    bool small;
    bool allocated = false;
    Block* prev = nullptr;  // neighbours within the segment
    Block* next = nullptr;
  };
  struct BySize {
    bool operator()(const Block* a, const Block* b) const;
  };
  using Pool = std::set<Block*, BySize>;

  Pool& pool(const Block& b) { return b.small ? small_free_ : large_free_; }
  void release_free_segments();
  void take(Block* block, size_t size);

  std::unique_ptr<DeviceMemory> memory_;
  mutable std::mutex mutex_;
  Pool small_free_, large_free_;
  std::unordered_map<void*, Block*> allocated_;
  BlockAllocatorStats stats_;
};

}  // namespace kiln
