// The CUDA driver layer: on a machine without a GPU (development, CI) it
// must say why CUDA is unavailable and refuse CUDA devices with that reason;
// on a machine with one (the lent GPU machine) it must see it.
#include <catch2/catch.hpp>

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
