#pragma once
// kiln::jit for C++ callables: traced once per signature (the shapes,
// dtypes and requires_grad of the tensor arguments), then run as a graph.
//
//   auto step = kiln::jit([&](kiln::Tensor x, kiln::Tensor y) { return (x * y).exp(); });
//   kiln::Tensor z = step(a, b);
//
// Arguments and results are Tensors, std::vector<Tensor>s, or (results) a
// std::tuple of those. Tensors the callable uses without receiving them are
// captured by reference, as in Python's kiln.jit.
#include <any>
#include <map>
#include <mutex>
#include <source_location>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "tracer/tracer.h"

namespace kiln {

namespace jit_detail {
inline void flatten(const Tensor& t, std::vector<Tensor>& out) { out.push_back(t); }
inline void flatten(const std::vector<Tensor>& ts, std::vector<Tensor>& out) { out.insert(out.end(), ts.begin(), ts.end()); }
template <class... Ts>
void flatten(const std::tuple<Ts...>& tuple, std::vector<Tensor>& out) {
  std::apply([&](const auto&... x) { (flatten(x, out), ...); }, tuple);
}

// Rebuilds a value shaped like `like` from consecutive tensors.
inline Tensor rebuild(const Tensor&, const std::vector<Tensor>& flat, size_t& i) { return flat[i++]; }
inline std::vector<Tensor> rebuild(const std::vector<Tensor>& like, const std::vector<Tensor>& flat, size_t& i) {
  std::vector<Tensor> out(flat.begin() + i, flat.begin() + i + like.size());
  i += like.size();
  return out;
}
template <class... Ts>
std::tuple<Ts...> rebuild(const std::tuple<Ts...>& like, const std::vector<Tensor>& flat, size_t& i) {
  return std::apply([&](const auto&... x) { return std::tuple<Ts...>{rebuild(x, flat, i)...}; }, like);
}

// The signature: per tensor its type and requires_grad, plus the sizes of
// vector arguments (which shape the flattening).
struct Key {
  std::vector<std::tuple<Shape, DType, bool>> tensors;
  std::vector<size_t> structure;
  bool operator<(const Key& o) const { return std::tie(tensors, structure) < std::tie(o.tensors, o.structure); }
};
inline void add_structure(const Tensor&, std::vector<size_t>& s) { s.push_back(1); }
inline void add_structure(const std::vector<Tensor>& v, std::vector<size_t>& s) { s.push_back(v.size()); }
}  // namespace jit_detail

template <class F>
class Jit {
 public:
  Jit(F fn, std::string name, std::string location)
      : fn_(std::move(fn)), name_(std::move(name)), location_(std::move(location)) {}

  template <class... Args>
  auto operator()(const Args&... args) {
    using Result = std::decay_t<std::invoke_result_t<F&, const Args&...>>;
    std::vector<Tensor> flat;
    (jit_detail::flatten(args, flat), ...);
    jit_detail::Key key;
    for (const Tensor& t : flat) key.tensors.emplace_back(t.shape(), t.dtype(), t.requires_grad());
    (jit_detail::add_structure(args, key.structure), ...);

    std::shared_ptr<Entry> entry;
    {
      std::lock_guard lock(mutex_);
      auto& slot = cache_[key];
      if (!slot) slot = trace<Result>(flat, args...);
      entry = slot;
    }
    std::vector<Tensor> results = entry->traced->run(flat);
    if constexpr (std::is_same_v<Result, Tensor>) {
      return results.at(0);
    } else {
      size_t i = 0;
      return jit_detail::rebuild(std::any_cast<const Result&>(entry->result_shape), results, i);
    }
  }

  size_t num_traces() const { return cache_.size(); }

 private:
  struct Entry {
    std::shared_ptr<TracedFunction> traced;
    std::any result_shape;  // the traced Result, for its structure
  };

  template <class Result, class... Args>
  std::shared_ptr<Entry> trace(const std::vector<Tensor>& flat, const Args&... args) {
    // C++ has no caller frames to walk: every op is located at the line
    // that made this jit function.
    Tracer tracer(name_, [this] { return location_; });
    std::vector<Tensor> symbolic;
    for (const Tensor& t : flat) {
      symbolic.push_back(tracer.argument(type_of(t)));
      if (t.requires_grad()) symbolic.back().requires_grad_();
    }
    size_t i = 0;
    auto symbolic_args = std::tuple<Args...>{jit_detail::rebuild(args, symbolic, i)...};
    Result out;
    {
      TraceScope scope(&tracer);
      out = std::apply(fn_, symbolic_args);
    }
    std::vector<Tensor> results;
    jit_detail::flatten(out, results);
    auto entry = std::make_shared<Entry>();
    entry->traced = tracer.finish(results);
    entry->result_shape = std::move(out);
    return entry;
  }

  F fn_;
  std::string name_;
  std::string location_;  // "file.cpp:line" of the kiln::jit call
  std::mutex mutex_;
  std::map<jit_detail::Key, std::shared_ptr<Entry>> cache_;
};

template <class F>
Jit<F> jit(F fn, std::string name = "jit", std::source_location where = std::source_location::current()) {
  return Jit<F>(std::move(fn), std::move(name), std::string(where.file_name()) + ":" + std::to_string(where.line()));
}

}  // namespace kiln
