// The safetensors format, read and written without a JSON library: the
// header is a small, flat JSON object, and a parser for just that keeps the
// core free of dependencies. Every check a hostile or truncated file can
// fail raises a ValueError naming the file; nothing is trusted before it is
// checked against the file's size.
#include "eager/serialize.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>

#include "eager/autograd.h"
#include "eager/ops.h"

namespace kiln {

static_assert(std::endian::native == std::endian::little,
              "safetensors stores little-endian data; kiln writes memory as is");

namespace {

// The reference implementation refuses headers above 100 MB; a larger
// length is a corrupt file, not a reason to allocate gigabytes.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr int kMaxJsonDepth = 64;

struct DTypeCode {
  const char* code;
  DType dtype;
};
constexpr DTypeCode kDTypeCodes[] = {
    {"BOOL", DType::Bool},     {"U8", DType::UInt8},       {"I8", DType::Int8},
    {"I32", DType::Int32},     {"I64", DType::Int64},      {"F16", DType::Float16},
    {"BF16", DType::BFloat16}, {"F32", DType::Float32},    {"F64", DType::Float64},
};

// ---- a JSON value and a parser for the header ----
struct Json {
  enum class Kind { Null, Bool, Number, String, Array, Object };
  Kind kind = Kind::Null;
  bool boolean = false;
  bool is_uint = false;  // a non-negative integer that fits uint64 (in `uint`)
  uint64_t uint = 0;
  std::string text;  // String
  std::vector<Json> items;  // Array
  std::vector<std::pair<std::string, Json>> members;  // Object, in file order
};

const char* kind_name(Json::Kind k) {
  switch (k) {
    case Json::Kind::Null: return "null";
    case Json::Kind::Bool: return "a boolean";
    case Json::Kind::Number: return "a number";
    case Json::Kind::String: return "a string";
    case Json::Kind::Array: return "an array";
    case Json::Kind::Object: return "an object";
  }
  return "?";
}

class JsonParser {
 public:
  JsonParser(const std::string& text, const std::string& path) : s_(text), path_(path) {}

  Json parse_document() {
    Json v = value(0);
    skip_ws();
    if (pos_ != s_.size()) error("unexpected trailing characters");
    return v;
  }

 private:
  [[noreturn]] void error(const std::string& what) const {
    fail<ValueError>("load_safetensors: '{}': the header is not valid JSON ({} at byte {} of the header)", path_,
                     what, pos_);
  }

  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }
  char peek() {
    skip_ws();
    if (pos_ >= s_.size()) error("unexpected end");
    return s_[pos_];
  }
  void expect(char c) {
    if (peek() != c) error(fmt::format("expected '{}'", c));
    ++pos_;
  }
  void literal(const char* word) {
    size_t n = std::strlen(word);
    if (s_.compare(pos_, n, word) != 0) error("invalid literal");
    pos_ += n;
  }

  Json value(int depth) {
    if (depth > kMaxJsonDepth) error("nesting too deep");
    Json v;
    char c = peek();
    if (c == '{') {
      v.kind = Json::Kind::Object;
      ++pos_;
      if (peek() == '}') {
        ++pos_;
        return v;
      }
      std::set<std::string> seen;
      while (true) {
        if (peek() != '"') error("expected a string key");
        std::string key = string();
        if (!seen.insert(key).second) error(fmt::format("duplicate key \"{}\"", key));
        expect(':');
        v.members.emplace_back(std::move(key), value(depth + 1));
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        expect('}');
        return v;
      }
    }
    if (c == '[') {
      v.kind = Json::Kind::Array;
      ++pos_;
      if (peek() == ']') {
        ++pos_;
        return v;
      }
      while (true) {
        v.items.push_back(value(depth + 1));
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        expect(']');
        return v;
      }
    }
    if (c == '"') {
      v.kind = Json::Kind::String;
      v.text = string();
      return v;
    }
    if (c == 't' || c == 'f') {
      v.kind = Json::Kind::Bool;
      v.boolean = c == 't';
      literal(v.boolean ? "true" : "false");
      return v;
    }
    if (c == 'n') {
      literal("null");
      return v;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return number();
    error(fmt::format("unexpected character '{}'", c));
  }

  Json number() {
    Json v;
    v.kind = Json::Kind::Number;
    bool negative = s_[pos_] == '-';
    if (negative) ++pos_;
    if (pos_ >= s_.size() || !std::isdigit(static_cast<unsigned char>(s_[pos_]))) error("invalid number");
    bool overflow = false;
    uint64_t n = 0;
    while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) {
      uint64_t d = static_cast<uint64_t>(s_[pos_++] - '0');
      if (n > (std::numeric_limits<uint64_t>::max() - d) / 10) overflow = true;
      n = n * 10 + d;
    }
    bool fractional = false;
    if (pos_ < s_.size() && s_[pos_] == '.') {
      fractional = true;
      ++pos_;
      if (pos_ >= s_.size() || !std::isdigit(static_cast<unsigned char>(s_[pos_]))) error("invalid number");
      while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) ++pos_;
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      fractional = true;
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (pos_ >= s_.size() || !std::isdigit(static_cast<unsigned char>(s_[pos_]))) error("invalid number");
      while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) ++pos_;
    }
    v.is_uint = !negative && !fractional && !overflow;
    v.uint = n;
    return v;
  }

  static void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  uint32_t hex4() {
    if (pos_ + 4 > s_.size()) error("truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      char h = s_[pos_++];
      v <<= 4;
      if (h >= '0' && h <= '9') v |= static_cast<uint32_t>(h - '0');
      else if (h >= 'a' && h <= 'f') v |= static_cast<uint32_t>(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F') v |= static_cast<uint32_t>(h - 'A' + 10);
      else error("invalid \\u escape");
    }
    return v;
  }

  std::string string() {
    ++pos_;  // the opening quote
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) error("unterminated string");
      char c = s_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) error("control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) error("unterminated string");
      char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {
            if (pos_ + 2 > s_.size() || s_[pos_] != '\\' || s_[pos_ + 1] != 'u') error("unpaired surrogate");
            pos_ += 2;
            uint32_t lo = hex4();
            if (lo < 0xDC00 || lo >= 0xE000) error("unpaired surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            error("unpaired surrogate");
          }
          append_utf8(out, cp);
          break;
        }
        default: error(fmt::format("invalid escape '\\{}'", e));
      }
    }
  }

  const std::string& s_;
  const std::string& path_;
  size_t pos_ = 0;
};

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
        else out += c;
    }
  }
  return out + "\"";
}

DType dtype_from_code(const std::string& code, const std::string& path, const std::string& name) {
  for (const auto& d : kDTypeCodes)
    if (code == d.code) return d.dtype;
  fail<ValueError>(
      "load_safetensors: '{}': tensor \"{}\" has dtype \"{}\", which kiln does not support (supported: BOOL, U8, "
      "I8, I32, I64, F16, BF16, F32, F64)",
      path, name, code);
}

// A parsed header entry, checked against the data section's size.
struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

struct Header {
  std::vector<Entry> entries;
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;
};

uint64_t file_size(std::ifstream& in, const std::string& path) {
  in.seekg(0, std::ios::end);
  auto size = in.tellg();
  KILN_CHECK(size >= 0, Error, "load_safetensors: '{}': cannot determine the file size", path);
  in.seekg(0);
  return static_cast<uint64_t>(size);
}

std::ifstream open_for_reading(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  KILN_CHECK(in, Error, "load_safetensors: cannot open '{}': {}", path, std::strerror(errno));
  return in;
}

Header read_header(std::ifstream& in, const std::string& path) {
  const uint64_t size = file_size(in, path);
  KILN_CHECK(size >= 8, ValueError,
             "load_safetensors: '{}': the file is {} bytes long, too short to be a safetensors file (it starts with an "
             "8-byte header length)",
             path, size);
  unsigned char len_bytes[8];
  in.read(reinterpret_cast<char*>(len_bytes), 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
  KILN_CHECK(n <= size - 8, ValueError,
             "load_safetensors: '{}': the header length {} exceeds the file's size ({} bytes); the file is truncated "
             "or not a safetensors file",
             path, n, size);
  KILN_CHECK(n <= kMaxHeaderBytes, ValueError, "load_safetensors: '{}': the header length {} is implausibly large",
             path, n);
  KILN_CHECK(n >= 2, ValueError, "load_safetensors: '{}': the header ({} bytes) is too short to hold a JSON object",
             path, n);
  std::string text(n, '\0');
  in.read(text.data(), static_cast<std::streamsize>(n));
  KILN_CHECK(in, ValueError, "load_safetensors: '{}': the file ended inside the header", path);

  Json root = JsonParser(text, path).parse_document();
  KILN_CHECK(root.kind == Json::Kind::Object, ValueError,
             "load_safetensors: '{}': the header must be a JSON object, got {}", path, kind_name(root.kind));

  Header h;
  h.data_start = 8 + n;
  const uint64_t data_size = size - h.data_start;
  for (auto& [name, v] : root.members) {
    if (name == "__metadata__") {
      KILN_CHECK(v.kind == Json::Kind::Object, ValueError,
                 "load_safetensors: '{}': \"__metadata__\" must be an object of strings, got {}", path,
                 kind_name(v.kind));
      for (auto& [key, value] : v.members) {
        KILN_CHECK(value.kind == Json::Kind::String, ValueError,
                   "load_safetensors: '{}': metadata \"{}\" must be a string, got {}", path, key,
                   kind_name(value.kind));
        h.metadata[key] = value.text;
      }
      continue;
    }
    KILN_CHECK(v.kind == Json::Kind::Object, ValueError,
               "load_safetensors: '{}': the entry for tensor \"{}\" must be an object, got {}", path, name,
               kind_name(v.kind));
    const Json *dtype = nullptr, *shape = nullptr, *offsets = nullptr;
    for (auto& [key, field] : v.members) {
      if (key == "dtype") dtype = &field;
      else if (key == "shape") shape = &field;
      else if (key == "data_offsets") offsets = &field;
    }
    KILN_CHECK(dtype && shape && offsets, ValueError,
               "load_safetensors: '{}': tensor \"{}\" lacks \"{}\"", path, name,
               !dtype ? "dtype" : !shape ? "shape" : "data_offsets");
    KILN_CHECK(dtype->kind == Json::Kind::String, ValueError,
               "load_safetensors: '{}': tensor \"{}\": dtype must be a string, got {}", path, name,
               kind_name(dtype->kind));
    Entry e;
    e.name = name;
    e.dtype = dtype_from_code(dtype->text, path, name);
    KILN_CHECK(shape->kind == Json::Kind::Array, ValueError,
               "load_safetensors: '{}': tensor \"{}\": shape must be an array, got {}", path, name,
               kind_name(shape->kind));
    // numel * itemsize must not wrap around before it is compared with the file.
    uint64_t nbytes = itemsize(e.dtype);
    bool too_big = false;
    for (const Json& d : shape->items) {
      KILN_CHECK(d.kind == Json::Kind::Number && d.is_uint && d.uint <= uint64_t{1} << 62, ValueError,
                 "load_safetensors: '{}': tensor \"{}\": shape entries must be non-negative integers", path, name);
      e.shape.push_back(static_cast<int64_t>(d.uint));
      if (d.uint != 0 && nbytes > std::numeric_limits<uint64_t>::max() / d.uint) too_big = true;
      else nbytes *= d.uint;
    }
    if (too_big) {
      bool zero = std::find(e.shape.begin(), e.shape.end(), 0) != e.shape.end();
      KILN_CHECK(zero, ValueError, "load_safetensors: '{}': tensor \"{}\": shape {} is too large", path, name,
                 shape_str(e.shape));
      nbytes = 0;
    }
    KILN_CHECK(offsets->kind == Json::Kind::Array && offsets->items.size() == 2 &&
                   offsets->items[0].kind == Json::Kind::Number && offsets->items[0].is_uint &&
                   offsets->items[1].kind == Json::Kind::Number && offsets->items[1].is_uint,
               ValueError, "load_safetensors: '{}': tensor \"{}\": data_offsets must be [begin, end], two non-negative "
               "integers", path, name);
    e.begin = offsets->items[0].uint;
    e.end = offsets->items[1].uint;
    KILN_CHECK(e.begin <= e.end, ValueError, "load_safetensors: '{}': tensor \"{}\": data_offsets [{}, {}] end before "
               "they begin", path, name, e.begin, e.end);
    KILN_CHECK(e.end <= data_size, ValueError,
               "load_safetensors: '{}': tensor \"{}\": data_offsets [{}, {}] run past the end of the data ({} bytes); "
               "the file is truncated or corrupt", path, name, e.begin, e.end, data_size);
    KILN_CHECK(e.end - e.begin == nbytes, ValueError,
               "load_safetensors: '{}': tensor \"{}\": data_offsets [{}, {}] hold {} bytes, but a {} tensor of shape {} "
               "needs {}", path, name, e.begin, e.end, e.end - e.begin, dtype->text, shape_str(e.shape), nbytes);
    h.entries.push_back(std::move(e));
  }

  std::vector<const Entry*> by_offset;
  for (const Entry& e : h.entries)
    if (e.end > e.begin) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    KILN_CHECK(by_offset[i]->begin >= by_offset[i - 1]->end, ValueError,
               "load_safetensors: '{}': the data of tensors \"{}\" [{}, {}] and \"{}\" [{}, {}] overlap", path,
               by_offset[i - 1]->name, by_offset[i - 1]->begin, by_offset[i - 1]->end, by_offset[i]->name,
               by_offset[i]->begin, by_offset[i]->end);
  std::sort(h.entries.begin(), h.entries.end(), [](const Entry& a, const Entry& b) { return a.name < b.name; });
  return h;
}

// Removes the temporary file unless the save reached its rename.
struct TempFile {
  std::string path;
  FILE* f = nullptr;
  bool committed = false;
  ~TempFile() {
    if (f) std::fclose(f);
    if (!committed) std::remove(path.c_str());
  }
};

}  // namespace

std::string safetensors_dtype(DType dtype) {
  for (const auto& d : kDTypeCodes)
    if (d.dtype == dtype) return d.code;
  fail<DTypeError>("save_safetensors: dtype {} has no safetensors code", dtype_name(dtype));
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<std::pair<std::string, Tensor>> sorted;
  {
    NoGradGuard no_grad;
    for (const auto& [name, t] : tensors) {
      KILN_CHECK(t.defined(), ValueError, "save_safetensors: tensor \"{}\" is undefined", name);
      KILN_CHECK(name != "__metadata__", ValueError,
                 "save_safetensors: \"__metadata__\" is reserved for the metadata and can't name a tensor");
      KILN_CHECK(t.device().is_cpu(), DeviceError, "save_safetensors: tensor \"{}\" is on {}; move it to the CPU first",
                 name, t.device().str());
      sorted.emplace_back(name, t.detach().contiguous());
    }
  }
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 1; i < sorted.size(); ++i)
    KILN_CHECK(sorted[i].first != sorted[i - 1].first, ValueError, "save_safetensors: the name \"{}\" appears twice",
               sorted[i].first);

  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) header += ",";
      first = false;
      header += json_quote(k) + ":" + json_quote(v);
    }
    header += "}";
    if (!sorted.empty()) header += ",";
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < sorted.size(); ++i) {
    const Tensor& t = sorted[i].second;
    uint64_t nbytes = static_cast<uint64_t>(t.numel()) * t.itemsize();
    std::string shape;
    for (size_t d = 0; d < t.shape().size(); ++d) {
      if (d) shape += ',';
      shape += std::to_string(t.shape()[d]);
    }
    header += fmt::format("{}{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}", i ? "," : "",
                          json_quote(sorted[i].first), safetensors_dtype(t.dtype()), shape, offset, offset + nbytes);
    offset += nbytes;
  }
  header += "}";
  // Padding keeps the data section 8-byte aligned for readers that map the file.
  header.append((8 - header.size() % 8) % 8, ' ');

  static std::atomic<uint64_t> counter{0};
  TempFile tmp;
  tmp.path = fmt::format("{}.tmp.{}.{}", path, ::getpid(), counter++);
  tmp.f = std::fopen(tmp.path.c_str(), "wb");
  KILN_CHECK(tmp.f, Error, "save_safetensors: cannot create '{}': {}", tmp.path, std::strerror(errno));
  auto write = [&](const void* data, size_t n) {
    if (n && std::fwrite(data, 1, n, tmp.f) != n)
      fail<Error>("save_safetensors: writing '{}' failed: {}", tmp.path, std::strerror(errno));
  };
  unsigned char len_bytes[8];
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(n >> (8 * i));
  write(len_bytes, 8);
  write(header.data(), header.size());
  for (const auto& [name, t] : sorted) write(t.data_ptr(), static_cast<size_t>(t.numel()) * t.itemsize());
  KILN_CHECK(std::fflush(tmp.f) == 0 && ::fsync(::fileno(tmp.f)) == 0, Error, "save_safetensors: writing '{}' failed: {}",
             tmp.path, std::strerror(errno));
  int rc = std::fclose(tmp.f);
  tmp.f = nullptr;
  KILN_CHECK(rc == 0, Error, "save_safetensors: writing '{}' failed: {}", tmp.path, std::strerror(errno));
  KILN_CHECK(std::rename(tmp.path.c_str(), path.c_str()) == 0, Error, "save_safetensors: cannot rename '{}' to '{}': {}",
             tmp.path, path, std::strerror(errno));
  tmp.committed = true;
}

NamedTensors load_safetensors(const std::string& path) {
  std::ifstream in = open_for_reading(path);
  Header h = read_header(in, path);
  NamedTensors out;
  out.reserve(h.entries.size());
  for (const Entry& e : h.entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    if (e.end > e.begin) {
      in.seekg(static_cast<std::streamoff>(h.data_start + e.begin));
      in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(e.end - e.begin));
      KILN_CHECK(in, ValueError, "load_safetensors: '{}': reading tensor \"{}\" failed (the file changed or is "
                 "truncated)", path, e.name);
    }
    if (e.dtype == DType::Bool) {
      // Any byte other than 0 and 1 would be an invalid C++ bool.
      auto* bytes = static_cast<unsigned char*>(t.data_ptr());
      for (int64_t i = 0; i < t.numel(); ++i) bytes[i] = bytes[i] != 0;
    }
    out.emplace_back(e.name, std::move(t));
  }
  return out;
}

std::map<std::string, std::string> load_safetensors_metadata(const std::string& path) {
  std::ifstream in = open_for_reading(path);
  return read_header(in, path).metadata;
}

}  // namespace kiln
