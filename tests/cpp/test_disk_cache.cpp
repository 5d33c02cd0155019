// The compile cache: kiln objects (compile once, link in milliseconds) and
// the disk cache that keeps them across processes.
#include <catch2/catch.hpp>

#include "tests/cpp/memref.h"
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>
#include <vector>

#include "codegen/disk_cache.h"
#include "codegen/jit_smoke.h"

using kiln::codegen::CacheKey;
using kiln::codegen::CpuJit;
using kiln::codegen::DiskCache;
using kiln::codegen::JitError;
using Catch::Contains;
namespace fs = std::filesystem;

namespace {

// A fresh directory per test, removed afterwards.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::mt19937_64 random{std::random_device{}()};
    path = fs::temp_directory_path() / fmt::format("kiln-cache-test-{}-{:x}", ::getpid(), random());
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
  size_t entries() const {
    return std::count_if(fs::directory_iterator(path), fs::directory_iterator(),
                         [](const auto& e) { return e.path().extension() == ".kcache"; });
  }
};

CacheKey key(std::string ir, std::string target = "x86_64;cpu=znver4") {
  return {{{"ir", std::move(ir)}, {"target", std::move(target)}, {"kiln", "0.1.0"}}};
}

fs::path entry_file(const TempDir& dir, const CacheKey& k) {
  return dir.path / (k.digest() + ".kcache");
}

std::string read_all(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_all(const fs::path& path, std::string_view bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), bytes.size());
}

// a + b into out, elementwise; exp(x) through libm; a call into the host.
constexpr const char* kModule = R"mlir(
func.func @add(%a: memref<?xf32>, %b: memref<?xf32>, %out: memref<?xf32>)
    attributes {llvm.emit_c_interface} {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %n = memref.dim %a, %c0 : memref<?xf32>
  scf.for %i = %c0 to %n step %c1 {
    %x = memref.load %a[%i] : memref<?xf32>
    %y = memref.load %b[%i] : memref<?xf32>
    %s = arith.addf %x, %y : f32
    memref.store %s, %out[%i] : memref<?xf32>
  }
  return
}

func.func @exp(%x: f32) -> f32 {
  %e = math.exp %x : f32
  return %e : f32
}
)mlir";

constexpr const char* kCallsHost = R"mlir(
func.func private @kiln_test_host_twice(f32) -> f32
func.func @twice_plus_one(%x: f32) -> f32 {
  %one = arith.constant 1.0 : f32
  %t = func.call @kiln_test_host_twice(%x) : (f32) -> f32
  %r = arith.addf %t, %one : f32
  return %r : f32
}
)mlir";

extern "C" float kiln_test_host_twice(float x) { return 2 * x; }

template <class F>
double median_ms(int runs, F&& f) {
  std::vector<double> times;
  for (int i = 0; i < runs; ++i) {
    auto start = std::chrono::steady_clock::now();
    f();
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

TEST_CASE("Object: compiled once, loaded without MLIR, runs like a fresh compile", "[mlir][cache]") {
  std::string object = kiln::codegen::compile_object(kModule);
  CpuJit jit = CpuJit::from_object(object);
  CHECK(jit.functions() == std::vector<std::string>{"_mlir_ciface_add", "add", "exp"});
  CHECK(jit.object_code() == object);

  std::vector<float> a{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17};
  std::vector<float> b(a.size(), 0.5f), out(a.size());
  MemRef1D ad = view(a), bd = view(b), outd = view(out);
  jit.function<void(MemRef1D*, MemRef1D*, MemRef1D*)>("_mlir_ciface_add")(&ad, &bd, &outd);
  for (size_t i = 0; i < a.size(); ++i) CHECK(out[i] == a[i] + 0.5f);
  // Through the packed wrappers the object carries.
  CHECK(jit.call<float>("exp", 1.0f) == Approx(2.718281828f));
  std::fill(out.begin(), out.end(), 0.0f);
  jit.call("_mlir_ciface_add", &ad, &bd, &outd);
  CHECK(out.back() == 17.5f);

  std::string_view elf = kiln::codegen::object_elf(object);
  CHECK(elf.starts_with("\x7f" "ELF"));
  if (const char* dump = std::getenv("KILN_TEST_DUMP_ELF"))
    std::ofstream(dump, std::ios::binary).write(elf.data(), elf.size());

  // The same bytes as the JIT that compiles: one code path.
  CHECK(CpuJit(kModule).object_code() == object);
}

TEST_CASE("Object: loading is milliseconds, compiling is not", "[mlir][cache]") {
  std::string object;
  double compile = median_ms(5, [&] { object = kiln::codegen::compile_object(kModule); });
  double load = median_ms(9, [&] { CHECK(CpuJit::from_object(object).call<float>("exp", 0.0f) == 1.0f); });
  WARN(fmt::format("kiln object of {} bytes: compile (MLIR -> object) {:.2f} ms, load {:.2f} ms",
                   object.size(), compile, load));
  CHECK(load < 100.0);
  CHECK(load < compile);
}

TEST_CASE("Object: the host target names the CPU and its features", "[mlir][cache]") {
  std::string id = kiln::codegen::host_target_id();
  CHECK_THAT(id, Contains("x86_64") && Contains(";cpu=") && Contains("+sse2") && Contains(";llvm=19"));
  CHECK(id == kiln::codegen::host_target_id());
  // All the host's features, so that AVX-512 code is generated where it runs.
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string info{std::istreambuf_iterator<char>(cpuinfo), std::istreambuf_iterator<char>()};
  if (info.find(" avx512f") != std::string::npos) CHECK_THAT(id, Contains("+avx512f"));
  if (info.find(" avx2") != std::string::npos) CHECK_THAT(id, Contains("+avx2"));
}

TEST_CASE("Object: corrupt bytes are a JitError, never a crash", "[mlir][cache]") {
  std::string object = kiln::codegen::compile_object(kModule);
  CHECK_THROWS_WITH(CpuJit::from_object(""), Contains("not a valid kiln object"));
  CHECK_THROWS_AS(CpuJit::from_object(object.substr(0, object.size() / 2)), JitError);
  CHECK_THROWS_AS(CpuJit::from_object(object + "x"), JitError);
  CHECK_THROWS_AS(CpuJit::from_object(std::string(4096, '\x7f')), JitError);
  for (size_t at = 0; at < object.size(); at += object.size() / 61 + 1) {
    std::string flipped = object;
    flipped[at] ^= 0x5a;
    INFO("byte " << at << " flipped");
    CHECK_THROWS_AS(CpuJit::from_object(flipped), JitError);
  }
}

TEST_CASE("Object: calls into the host resolve, or fail to link with the name", "[mlir][cache]") {
  std::string object = kiln::codegen::compile_object(kCallsHost);
  // Test executables do not export their symbols; registering is the way in.
  CHECK_THROWS_WITH(CpuJit::from_object(object), Contains("kiln_test_host_twice"));
  kiln::codegen::register_host_symbol("kiln_test_host_twice", reinterpret_cast<void*>(&kiln_test_host_twice));
  CHECK(CpuJit::from_object(object).call<float>("twice_plus_one", 3.0f) == 7.0f);
}

TEST_CASE("Cache: digests are content hashes of every part", "[cache]") {
  CHECK(key("a").digest() == key("a").digest());
  CHECK(key("a").digest().size() == 64);
  CHECK(key("a").digest() != key("b").digest());
  CHECK(key("a", "t1").digest() != key("a", "t2").digest());
  // Part boundaries count: ("ab", "c") is not ("a", "bc").
  CHECK(CacheKey{{{"x", "ab"}, {"y", "c"}}}.digest() != CacheKey{{{"x", "a"}, {"y", "bc"}}}.digest());
}

TEST_CASE("Cache: store, hit, miss and stats", "[cache]") {
  TempDir dir;
  DiskCache cache(dir.path, 1 << 20);
  CHECK(cache.enabled());
  CHECK_FALSE(cache.load(key("f")));
  cache.store(key("f"), std::string("blob\0with nul", 13));
  CHECK(cache.load(key("f")) == std::string("blob\0with nul", 13));
  CHECK_FALSE(cache.load(key("g")));
  cache.store(key("f"), "replaced");
  CHECK(cache.load(key("f")) == "replaced");
  cache.store(key("empty"), "");
  CHECK(cache.load(key("empty")) == "");
  auto stats = cache.stats();
  CHECK(stats.hits == 3);
  CHECK(stats.misses == 2);
  CHECK(stats.stores == 3);
  CHECK(stats.corrupt == 0);
  // A second cache on the same directory (another process) sees the entries.
  CHECK(DiskCache(dir.path, 1 << 20).load(key("f")) == "replaced");
  cache.clear();
  CHECK(dir.entries() == 0);
  CHECK_FALSE(cache.load(key("f")));
}

TEST_CASE("Cache: a corrupt entry is a miss, deleted and counted", "[cache]") {
  TempDir dir;
  DiskCache cache(dir.path, 1 << 20);
  std::string blob(3000, 'o');
  auto damage = [&](auto&& edit) {
    cache.store(key("f"), blob);
    fs::path file = entry_file(dir, key("f"));
    std::string bytes = read_all(file);
    edit(bytes);
    write_all(file, bytes);
    CHECK_FALSE(cache.load(key("f")));
    CHECK_FALSE(fs::exists(file));
  };
  SECTION("a flipped byte in the blob") { damage([](std::string& b) { b[b.size() - 100] ^= 1; }); }
  SECTION("a flipped byte in the key parts") { damage([](std::string& b) { b[45] ^= 1; }); }
  SECTION("truncated") { damage([](std::string& b) { b.resize(b.size() / 2); }); }
  SECTION("truncated into the header") { damage([](std::string& b) { b.resize(10); }); }
  SECTION("empty") { damage([](std::string& b) { b.clear(); }); }
  SECTION("wrong magic") { damage([](std::string& b) { b[0] = 'X'; }); }
  SECTION("another format version") { damage([](std::string& b) { b[8] = 9; }); }
  SECTION("bytes appended") { damage([](std::string& b) { b += "tail"; }); }
  CHECK(cache.stats().corrupt == 1);
  // And it recovers: the next store and load work.
  cache.store(key("f"), blob);
  CHECK(cache.load(key("f")) == blob);
}

TEST_CASE("Cache: least recently used entries are evicted down to the bound", "[cache]") {
  TempDir dir;
  std::string blob(1000, 'b');
  uint64_t entry_bytes;
  {
    DiskCache probe(dir.path, 1 << 20);
    probe.store(key("probe"), blob);
    entry_bytes = fs::file_size(entry_file(dir, key("probe")));
    probe.clear();
  }
  DiskCache cache(dir.path, entry_bytes * 3 + entry_bytes / 2);
  for (const char* name : {"a", "b", "c"}) cache.store(key(name), blob);
  // Distinct, known ages, whatever the filesystem's timestamp resolution.
  auto now = fs::file_time_type::clock::now();
  fs::last_write_time(entry_file(dir, key("a")), now - std::chrono::hours(3));
  fs::last_write_time(entry_file(dir, key("b")), now - std::chrono::hours(2));
  fs::last_write_time(entry_file(dir, key("c")), now - std::chrono::hours(1));
  CHECK(cache.load(key("a")));  // a hit makes "a" the most recently used
  cache.store(key("d"), blob);
  CHECK(cache.stats().evictions == 1);
  CHECK(dir.entries() == 3);
  CHECK_FALSE(fs::exists(entry_file(dir, key("b"))));
  for (const char* name : {"a", "c", "d"}) CHECK(cache.load(key(name)) == blob);

  // An entry larger than the whole bound is not stored (it would evict all).
  cache.store(key("huge"), std::string(entry_bytes * 4, 'h'));
  CHECK_FALSE(fs::exists(entry_file(dir, key("huge"))));
  CHECK(dir.entries() == 3);
}

TEST_CASE("Cache: explain_miss names the differing part", "[cache]") {
  TempDir dir;
  DiskCache cache(dir.path, 1 << 20);
  CHECK_THAT(cache.explain_miss(key("f")), Contains("no entries"));
  std::string ir = "func @f {\n  %0 = kiln.add %a, %b\n  %1 = kiln.exp %0\n  return %1\n}";
  cache.store(key(ir), "blob");
  cache.store(key("something else entirely"), "blob");
  CHECK(cache.explain_miss(key(ir)) == "hit");

  std::string changed = ir;
  changed.replace(changed.find("kiln.exp"), 8, "kiln.log");
  std::string why = cache.explain_miss(key(changed));
  CHECK_THAT(why, Contains("ir differs") && Contains("line 3") && Contains("kiln.exp %0") &&
                      Contains("kiln.log %0") && Contains("nearest of 2 entries"));

  why = cache.explain_miss(key(ir, "x86_64;cpu=skylake"));
  CHECK_THAT(why, Contains("target differs") && Contains("znver4") && Contains("skylake"));
  CHECK_THAT(why, !Contains("ir differs"));

  CacheKey extra = key(ir);
  extra.parts.emplace_back("options", "O3");
  CHECK_THAT(cache.explain_miss(extra), Contains("no key part 'options'"));

  write_all(entry_file(dir, key(ir)), "garbage");
  CHECK_THAT(cache.explain_miss(key(ir)), Contains("corrupt"));
}

TEST_CASE("Cache: an unusable directory disables the cache without errors", "[cache]") {
  TempDir dir;
  write_all(dir.path / "file", "not a directory");
  DiskCache cache(dir.path / "file" / "cache", 1 << 20);
  CHECK_FALSE(cache.enabled());
  CHECK_NOTHROW(cache.store(key("f"), "blob"));
  CHECK_FALSE(cache.load(key("f")));
  CHECK_NOTHROW(cache.clear());
  CHECK_THAT(cache.explain_miss(key("f")), Contains("disabled") && Contains("cannot create"));
  CHECK(cache.stats().stores == 0);
}

TEST_CASE("Cache: concurrent processes and threads storing one key", "[cache]") {
  TempDir dir;
  // Small enough that eviction runs concurrently with loads and stores.
  constexpr uint64_t kBound = 64 * 1024;
  std::string blob(20000, 'x');
  for (size_t i = 0; i < blob.size(); ++i) blob[i] = static_cast<char>(i * 31);
  // Each worker stores the shared key and its own keys, and every load of
  // the shared key must be a miss or the exact blob: never a partial file.
  auto hammer = [&](int worker) {
    DiskCache cache(dir.path, kBound);
    int bad = 0;
    for (int i = 0; i < 150; ++i) {
      cache.store(key("shared"), blob);
      if (auto got = cache.load(key("shared")); got && *got != blob) ++bad;
      cache.store(key(fmt::format("own-{}-{}", worker, i % 5)), blob);
    }
    return bad + static_cast<int>(cache.stats().corrupt);
  };
  std::vector<pid_t> children;
  for (int p = 0; p < 3; ++p) {
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) ::_exit(hammer(p) == 0 ? 0 : 1);
    children.push_back(pid);
  }
  std::vector<std::thread> threads;
  std::atomic<int> thread_bad{0};
  for (int t = 0; t < 2; ++t) threads.emplace_back([&, t] { thread_bad += hammer(10 + t); });
  for (auto& thread : threads) thread.join();
  for (pid_t pid : children) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  CHECK(thread_bad == 0);
  DiskCache cache(dir.path, kBound);
  CHECK(cache.load(key("shared")).value_or(blob) == blob);
  // No temporary files are left behind, and the bound holds.
  uint64_t total = 0;
  for (const auto& e : fs::directory_iterator(dir.path)) {
    CHECK(e.path().extension() == ".kcache");
    total += e.file_size();
  }
  CHECK(total <= kBound);
}
