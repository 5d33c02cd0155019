// kiln::jit of an MLP training step (linear, relu, cross_entropy, backward,
// SGD / AdamW): the traced step gives the same parameters as eager.
#include <catch2/catch.hpp>

#include "eager/nn/functional.h"
#include "eager/nn/layers.h"
#include "eager/optim.h"
#include "kiln.h"
#include "tracer/jit.h"

using namespace kiln;
namespace F = kiln::nn::functional;

namespace {
bool same(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && all(eq(a, b)).item<bool>();
}

struct MLP {
  nn::Linear l1{16, 32}, l2{32, 4};
  Tensor forward(const Tensor& x) { return l2.forward(relu(l1.forward(x))); }
  std::vector<Tensor> parameters() {
    std::vector<Tensor> p = l1.parameters(), q = l2.parameters();
    p.insert(p.end(), q.begin(), q.end());
    return p;
  }
};

template <class Opt, class Options>
std::vector<Tensor> train(bool use_jit, const Options& options, const std::vector<std::pair<Tensor, Tensor>>& data) {
  manual_seed(5);
  MLP model;
  Opt opt(model.parameters(), options);
  auto step = [&](const Tensor& x, const Tensor& y) {
    Tensor loss = F::cross_entropy(model.forward(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
    return loss;
  };
  auto jitted = jit(step);
  for (const auto& [x, y] : data) {
    if (use_jit) jitted(x, y);
    else step(x, y);
  }
  if (use_jit) CHECK(jitted.num_traces() == 1);
  return model.parameters();
}

// The backward rules of linear and of the reductions use views (reshape,
// transpose), registered for tracing separately.
bool views_traceable() {
  try {
    jit([](const Tensor& x) { return reshape(x, {-1}); })(ones({2, 2}));
    return true;
  } catch (const TraceError&) {
    return false;
  }
}
}  // namespace

TEST_CASE("a traced MLP training step equals eager", "[jit][nn]") {
  if (!views_traceable()) {
    WARN("skipped: view ops are not traceable in this build");
    return;
  }
  manual_seed(1);
  std::vector<std::pair<Tensor, Tensor>> data;
  for (int i = 0; i < 10; ++i) data.emplace_back(randn({8, 16}), randint(0, 4, {8}));
  SECTION("SGD with momentum and weight decay") {
    optim::SGDOptions o;
    o.lr = 0.05;
    o.momentum = 0.9;
    o.weight_decay = 1e-3;
    auto eager = train<optim::SGD>(false, o, data), traced = train<optim::SGD>(true, o, data);
    for (size_t i = 0; i < eager.size(); ++i) CHECK(same(eager[i], traced[i]));
  }
  SECTION("AdamW") {
    optim::AdamWOptions o;
    o.lr = 1e-2;
    auto eager = train<optim::AdamW>(false, o, data), traced = train<optim::AdamW>(true, o, data);
    for (size_t i = 0; i < eager.size(); ++i) CHECK(same(eager[i], traced[i]));
  }
}

TEST_CASE("reductions and matmul trace with dynamic-free shapes", "[jit][nn]") {
  auto f = jit([](const Tensor& a, const Tensor& b) {
    Tensor m = matmul(a, b);
    auto [v, i] = max(m, 1, false);
    return std::make_tuple(sum(m, {0}, true), v, i, softmax(m, -1), var(m, {1}));
  });
  Tensor a = randn({3, 4}), b = randn({4, 5});
  auto [s, v, i, sm, vr] = f(a, b);
  Tensor m = matmul(a, b);
  CHECK(same(s, sum(m, {0}, true)));
  CHECK(same(v, max(m, 1, false).first));
  CHECK(same(i, max(m, 1, false).second));
  CHECK(same(sm, softmax(m, -1)));
  CHECK(same(vr, var(m, {1})));
}
