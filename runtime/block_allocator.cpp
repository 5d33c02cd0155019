#include "runtime/block_allocator.h"

#include <tuple>
#include <vector>

#include "runtime/error.h"

namespace kiln {
namespace {

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

std::string bytes_text(size_t n) {
  if (n >= (size_t{1} << 30)) return fmt::format("{:.2f} GiB", n / double(size_t{1} << 30));
  if (n >= (size_t{1} << 20)) return fmt::format("{:.2f} MiB", n / double(size_t{1} << 20));
  return fmt::format("{} bytes", n);
}

}  // namespace

bool BlockAllocator::BySize::operator()(const Block* a, const Block* b) const {
  return std::tie(a->stream, a->size, a->ptr) < std::tie(b->stream, b->size, b->ptr);
}

BlockAllocator::BlockAllocator(std::unique_ptr<DeviceMemory> memory) : memory_(std::move(memory)) {}

BlockAllocator::~BlockAllocator() {
  std::vector<Block*> blocks(small_free_.begin(), small_free_.end());
  blocks.insert(blocks.end(), large_free_.begin(), large_free_.end());
  for (auto& [ptr, block] : allocated_) blocks.push_back(block);
  for (Block* b : blocks)
    if (!b->prev) memory_->release(b->ptr);
  for (Block* b : blocks) delete b;
}

Device BlockAllocator::device() const { return memory_->device(); }

void* BlockAllocator::allocate(size_t nbytes, StreamId stream) {
  size_t size = round_up(std::max<size_t>(nbytes, 1), kRound);
  bool small = size <= kSmallSize;
  std::lock_guard lock(mutex_);
  ++stats_.num_allocs;
  Pool& free = small ? small_free_ : large_free_;
  Block key{nullptr, size, stream, small};
  auto it = free.lower_bound(&key);
  Block* block = nullptr;
  if (it != free.end() && (*it)->stream == stream) {
    block = *it;
    free.erase(it);
    ++stats_.num_cache_hits;
  } else {
    size_t segment = small ? kSmallSegment : round_up(size, kLargeRound);
    void* p = memory_->allocate(segment);
    if (!p) {
      ++stats_.num_oom_retries;
      release_free_segments();
      p = memory_->allocate(segment);
    }
    KILN_CHECK(p, DeviceError,
               "out of memory on {}: tried to allocate {}; {} are in use by tensors and {} reserved by kiln "
               "in all (free tensors you no longer need, or use smaller batches)",
               memory_->device().str(), bytes_text(nbytes), bytes_text(stats_.allocated_bytes),
               bytes_text(stats_.reserved_bytes));
    block = new Block{static_cast<char*>(p), segment, stream, small};
    stats_.reserved_bytes += segment;
    stats_.peak_reserved_bytes = std::max(stats_.peak_reserved_bytes, stats_.reserved_bytes);
    ++stats_.num_segments;
  }
  take(block, size);
  return block->ptr;
}

// Hands out the first `size` bytes of a free block; a large enough rest
// stays free as a block of its own.
void BlockAllocator::take(Block* block, size_t size) {
  size_t rest = block->size - size;
  if (block->small ? rest >= kRound : rest > kLargeSplit) {
    auto* tail = new Block{block->ptr + size, rest, block->stream, block->small};
    tail->prev = block;
    tail->next = block->next;
    if (block->next) block->next->prev = tail;
    block->next = tail;
    block->size = size;
    pool(*tail).insert(tail);
  }
  block->allocated = true;
  allocated_[block->ptr] = block;
  stats_.allocated_bytes += block->size;
  stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
}

void BlockAllocator::deallocate(void* ptr, size_t) {
  if (!ptr) return;
  std::lock_guard lock(mutex_);
  auto it = allocated_.find(ptr);
  KILN_CHECK(it != allocated_.end(), Error, "deallocate: {} was not allocated by the {} allocator", ptr,
             memory_->device().str());
  Block* block = it->second;
  allocated_.erase(it);
  block->allocated = false;
  stats_.allocated_bytes -= block->size;
  Pool& free = pool(*block);
  // merge with free neighbours (same segment, so same stream and pool)
  auto join = [](Block* left, Block* right) {
    left->size += right->size;
    left->next = right->next;
    if (right->next) right->next->prev = left;
    delete right;
    return left;
  };
  if (Block* prev = block->prev; prev && !prev->allocated) {
    free.erase(prev);
    block = join(prev, block);
  }
  if (Block* next = block->next; next && !next->allocated) {
    free.erase(next);
    join(block, next);
  }
  free.insert(block);
}

void BlockAllocator::release_free_segments() {
  for (Pool* free : {&small_free_, &large_free_}) {
    for (auto it = free->begin(); it != free->end();) {
      Block* b = *it;
      if (b->prev || b->next) {  // part of a segment some block still uses
        ++it;
        continue;
      }
      memory_->release(b->ptr);
      stats_.reserved_bytes -= b->size;
      --stats_.num_segments;
      it = free->erase(it);
      delete b;
    }
  }
}

void BlockAllocator::empty_cache() {
  std::lock_guard lock(mutex_);
  release_free_segments();
}

void BlockAllocator::reset_peak_stats() {
  std::lock_guard lock(mutex_);
  stats_.peak_allocated_bytes = stats_.allocated_bytes;
  stats_.peak_reserved_bytes = stats_.reserved_bytes;
}

BlockAllocatorStats BlockAllocator::block_stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

AllocatorStats BlockAllocator::stats() const {
  BlockAllocatorStats s = block_stats();
  return AllocatorStats{.allocated_bytes = s.allocated_bytes,
                        .cached_bytes = s.reserved_bytes - s.allocated_bytes,
                        .peak_allocated_bytes = s.peak_allocated_bytes,
                        .num_allocs = s.num_allocs,
                        .num_cache_hits = s.num_cache_hits};
}

}  // namespace kiln
