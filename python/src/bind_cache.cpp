// The compile cache for kiln.cache (python/kiln/cache.py). Keys cross as
// lists of (name, value) pairs, so Python can build and inspect them.
#include "python/src/convert.h"
#ifdef KILN_HAS_MLIR
#include "codegen/disk_cache.h"
#endif

namespace kiln::python {

void bind_cache(py::module_& m) {
#ifdef KILN_HAS_MLIR
  using codegen::CacheKey;
  using codegen::DiskCache;
  using Parts = std::vector<std::pair<std::string, std::string>>;
  m.def("_cache_dir", [] { return DiskCache::instance().dir().string(); });
  m.def("_cache_clear", [] { DiskCache::instance().clear(); });
  m.def("_cache_stats", [] {
    DiskCache& cache = DiskCache::instance();
    auto s = cache.stats();
    py::dict d;
    d["hits"] = s.hits, d["misses"] = s.misses, d["stores"] = s.stores;
    d["evictions"] = s.evictions, d["corrupt"] = s.corrupt;
    d["enabled"] = cache.enabled(), d["max_bytes"] = cache.max_bytes();
    return d;
  });
  m.def("_cache_digest", [](Parts parts) { return CacheKey{std::move(parts)}.digest(); });
  m.def("_cache_explain_miss", [](Parts parts) {
    return DiskCache::instance().explain_miss(CacheKey{std::move(parts)});
  });
  m.def("_cache_load", [](Parts parts) -> py::object {
    std::optional<std::string> blob;
    {
      py::gil_scoped_release release;
      blob = DiskCache::instance().load(CacheKey{std::move(parts)});
    }
    if (!blob) return py::none();
    return py::bytes(*blob);
  });
  m.def("_cache_store", [](Parts parts, py::bytes blob) {
    std::string bytes = blob;
    py::gil_scoped_release release;
    DiskCache::instance().store(CacheKey{std::move(parts)}, bytes);
  });
#endif
}

}  // namespace kiln::python
