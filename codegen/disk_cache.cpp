#include "codegen/disk_cache.h"

#include <fcntl.h>
#include <llvm/ADT/StringExtras.h>
#include <llvm/Support/SHA256.h>
#include <llvm/Support/xxhash.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>

namespace kiln::codegen {
namespace fs = std::filesystem;
namespace {

// An entry file: header, then the payload = key parts, then the blob.
//   magic[8] | u32 version | u32 0 | u64 payload bytes | u64 xxh3(payload)
// The version is also hashed into every digest, so entries of another
// format never share a file name with ours: a wrong version is corruption.
constexpr std::string_view kMagic{"KILNCACH", 8};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 8 + 4 + 4 + 8 + 8;
constexpr std::string_view kEntrySuffix = ".kcache";
constexpr std::string_view kTempPrefix = ".tmp-";
// A temporary file this old was left by a process that died mid-store.
constexpr auto kStaleTemp = std::chrono::hours(1);

bool log_enabled() {
  const char* topics = std::getenv("KILN_LOG");
  if (!topics) return false;
  std::string_view rest = topics;
  while (!rest.empty()) {
    size_t comma = rest.find(',');
    std::string_view topic = rest.substr(0, comma);
    while (!topic.empty() && topic.front() == ' ') topic.remove_prefix(1);
    while (!topic.empty() && topic.back() == ' ') topic.remove_suffix(1);
    if (topic == "cache") return true;
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  return false;
}

template <class... Args>
void log(fmt::format_string<Args...> format, Args&&... args) {
  if (log_enabled())
    fmt::print(stderr, "kiln cache: {}\n", fmt::format(format, std::forward<Args>(args)...));
}

template <class T>
void put(std::string& out, T value) {
  out.append(reinterpret_cast<const char*>(&value), sizeof value);
}

void put_string(std::string& out, std::string_view s) {
  put<uint64_t>(out, s.size());
  out.append(s);
}

// Bounds-checked reads from a byte string; any overrun makes ok() false.
class Reader {
 public:
  explicit Reader(std::string_view bytes) : rest_(bytes) {}
  template <class T>
  T get() {
    T value{};
    if (rest_.size() < sizeof value) return fail(), value;
    std::memcpy(&value, rest_.data(), sizeof value);
    rest_.remove_prefix(sizeof value);
    return value;
  }
  std::string_view get_string() {
    uint64_t size = get<uint64_t>();
    if (!ok_ || rest_.size() < size) return fail(), std::string_view{};
    std::string_view s = rest_.substr(0, size);
    rest_.remove_prefix(size);
    return s;
  }
  bool ok() const { return ok_; }
  bool at_end() const { return rest_.empty(); }

 private:
  void fail() { ok_ = false, rest_ = {}; }
  std::string_view rest_;
  bool ok_ = true;
};

using Parts = std::vector<std::pair<std::string, std::string>>;

std::string encode_entry(const CacheKey& key, std::string_view blob) {
  std::string payload;
  put<uint32_t>(payload, key.parts.size());
  for (const auto& [name, value] : key.parts) put_string(payload, name), put_string(payload, value);
  put_string(payload, blob);
  std::string entry(kMagic);
  put<uint32_t>(entry, kVersion);
  put<uint32_t>(entry, 0);
  put<uint64_t>(entry, payload.size());
  put<uint64_t>(entry, llvm::xxh3_64bits(payload));
  return entry + payload;
}

// The payload's checksum, if `header` is ours and agrees with the file's
// length (not truncated or extended).
std::optional<uint64_t> check_header(std::string_view header, uint64_t file_size) {
  if (header.size() < kHeaderBytes || !header.starts_with(kMagic)) return std::nullopt;
  Reader reader(header.substr(kMagic.size()));
  uint32_t version = reader.get<uint32_t>();
  reader.get<uint32_t>();
  uint64_t size = reader.get<uint64_t>();
  uint64_t checksum = reader.get<uint64_t>();
  if (version != kVersion || size != file_size - kHeaderBytes) return std::nullopt;
  return checksum;
}

// The verified payload of a whole entry file.
std::optional<std::string_view> payload_of(std::string_view file) {
  auto checksum = check_header(file, file.size());
  std::string_view payload = file.substr(std::min(file.size(), kHeaderBytes));
  if (!checksum || llvm::xxh3_64bits(payload) != *checksum) return std::nullopt;
  return payload;
}

std::optional<Parts> read_parts(Reader& reader) {
  uint32_t count = reader.get<uint32_t>();
  Parts parts;
  for (uint32_t i = 0; i < count && reader.ok(); ++i) {
    std::string_view name = reader.get_string();
    std::string_view value = reader.get_string();
    parts.emplace_back(name, value);
  }
  if (!reader.ok()) return std::nullopt;
  return parts;
}

struct Decoded {
  Parts parts;
  std::string_view blob;
};

// A whole entry file, verified: header, checksum, and nothing left over.
std::optional<Decoded> decode_entry(std::string_view file) {
  auto payload = payload_of(file);
  if (!payload) return std::nullopt;
  Reader reader(*payload);
  auto parts = read_parts(reader);
  std::string_view blob = reader.get_string();
  if (!parts || !reader.ok() || !reader.at_end()) return std::nullopt;
  return Decoded{std::move(*parts), blob};
}

std::optional<std::string> read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return std::nullopt;
  return bytes;
}

// An entry's key parts, reading no further: explain_miss looks at every
// entry, and the blobs after the parts may be large.
std::optional<Parts> read_key_parts(const fs::path& path) {
  std::error_code error;
  uint64_t left = fs::file_size(path, error);
  std::ifstream in(path, std::ios::binary);
  std::string header(kHeaderBytes, '\0');
  if (error || !in.read(header.data(), header.size()) || !check_header(header, left))
    return std::nullopt;
  left -= kHeaderBytes;
  auto read = [&](void* into, uint64_t n) {
    if (n > left) return false;
    left -= n;
    return bool(in.read(static_cast<char*>(into), n));
  };
  auto read_string = [&](std::string& s) {
    uint64_t n;
    if (!read(&n, sizeof n) || n > left) return false;
    s.resize(n);
    return read(s.data(), n);
  };
  uint32_t count;
  if (!read(&count, sizeof count)) return std::nullopt;
  Parts parts;
  for (uint32_t i = 0; i < count; ++i) {
    auto& [name, value] = parts.emplace_back();
    if (!read_string(name) || !read_string(value)) return std::nullopt;
  }
  return parts;
}

bool is_entry(const fs::path& path) {
  return path.extension() == kEntrySuffix;
}

bool is_temp(const fs::path& path) {
  return path.filename().string().starts_with(kTempPrefix);
}

// `s` around `at`, on one line, for messages.
std::string excerpt(std::string_view s, size_t at) {
  size_t begin = at > 30 ? at - 30 : 0;
  std::string_view cut = s.substr(begin, 70);
  std::string out = fmt::format("{}{}{}", begin > 0 ? "..." : "", cut,
                                begin + cut.size() < s.size() ? "..." : "");
  std::replace(out.begin(), out.end(), '\n', ' ');
  return fmt::format("'{}'", out);
}

// Where `wanted` differs from `cached`: by line for multi-line text (IR), by
// character position otherwise (a target's feature list).
std::string describe_difference(std::string_view cached, std::string_view wanted) {
  size_t at = std::mismatch(cached.begin(), cached.end(), wanted.begin(), wanted.end()).first -
              cached.begin();
  bool multiline = cached.find('\n') != std::string_view::npos ||
                   wanted.find('\n') != std::string_view::npos;
  if (!multiline)
    return fmt::format("first difference at character {}: cached {} vs now {}", at,
                       excerpt(cached, at), excerpt(wanted, at));
  size_t line_start = cached.substr(0, at).rfind('\n');
  line_start = line_start == std::string_view::npos ? 0 : line_start + 1;
  size_t line = std::count(cached.begin(), cached.begin() + line_start, '\n') + 1;
  auto line_of = [&](std::string_view s) {
    std::string_view rest = s.substr(std::min(line_start, s.size()));
    return std::string(rest.substr(0, rest.find('\n')));
  };
  return fmt::format("first difference at line {}: cached '{}' vs now '{}'", line,
                     line_of(cached), line_of(wanted));
}

uint64_t env_bytes(const char* name, uint64_t fallback) {
  const char* text = std::getenv(name);
  if (!text || !*text) return fallback;
  char* end = nullptr;
  unsigned long long value = std::strtoull(text, &end, 10);
  if (*end != '\0') {
    log("{}='{}' is not a number of bytes; using {}", name, text, fallback);
    return fallback;
  }
  return value;
}

fs::path default_dir() {
  if (const char* dir = std::getenv("KILN_CACHE_DIR"); dir && *dir) return dir;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return fs::path(xdg) / "kiln";
  if (const char* home = std::getenv("HOME"); home && *home)
    return fs::path(home) / ".cache" / "kiln";
  return fs::temp_directory_path() / "kiln-cache";
}

}  // namespace

std::string CacheKey::digest() const {
  std::string encoded;
  put<uint32_t>(encoded, kVersion);
  for (const auto& [name, value] : parts) put_string(encoded, name), put_string(encoded, value);
  llvm::SHA256 sha;
  sha.update(encoded);
  return llvm::toHex(sha.final(), /*LowerCase=*/true);
}

DiskCache& DiskCache::instance() {
  // Never destroyed: compiled functions may store from other threads while
  // the process exits.
  static DiskCache* cache =
      new DiskCache(default_dir(), env_bytes("KILN_CACHE_MAX_BYTES", uint64_t{1} << 30));
  return *cache;
}

DiskCache::DiskCache(fs::path dir, uint64_t max_bytes)
    : dir_(std::move(dir)), max_bytes_(max_bytes) {
  std::error_code error;
  fs::create_directories(dir_, error);
  if (error)
    disable(fmt::format("cannot create {}: {}", dir_.string(), error.message()));
  else if (::access(dir_.c_str(), W_OK | X_OK) != 0)
    disable(fmt::format("{} is not writable", dir_.string()));
}

void DiskCache::disable(const std::string& why) {
  {
    std::lock_guard lock(mutex_);
    if (!enabled_) return;
    disabled_why_ = why;
    enabled_ = false;
  }
  log("disabled: {}", why);
}

fs::path DiskCache::entry_path(const CacheKey& key) const {
  return dir_ / (key.digest() + std::string(kEntrySuffix));
}

std::optional<std::string> DiskCache::load(const CacheKey& key) {
  if (!enabled_) return ++misses_, std::nullopt;
  fs::path path = entry_path(key);
  auto file = read_file(path);
  if (!file) return ++misses_, std::nullopt;
  auto entry = decode_entry(*file);
  // Equal parts guard against a digest collision and a misnamed file.
  if (!entry || entry->parts != key.parts) {
    ++corrupt_, ++misses_;
    std::error_code ignored;
    fs::remove(path, ignored);
    log("deleted the corrupt entry {}", path.string());
    return std::nullopt;
  }
  std::error_code ignored;  // another process may have evicted it meanwhile
  fs::last_write_time(path, fs::file_time_type::clock::now(), ignored);
  ++hits_;
  return std::string(entry->blob);
}

void DiskCache::store(const CacheKey& key, std::string_view blob) {
  if (!enabled_) return;
  std::string entry = encode_entry(key, blob);
  if (entry.size() > max_bytes_) {
    log("not storing a {}-byte entry: the bound is {} bytes", entry.size(), max_bytes_);
    return;
  }
  // Unique among processes (pid) and threads (counter), and across pid reuse
  // after a crash (random).
  static std::atomic<uint64_t> counter{0};
  static const uint64_t nonce = std::random_device{}();
  fs::path final_path = entry_path(key);
  fs::path temp = dir_ / fmt::format("{}{}-{}-{:x}-{}", kTempPrefix, final_path.stem().string(),
                                     ::getpid(), nonce, counter++);
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return disable(fmt::format("cannot write {}: {}", temp.string(), std::strerror(errno)));
  size_t written = 0;
  while (written < entry.size()) {
    ssize_t n = ::write(fd, entry.data() + written, entry.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    written += n;
  }
  int saved_errno = errno;
  bool closed = ::close(fd) == 0;
  std::error_code error;
  if (written != entry.size() || !closed) {
    fs::remove(temp, error);
    return disable(fmt::format("writing {} failed: {}", temp.string(), std::strerror(saved_errno)));
  }
  // Atomic: readers see the old entry, no entry, or the whole new one.
  fs::rename(temp, final_path, error);
  if (error) {
    fs::remove(temp, error);
    return disable(fmt::format("renaming into {} failed: {}", final_path.string(), error.message()));
  }
  ++stores_;
  evict();
}

void DiskCache::evict() {
  struct Entry {
    fs::path path;
    uint64_t size;
    fs::file_time_type used;
  };
  std::vector<Entry> entries;
  uint64_t total = 0;
  auto now = fs::file_time_type::clock::now();
  std::error_code error;
  // Entries may vanish at any point (other processes evict too): every
  // filesystem call takes an error_code and a failure skips the file.
  for (fs::directory_iterator it(dir_, error), end; !error && it != end; it.increment(error)) {
    std::error_code e1, e2;
    uint64_t size = it->file_size(e1);
    auto used = it->last_write_time(e2);
    if (e1 || e2) continue;
    if (is_temp(it->path()) && now - used > kStaleTemp) {
      fs::remove(it->path(), e1);
    } else if (is_entry(it->path())) {
      entries.push_back({it->path(), size, used});
      total += size;
    }
  }
  if (total <= max_bytes_) return;
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.used < b.used; });
  for (const Entry& entry : entries) {
    if (total <= max_bytes_) break;
    std::error_code e;
    if (fs::remove(entry.path, e)) ++evictions_;
    total -= entry.size;  // gone either way: we removed it, or another process did
  }
  log("evicted down to {} bytes (bound {})", total, max_bytes_);
}

void DiskCache::clear() {
  std::error_code error;
  for (fs::directory_iterator it(dir_, error), end; !error && it != end; it.increment(error)) {
    std::error_code ignored;
    if (is_entry(it->path()) || is_temp(it->path())) fs::remove(it->path(), ignored);
  }
}

std::string DiskCache::explain_miss(const CacheKey& key) const {
  if (!enabled_) {
    std::lock_guard lock(mutex_);
    return fmt::format("the cache is disabled: {}", disabled_why_);
  }
  fs::path wanted_path = entry_path(key);
  // The nearest entry has the most parts equal to the key's, then the
  // longest common prefix in the first part that differs (the IR, usually),
  // then the most recent use.
  std::optional<Parts> nearest;
  std::pair<size_t, size_t> nearest_score{};
  size_t count = 0;
  fs::file_time_type nearest_used{};
  bool own_entry_bad = false;
  std::error_code error;
  for (fs::directory_iterator it(dir_, error), end; !error && it != end; it.increment(error)) {
    if (!is_entry(it->path())) continue;
    if (it->path() == wanted_path) {
      // What load would find: verified like load does.
      auto file = read_file(it->path());
      auto entry = file ? decode_entry(*file) : std::nullopt;
      if (entry && entry->parts == key.parts) return "hit";
      own_entry_bad = true;
      continue;
    }
    auto parts = read_key_parts(it->path());
    if (!parts) continue;
    ++count;
    std::pair<size_t, size_t> score{0, 0};
    bool differed = false;
    for (const auto& [name, value] : key.parts) {
      auto cached = std::find_if(parts->begin(), parts->end(),
                                 [&](const auto& part) { return part.first == name; });
      if (cached != parts->end() && cached->second == value) {
        ++score.first;
      } else if (cached != parts->end() && !differed) {
        score.second = std::mismatch(value.begin(), value.end(), cached->second.begin(),
                                     cached->second.end()).first - value.begin();
        differed = true;
      }
    }
    std::error_code e;
    auto used = it->last_write_time(e);
    if (!nearest || score > nearest_score || (score == nearest_score && used > nearest_used))
      nearest = std::move(parts), nearest_score = score, nearest_used = used;
  }
  std::string prefix = own_entry_bad ? "the entry for this key is corrupt (it will be rebuilt); " : "";
  if (!nearest) return prefix + fmt::format("no entries in {}", dir_.string());
  std::string nearest_of = fmt::format("the nearest of {} entries", count);
  for (const auto& [name, value] : key.parts) {
    auto cached = std::find_if(nearest->begin(), nearest->end(),
                               [&](const auto& part) { return part.first == name; });
    if (cached == nearest->end())
      return prefix + fmt::format("{} has no key part '{}'", nearest_of, name);
    if (cached->second != value)
      return prefix + fmt::format("{} differs from {}: {}", name, nearest_of,
                                  describe_difference(cached->second, value));
  }
  return prefix + fmt::format("{} has extra key parts", nearest_of);
}

DiskCache::Stats DiskCache::stats() const {
  return {hits_, misses_, stores_, evictions_, corrupt_};
}

}  // namespace kiln::codegen
