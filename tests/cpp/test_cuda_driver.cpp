// The CUDA driver layer: on a machine without a GPU (development, CI) it
// must say why CUDA is unavailable and refuse CUDA devices with that reason;
// on a machine with one (the lent GPU machine) it must see it.
#include <catch2/catch.hpp>

#include <algorithm>
#include <vector>

#include "runtime/cuda_driver.h"
#include "runtime/error.h"

using namespace kiln;

TEST_CASE("the CUDA driver is found or refused with a reason", "[cuda]") {
  if (!cuda::available()) {
    WARN("no usable CUDA driver or GPU here (" << cuda::unavailable_reason() << "): checking the refusals only");
    CHECK(!cuda::unavailable_reason().empty());
    CHECK(cuda::device_count() == 0);
    CHECK_THROWS_WITH(cuda::require(Device::parse("cuda"), "ones"),
                      Catch::Contains("ones: CUDA is not available: " + cuda::unavailable_reason()));
    CHECK_THROWS_AS(cuda::synchronize(0), DeviceError);
    CHECK_THROWS_AS(cuda::device_properties(0), DeviceError);
    CHECK_NOTHROW(cuda::require(kCPU, "ones"));
    return;
  }
  CHECK(cuda::unavailable_reason().empty());
  REQUIRE(cuda::device_count() >= 1);
  CHECK(cuda::driver_version() >= 12000);
  cuda::DeviceProperties p = cuda::device_properties(0);
  INFO(p.name);
  CHECK(!p.name.empty());
  CHECK(p.total_memory > (int64_t{1} << 30));
  CHECK(p.compute_capability_major >= 5);
  CHECK(p.multiprocessors > 0);
  CHECK_NOTHROW(cuda::synchronize(0));
  CHECK_NOTHROW(cuda::require(Device{DeviceType::CUDA, 0}, "ones"));
  CHECK_THROWS_WITH(cuda::require(Device{DeviceType::CUDA, cuda::device_count()}, "ones"),
                    Catch::Contains("no CUDA device"));
}

TEST_CASE("a failing driver call names the call", "[cuda]") {
  // 2 is CUDA_ERROR_OUT_OF_MEMORY; without a driver there is no name for it
  CHECK_NOTHROW(cuda::check(0, "cuMemAlloc"));
  CHECK_THROWS_WITH(cuda::check(2, "cuMemAlloc"), Catch::Contains("CUDA: cuMemAlloc failed"));
  if (cuda::available()) CHECK_THROWS_WITH(cuda::check(2, "cuMemAlloc"), Catch::Contains("CUDA_ERROR_OUT_OF_MEMORY"));
}

TEST_CASE("the block allocator on the GPU's own memory", "[cuda][allocator]") {
  if (!cuda::available()) {
    WARN("no CUDA GPU here (" << cuda::unavailable_reason() << "): skipped");
    CHECK_THROWS_AS(cuda::device_memory(0), DeviceError);
    return;
  }
  BlockAllocator a(cuda::device_memory(0));
  void* p = a.allocate(3 << 20);
  cuda::memset(p, 0x5A, 3 << 20, 0);
  std::vector<unsigned char> back(3 << 20);
  cuda::copy_to_host(back.data(), p, back.size(), 0);
  CHECK(std::all_of(back.begin(), back.end(), [](unsigned char c) { return c == 0x5A; }));
  a.deallocate(p, 3 << 20);
  CHECK(a.allocate(3 << 20) == p);
  CHECK(a.block_stats().num_segments == 1);
  // more than the GPU has: a DeviceError that says so, not a crash
  CHECK_THROWS_WITH(a.allocate(size_t{1} << 50), Catch::Contains("out of memory on cuda:0"));
}
