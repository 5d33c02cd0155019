// The device caching allocator's logic on a fake device (host memory with
// a capacity), so it runs without a GPU.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <set>
#include <thread>
#include <vector>

#include "runtime/block_allocator.h"
#include "runtime/error.h"

using namespace kiln;

namespace {

struct FakeDevice final : DeviceMemory {
  size_t capacity, used = 0;
  std::set<void*>* live;
  std::vector<size_t>* requests;
  FakeDevice(size_t capacity, std::set<void*>* live, std::vector<size_t>* requests)
      : capacity(capacity), live(live), requests(requests) {}
  std::unordered_map<void*, size_t> sizes;
  void* allocate(size_t n) override {
    requests->push_back(n);
    if (used + n > capacity) return nullptr;
    void* p = std::aligned_alloc(BlockAllocator::kRound, n);
    used += n;
    sizes[p] = n;
    live->insert(p);
    return p;
  }
  void release(void* p) override {
    REQUIRE(live->erase(p) == 1);
    used -= sizes[p];
    std::free(p);
  }
  Device device() const override { return Device{DeviceType::CUDA, 0}; }
};

constexpr size_t MiB = size_t{1} << 20;

}  // namespace

TEST_CASE("block allocator: rounding, alignment, reuse and small segments", "[allocator]") {
  std::set<void*> live;
  std::vector<size_t> requests;
  {
    BlockAllocator a(std::make_unique<FakeDevice>(64 * MiB, &live, &requests));
    void* p = a.allocate(1000);
    CHECK(reinterpret_cast<uintptr_t>(p) % BlockAllocator::kRound == 0);
    CHECK(a.block_stats().allocated_bytes == 1024);
    CHECK(requests == std::vector<size_t>{BlockAllocator::kSmallSegment});
    a.deallocate(p, 1000);
    CHECK(a.allocate(900) == p);  // the same block, from the cache
    std::vector<void*> more;
    for (int i = 0; i < 100; ++i) more.push_back(a.allocate(4096));
    CHECK(requests.size() == 1);  // 100 x 4 KiB share the first 2 MiB segment
    CHECK(std::set<void*>(more.begin(), more.end()).size() == 100);
    BlockAllocatorStats s = a.block_stats();
    CHECK(s.num_allocs == 102);
    CHECK(s.num_cache_hits == 101);
    CHECK(s.allocated_bytes == 1024 + 100 * 4096);
    CHECK(s.reserved_bytes == BlockAllocator::kSmallSegment);
    for (void* q : more) a.deallocate(q, 4096);
    a.deallocate(p, 900);
    CHECK(a.block_stats().allocated_bytes == 0);
    a.empty_cache();  // every block merged back into one free segment, which goes
    CHECK(a.block_stats().reserved_bytes == 0);
    CHECK(live.empty());
    CHECK(a.block_stats().peak_allocated_bytes == 1024 + 100 * 4096);
  }
  CHECK(live.empty());
}

TEST_CASE("block allocator: large blocks split, and merge when freed in any order", "[allocator]") {
  std::set<void*> live;
  std::vector<size_t> requests;
  BlockAllocator a(std::make_unique<FakeDevice>(64 * MiB, &live, &requests));
  char* big = static_cast<char*>(a.allocate(8 * MiB));
  a.deallocate(big, 8 * MiB);
  char* x = static_cast<char*>(a.allocate(3 * MiB));  // splits the 8 MiB block
  char* y = static_cast<char*>(a.allocate(5 * MiB));  // the rest of it
  CHECK(x == big);
  CHECK(y == big + 3 * MiB);
  CHECK(requests.size() == 1);
  a.deallocate(x, 3 * MiB);
  a.deallocate(y, 5 * MiB);
  CHECK(a.allocate(8 * MiB) == big);  // merged back whole
  CHECK(requests.size() == 1);
  // a remainder of 1 MiB or less stays with the block (no splinters)
  a.deallocate(big, 8 * MiB);
  CHECK(a.allocate(7 * MiB + 512 * 1024) == big);
  CHECK(a.block_stats().allocated_bytes == 8 * MiB);
}

TEST_CASE("block allocator: a block is reused only on the stream that freed it", "[allocator]") {
  std::set<void*> live;
  std::vector<size_t> requests;
  BlockAllocator a(std::make_unique<FakeDevice>(64 * MiB, &live, &requests));
  void* p = a.allocate(4 * MiB, /*stream=*/1);
  a.deallocate(p, 4 * MiB);
  void* q = a.allocate(4 * MiB, /*stream=*/2);
  CHECK(q != p);
  CHECK(a.allocate(4 * MiB, /*stream=*/1) == p);
  CHECK(requests.size() == 2);
}

TEST_CASE("block allocator: out of memory releases the cache, retries, then names the sizes", "[allocator]") {
  std::set<void*> live;
  std::vector<size_t> requests;
  BlockAllocator a(std::make_unique<FakeDevice>(8 * MiB, &live, &requests));
  void* p = a.allocate(4 * MiB);
  a.deallocate(p, 4 * MiB);             // 4 MiB cached, unused
  void* q = a.allocate(6 * MiB);        // 4 + 6 > 8: the cached segment goes, then it fits
  CHECK(a.block_stats().num_oom_retries == 1);
  CHECK(a.block_stats().reserved_bytes == 6 * MiB);
  CHECK_THROWS_AS(a.allocate(4 * MiB), DeviceError);
  CHECK_THROWS_WITH(a.allocate(4 * MiB), Catch::Contains("out of memory on cuda:0: tried to allocate 4.00 MiB; "
                                                          "6.00 MiB are in use"));
  a.deallocate(q, 6 * MiB);
  CHECK_NOTHROW(a.deallocate(a.allocate(4 * MiB), 4 * MiB));
  int local = 0;
  CHECK_THROWS_WITH(a.deallocate(&local, 4), Catch::Contains("was not allocated by the cuda:0 allocator"));
}

TEST_CASE("block allocator: threads allocating and freeing at once", "[allocator]") {
  std::set<void*> live;
  std::vector<size_t> requests;
  BlockAllocator a(std::make_unique<FakeDevice>(256 * MiB, &live, &requests));
  auto work = [&](unsigned seed) {
    std::vector<std::pair<void*, size_t>> held;
    for (int i = 0; i < 5000; ++i) {
      seed = seed * 1103515245u + 12345u;
      size_t n = (seed >> 8) % (3 * MiB) + 1;
      held.emplace_back(a.allocate(n, seed & 1), n);
      if (held.size() > 8) {
        a.deallocate(held.front().first, held.front().second);
        held.erase(held.begin());
      }
    }
    for (auto [p, n] : held) a.deallocate(p, n);
  };
  std::thread t1(work, 1u), t2(work, 2u);
  t1.join();
  t2.join();
  CHECK(a.block_stats().allocated_bytes == 0);
  a.empty_cache();
  CHECK(a.block_stats().reserved_bytes == 0);
  CHECK(live.empty());
}
