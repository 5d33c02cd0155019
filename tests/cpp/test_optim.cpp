// kiln::optim (SGD, Adam, AdamW against a scalar reference of PyTorch's
// formulas; the fused loop against the kiln-ops path; param groups,
// state_dict, schedulers, clip_grad_norm_) and kiln::data::DataLoader.
#include <catch2/catch.hpp>

#include <cmath>
#include <set>

#include "eager/autograd.h"
#include "eager/data.h"
#include "eager/optim.h"
#include "kiln.h"

using namespace kiln;

namespace {

std::vector<double> vals(const Tensor& t) {
  Tensor c = t.to(DType::Float64).contiguous();
  return std::vector<double>(c.data<double>(), c.data<double>() + c.numel());
}

void require_close(const std::vector<double>& got, const std::vector<double>& want, double rtol, double atol) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO("element " << i << ": " << got[i] << " vs " << want[i]);
    REQUIRE(std::abs(got[i] - want[i]) <= atol + rtol * std::abs(want[i]));
  }
}

// PyTorch 1.13's single-tensor formulas, element by element, in double.
struct RefSGD {
  std::vector<double> buf;
  void step(std::vector<double>& p, const std::vector<double>& grad, const optim::SGDOptions& o) {
    bool first = buf.empty();
    if (first && o.momentum != 0) buf.resize(p.size());
    for (size_t i = 0; i < p.size(); ++i) {
      double d = o.maximize ? -grad[i] : grad[i];
      d += o.weight_decay * p[i];
      if (o.momentum != 0) {
        buf[i] = first ? d : o.momentum * buf[i] + (1 - o.dampening) * d;
        d = o.nesterov ? d + o.momentum * buf[i] : buf[i];
      }
      p[i] -= o.lr * d;
    }
  }
};

struct RefAdam {
  std::vector<double> m, v, vmax;
  int step = 0;
  void update(std::vector<double>& p, const std::vector<double>& grad, const optim::AdamOptions& o, bool decoupled) {
    if (m.empty()) m = v = vmax = std::vector<double>(p.size(), 0.0);
    ++step;
    double bc1 = 1 - std::pow(o.beta1, step), bc2 = 1 - std::pow(o.beta2, step);
    for (size_t i = 0; i < p.size(); ++i) {
      double g = o.maximize ? -grad[i] : grad[i];
      if (decoupled)
        p[i] *= 1 - o.lr * o.weight_decay;
      else
        g += o.weight_decay * p[i];
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g;
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g * g;
      vmax[i] = std::max(vmax[i], v[i]);
      double denom = std::sqrt(o.amsgrad ? vmax[i] : v[i]) / std::sqrt(bc2) + o.eps;
      p[i] -= o.lr / bc1 * m[i] / denom;
    }
  }
};

Tensor tensor_from(std::vector<double> v) {
  return from_blob_copy(v.data(), {static_cast<int64_t>(v.size())}, DType::Float64).to(DType::Float32);
}

Tensor param(Shape shape, DType dtype, uint64_t seed) {
  manual_seed(seed);
  Tensor p = randn(std::move(shape), dtype);
  p.requires_grad_(true);
  return p;
}

// Gradients for step k: deterministic, of both signs.
Tensor grad_for(const Tensor& p, int k) {
  manual_seed(1000 + k);
  return randn(p.shape(), p.dtype());
}

}  // namespace

TEST_CASE("optim: SGD matches PyTorch's formulas, fused and as ops", "[optim]") {
  std::vector<optim::SGDOptions> cases = {
      {.lr = 0.1},
      {.lr = 0.05, .momentum = 0.9},
      {.lr = 0.05, .momentum = 0.9, .dampening = 0.3, .weight_decay = 0.01},
      {.lr = 0.05, .momentum = 0.8, .weight_decay = 0.1, .nesterov = true},
      {.lr = 0.02, .momentum = 0.5, .maximize = true},
  };
  for (DType dtype : {DType::Float32, DType::Float64}) {
    for (bool fused : {true, false}) {
      for (auto o : cases) {
        o.fused = fused;
        Tensor p = param({7, 33}, dtype, 1);
        std::vector<double> ref = vals(p);
        RefSGD r;
        optim::SGD opt({p}, o);
        for (int k = 0; k < 5; ++k) {
          Tensor g = grad_for(p, k);
          p.set_grad(g);
          opt.step();
          r.step(ref, vals(g), o);
        }
        INFO("dtype " << dtype_name(dtype) << " fused " << fused << " momentum " << o.momentum);
        double tol = dtype == DType::Float32 ? 1e-5 : 1e-12;
        require_close(vals(p), ref, tol, tol);
        CHECK(opt.state(p).count("momentum_buffer") == (o.momentum != 0 ? 1u : 0u));
      }
    }
  }
}

TEST_CASE("optim: Adam and AdamW match PyTorch's formulas, fused and as ops", "[optim]") {
  std::vector<optim::AdamOptions> cases = {
      {.lr = 1e-2},
      {.lr = 1e-2, .beta1 = 0.8, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.05},
      {.lr = 3e-3, .weight_decay = 0.01, .amsgrad = true},
      {.lr = 1e-2, .amsgrad = true, .maximize = true},
  };
  for (DType dtype : {DType::Float32, DType::Float64}) {
    for (bool decoupled : {false, true}) {
      for (bool fused : {true, false}) {
        for (auto o : cases) {
          o.fused = fused;
          Tensor p = param({5, 40}, dtype, 2);
          std::vector<double> ref = vals(p);
          RefAdam r;
          std::unique_ptr<optim::Optimizer> opt;
          if (decoupled)
            opt = std::make_unique<optim::AdamW>(std::vector<Tensor>{p},
                                                 optim::AdamWOptions{o.lr, o.beta1, o.beta2, o.eps, o.weight_decay,
                                                                     o.amsgrad, o.maximize, o.fused});
          else
            opt = std::make_unique<optim::Adam>(std::vector<Tensor>{p}, o);
          for (int k = 0; k < 6; ++k) {
            Tensor g = grad_for(p, k);
            p.set_grad(g);
            opt->step();
            r.update(ref, vals(g), o, decoupled);
          }
          INFO("dtype " << dtype_name(dtype) << " decoupled " << decoupled << " fused " << fused << " amsgrad "
                        << o.amsgrad << " wd " << o.weight_decay);
          double tol = dtype == DType::Float32 ? 2e-5 : 1e-11;
          require_close(vals(p), ref, tol, tol);
          const auto& st = opt->state(p);
          CHECK(st.at("step").item<double>() == 6);
          require_close(vals(st.at("exp_avg")), r.m, tol, tol);
          CHECK(st.count("max_exp_avg_sq") == (o.amsgrad ? 1u : 0u));
        }
      }
    }
  }
}

TEST_CASE("optim: non-contiguous parameters take the ops path; fused=true refuses them", "[optim]") {
  Tensor base = param({6, 4}, DType::Float32, 3);
  Tensor p = base.detach().transpose(0, 1);  // a (4, 6) view with strides (1, 4)
  p.requires_grad_(true);
  std::vector<double> ref = vals(p);
  RefAdam r;
  optim::AdamOptions o{.lr = 0.01};
  optim::Adam opt({p}, o);
  for (int k = 0; k < 3; ++k) {
    Tensor g = grad_for(p, k);
    p.set_grad(g);
    opt.step();
    r.update(ref, vals(g), o, false);
  }
  require_close(vals(p), ref, 2e-5, 2e-5);

  optim::Adam strict({p}, {.lr = 0.01, .fused = true});
  CHECK_THROWS_WITH(strict.step(), Catch::Contains("fused=True"));
}

TEST_CASE("optim: param groups, lr get/set, zero_grad", "[optim]") {
  Tensor a = param({3}, DType::Float32, 4), b = param({2}, DType::Float32, 5);
  std::vector<double> a0 = vals(a), b0 = vals(b);
  optim::SGD opt(std::vector<optim::ParamGroup>{{{a}, {}}, {{b}, {{"lr", 1.0}}}}, {.lr = 0.1});
  CHECK(opt.num_param_groups() == 2);
  CHECK(opt.lr(0) == 0.1);
  CHECK(opt.lr(1) == 1.0);
  a.set_grad(ones({3}));
  b.set_grad(ones({2}));
  opt.step();
  require_close(vals(a), {a0[0] - 0.1, a0[1] - 0.1, a0[2] - 0.1}, 1e-6, 1e-6);
  require_close(vals(b), {b0[0] - 1.0, b0[1] - 1.0}, 1e-6, 1e-6);

  opt.zero_grad(false);
  CHECK(vals(a.grad()) == std::vector<double>{0, 0, 0});
  opt.zero_grad();
  CHECK_FALSE(a.grad().defined());
  opt.step();  // no gradients: nothing changes
  require_close(vals(b), {b0[0] - 1.0, b0[1] - 1.0}, 1e-6, 1e-6);

  opt.set_lr(0.5);
  CHECK(opt.lr(1) == 0.5);
  CHECK_THROWS_WITH(opt.set_option(0, "betas", 1), Catch::Contains("unknown option 'betas'"));
  CHECK_THROWS_WITH(optim::SGD({a}, {.lr = 0.1, .nesterov = true}), Catch::Contains("nesterov"));
  CHECK_THROWS_WITH(optim::SGD(std::vector<optim::ParamGroup>{{{a}, {}}, {{a}, {}}}),
                    Catch::Contains("more than one group"));
}

TEST_CASE("optim: state_dict round trip continues identically", "[optim]") {
  for (bool amsgrad : {false, true}) {
    Tensor p = param({4, 8}, DType::Float32, 6);
    optim::AdamW opt({p}, {.lr = 0.01, .amsgrad = amsgrad});
    for (int k = 0; k < 3; ++k) {
      p.set_grad(grad_for(p, k));
      opt.step();
    }
    optim::StateDict sd = opt.state_dict();
    CHECK(sd.count("state.0.exp_avg"));
    CHECK(sd.count("state.0.step"));
    CHECK(sd.at("param_groups.0.lr").item<double>() == 0.01);

    Tensor q = p.detach().clone();
    q.requires_grad_(true);
    optim::AdamW other({q}, {.lr = 0.5});  // lr is restored from the state_dict
    other.load_state_dict(sd);
    CHECK(other.lr() == 0.01);
    CHECK_FALSE(other.state(q).at("exp_avg").storage() == opt.state(p).at("exp_avg").storage());
    for (int k = 3; k < 6; ++k) {
      p.set_grad(grad_for(p, k));
      q.set_grad(grad_for(q, k));
      opt.step();
      other.step();
    }
    CHECK(vals(p) == vals(q));
  }
  Tensor p = param({4}, DType::Float32, 7);
  optim::SGD opt({p}, {.lr = 0.1});
  optim::StateDict bad{{"state.0.momentum_buffer", zeros({5})}};
  CHECK_THROWS_WITH(opt.load_state_dict(bad), Catch::Contains("shape (5,)"));
}

TEST_CASE("optim: schedulers", "[optim]") {
  Tensor p = param({2}, DType::Float32, 8);
  optim::SGD opt({p}, {.lr = 1.0});
  optim::StepLR step(opt, 3, 0.5);
  std::vector<double> got;
  for (int e = 0; e < 7; ++e) {
    got.push_back(opt.lr());
    step.step();
  }
  CHECK(got == std::vector<double>{1, 1, 1, 0.5, 0.5, 0.5, 0.25});

  optim::SGD opt2({p}, {.lr = 0.1});
  optim::CosineAnnealingLR cos(opt2, 4, 0.01);
  std::vector<double> want = {0.1, 0.08681980515339464, 0.05500000000000001, 0.023180194846605373, 0.01};
  for (int e = 0; e <= 4; ++e) {
    CHECK(opt2.lr() == Approx(want[e]).epsilon(1e-12));
    cos.step();
  }
  optim::SGD opt3({p}, {.lr = 2.0});
  optim::LambdaLR lambda(opt3, [](int64_t e) { return 1.0 / (1 + e); });
  lambda.step();
  CHECK(opt3.lr() == 1.0);
  CHECK(lambda.get_last_lr() == std::vector<double>{1.0});
}

TEST_CASE("optim: clip_grad_norm_", "[optim]") {
  Tensor a = param({2}, DType::Float32, 9), b = param({1}, DType::Float32, 10), c = param({1}, DType::Float32, 11);
  a.set_grad(tensor_from({3.0, 0.0}));
  b.set_grad(tensor_from({4.0}));
  // c has no gradient and is skipped
  Tensor total = optim::clip_grad_norm_({a, b, c}, 1.0);
  CHECK(total.item<double>() == Approx(5.0));
  require_close(vals(a.grad()), {0.6, 0.0}, 1e-5, 1e-6);
  require_close(vals(b.grad()), {0.8}, 1e-5, 1e-6);

  a.set_grad(tensor_from({3.0, -7.0}));
  b.set_grad(tensor_from({4.0}));
  CHECK(optim::clip_grad_norm_({a, b}, 100.0, INFINITY).item<double>() == 7.0);
  CHECK(vals(a.grad()) == std::vector<double>{3.0, -7.0});  // under max_norm: unchanged

  b.set_grad(tensor_from({NAN}));
  CHECK_THROWS_WITH(optim::clip_grad_norm_({a, b}, 1.0, 2.0, true), Catch::Contains("non-finite"));
}

TEST_CASE("data: randperm and DataLoader", "[data]") {
  Tensor perm = data::randperm(1000, 42);
  std::vector<double> v = vals(perm);
  std::set<double> s(v.begin(), v.end());
  CHECK(s.size() == 1000);
  CHECK(*s.begin() == 0);
  CHECK(*s.rbegin() == 999);
  CHECK(vals(data::randperm(1000, 42)) == v);
  CHECK(vals(data::randperm(1000, 43)) != v);

  Tensor x = arange(0, 10, 1, DType::Float32).reshape({10, 1}).expand({10, 3}).contiguous();
  Tensor y = arange(0, 10, 1, DType::Int64);
  data::DataLoader plain({x, y}, {.batch_size = 4});
  CHECK(plain.size() == 3);
  std::vector<int64_t> sizes;
  for (const auto& batch : plain) {
    sizes.push_back(batch[0].size(0));
    CHECK(batch[0].size(1) == 3);
    CHECK(vals(batch[0].select(1, 2)) == vals(batch[1]));
  }
  CHECK(sizes == std::vector<int64_t>{4, 4, 2});

  data::DataLoader shuffled({x, y}, {.batch_size = 4, .shuffle = true, .drop_last = true, .seed = 7});
  data::DataLoader again({x, y}, {.batch_size = 4, .shuffle = true, .drop_last = true, .seed = 7});
  CHECK(shuffled.size() == 2);
  std::vector<std::vector<double>> epochs;
  for (int e = 0; e < 2; ++e) {
    std::vector<double> seen, seen2;
    for (const auto& batch : shuffled) {
      CHECK(batch[0].size(0) == 4);
      CHECK(vals(batch[0].select(1, 0)) == vals(batch[1]));
      for (double d : vals(batch[1])) seen.push_back(d);
    }
    for (const auto& batch : again)
      for (double d : vals(batch[1])) seen2.push_back(d);
    CHECK(seen == seen2);
    epochs.push_back(seen);
  }
  CHECK(epochs[0] != epochs[1]);  // a new permutation each epoch
  CHECK_THROWS_WITH(data::DataLoader({x, arange(0, 3, 1)}, {}), Catch::Contains("same first dimension"));
}
