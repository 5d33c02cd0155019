#pragma once
// A content-addressed cache of compiled blobs (kiln objects) on disk: bounded
// in size (least recently used entries go first), shared safely by
// concurrent processes, and able to say why a key missed. It knows nothing
// about what it stores; callers name what an entry depends on in its key.
// Free of MLIR/LLVM headers.
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kiln::codegen {

// Everything an entry depends on, as named parts in a fixed order:
// {"ir", simplified IR text}, {"target", host_target_id()}, {"kiln", version},
// {"options", ...}. Two keys hit the same entry iff all parts are equal.
struct CacheKey {
  std::vector<std::pair<std::string, std::string>> parts;

  // SHA-256 of the parts (names, values and order), 64 hex digits.
  std::string digest() const;
};

class DiskCache {
 public:
  // The process's cache: directory $KILN_CACHE_DIR (default
  // $XDG_CACHE_HOME/kiln, else ~/.cache/kiln), bound $KILN_CACHE_MAX_BYTES
  // (default 1 GiB).
  static DiskCache& instance();

  // Creates `dir` if needed. A directory that cannot be created or written
  // disables the cache (loads miss, stores do nothing); KILN_LOG=cache says so.
  DiskCache(std::filesystem::path dir, uint64_t max_bytes);

  const std::filesystem::path& dir() const { return dir_; }
  uint64_t max_bytes() const { return max_bytes_; }
  bool enabled() const { return enabled_; }

  // The blob stored under `key`, or nullopt on a miss. A corrupt, truncated
  // or foreign entry is deleted and counted as corrupt. Never throws on bad
  // files. A hit makes the entry the most recently used.
  std::optional<std::string> load(const CacheKey& key);

  // Writes the entry atomically (a temporary file in the same directory,
  // then rename), then evicts least recently used entries down to
  // max_bytes(). Never throws; a failing disk disables the cache.
  void store(const CacheKey& key, std::string_view blob);

  // Deletes every entry (and leftover temporary file) in dir(), nothing else.
  void clear();

  // "hit", or why `key` misses: which part differs from the nearest entry
  // and where ("ir differs from the nearest of 3 entries: first difference
  // at line 3: ..."), "no entries", or why the cache is disabled.
  std::string explain_miss(const CacheKey& key) const;

  // Counts for this process since the cache was created.
  struct Stats {
    uint64_t hits, misses, stores, evictions, corrupt;
  };
  Stats stats() const;

 private:
  std::filesystem::path entry_path(const CacheKey& key) const;
  void disable(const std::string& why);
  void evict();

  std::filesystem::path dir_;
  uint64_t max_bytes_;
  std::atomic<bool> enabled_{true};
  mutable std::mutex mutex_;  // guards disabled_why_
  std::string disabled_why_;
  std::atomic<uint64_t> hits_{0}, misses_{0}, stores_{0}, evictions_{0}, corrupt_{0};
};

}  // namespace kiln::codegen
