// kiln::nn modules from C++: registration and dotted names, state dicts,
// safetensors save/load (and malformed files), init, and forward/backward of
// Linear, Sequential and the attention layers against hand-computed values.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "eager/autograd.h"
#include "eager/nn/init.h"
#include "eager/nn/layers.h"
#include "eager/serialize.h"
#include "kiln.h"

using namespace kiln;
namespace fs = std::filesystem;

namespace {

std::vector<double> values(const Tensor& t) {
  Tensor c = t.detach().to(DType::Float64).contiguous();
  return std::vector<double>(c.data<double>(), c.data<double>() + c.numel());
}

Tensor tensor_of(const std::vector<double>& v, Shape shape, DType dtype = DType::Float32) {
  return from_blob_copy(v.data(), std::move(shape), DType::Float64).to(dtype);
}

void check_close(const Tensor& got, const std::vector<double>& want, double tol = 1e-5) {
  auto g = values(got);
  REQUIRE(g.size() == want.size());
  for (size_t i = 0; i < g.size(); ++i) {
    INFO("element " << i << ": " << g[i] << " vs " << want[i]);
    CHECK(std::abs(g[i] - want[i]) <= tol * (1 + std::abs(want[i])));
  }
}

std::vector<std::string> names(const NamedTensors& v) {
  std::vector<std::string> out;
  for (const auto& [n, t] : v) out.push_back(n);
  return out;
}

// A temporary directory removed at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("kiln_nn_test_" + std::to_string(::getpid()) + "_" +
                                        std::to_string(reinterpret_cast<uintptr_t>(this)));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

struct Net : nn::Module {
  std::shared_ptr<nn::Linear> fc1, fc2;
  std::shared_ptr<nn::BatchNorm1d> norm;
  Tensor scale;
  Net() : Module("Net") {
    scale = register_parameter("scale", ones({4}));
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(3, 4));
    norm = register_module("norm", std::make_shared<nn::BatchNorm1d>(4));
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(4, 2, false));
  }
  Tensor forward(const Tensor& x) { return fc2->forward(relu(norm->forward(fc1->forward(x) * scale))); }
};

}  // namespace

TEST_CASE("modules register parameters, buffers and children with dotted names", "[nn]") {
  auto net = std::make_shared<Net>();
  CHECK(names(net->named_parameters()) ==
        std::vector<std::string>{"scale", "fc1.weight", "fc1.bias", "norm.weight", "norm.bias", "fc2.weight"});
  CHECK(names(net->named_parameters(false)) == std::vector<std::string>{"scale"});
  CHECK(names(net->named_buffers()) ==
        std::vector<std::string>{"norm.running_mean", "norm.running_var", "norm.num_batches_tracked"});
  // PyTorch's state_dict order: each module's parameters, its buffers, then its children.
  CHECK(names(net->state_dict()) ==
        std::vector<std::string>{"scale", "fc1.weight", "fc1.bias", "norm.weight", "norm.bias", "norm.running_mean",
                                 "norm.running_var", "norm.num_batches_tracked", "fc2.weight"});
  CHECK(net->children().size() == 3);
  auto mods = net->named_modules();
  REQUIRE(mods.size() == 4);
  CHECK(mods[0].first == "");
  CHECK(mods[3].first == "fc2");
  for (const Tensor& p : net->parameters()) {
    CHECK(p.requires_grad());
    CHECK(p.is_leaf());
  }
  // The member and the registered tensor are one tensor.
  CHECK(net->named_parameters()[1].second.is_same(net->fc1->weight));
  CHECK_THROWS_AS(net->register_parameter("scale", ones({1})), ValueError);
  CHECK_THROWS_AS(net->register_buffer("a.b", ones({1})), ValueError);

  net->eval();
  CHECK_FALSE(net->is_training());
  CHECK_FALSE(net->norm->is_training());
  net->train();
  CHECK(net->fc2->is_training());
  CHECK(net->str() ==
        "Net(\n"
        "  (fc1): Linear(in_features=3, out_features=4, bias=True)\n"
        "  (norm): BatchNorm1d(4, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)\n"
        "  (fc2): Linear(in_features=4, out_features=2, bias=False)\n"
        ")");

  Net stack_net;  // not held by a shared_ptr: modules() can't include it
  CHECK_THROWS_AS(stack_net.modules(), ValueError);
  CHECK(stack_net.modules(false).size() == 3);
}

TEST_CASE("Linear forward and backward", "[nn]") {
  nn::Linear lin(3, 2);
  {
    NoGradGuard no_grad;
    lin.weight.copy_(tensor_of({1, 2, 3, -1, 0, 1}, {2, 3}));
    lin.bias.copy_(tensor_of({0.5, -0.5}, {2}));
  }
  Tensor x = tensor_of({1, 1, 1, 2, 0, -1}, {2, 3});
  x.requires_grad_();
  Tensor y = lin.forward(x);
  check_close(y, {6.5, -0.5, -0.5, -3.5});
  y.sum().backward();
  check_close(lin.weight.grad(), {3, 1, 0, 3, 1, 0});
  check_close(lin.bias.grad(), {2, 2});
  check_close(x.grad(), {0, 2, 4, 0, 2, 4});
  lin.zero_grad();
  CHECK_FALSE(lin.weight.grad().defined());
  CHECK_THROWS_AS(lin.forward(ones({2, 4})), ShapeError);
  CHECK(nn::Linear(3, 2, false).parameters().size() == 1);
}

TEST_CASE("Sequential forward and backward", "[nn]") {
  auto seq = std::make_shared<nn::Sequential>(nn::Linear(2, 2), nn::ReLU(), std::make_shared<nn::Linear>(2, 1));
  REQUIRE(seq->size() == 3);
  CHECK(names(seq->state_dict()) == std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias"});
  auto l0 = seq->at<nn::Linear>(0);
  auto l2 = seq->at<nn::Linear>(2);
  CHECK_THROWS_AS(seq->at<nn::Linear>(1), ValueError);
  {
    NoGradGuard no_grad;
    l0->weight.copy_(tensor_of({1, 0, 0, -1}, {2, 2}));
    l0->bias.zero_();
    l2->weight.copy_(tensor_of({2, 3}, {1, 2}));
    l2->bias.fill_(1);
  }
  // x = [[1, 2], [-1, -3]]: hidden relu([1, -2]) = [1, 0], relu([-1, 3]) = [0, 3]
  Tensor x = tensor_of({1, 2, -1, -3}, {2, 2});
  Tensor y = seq->forward(x);
  check_close(y, {3, 10});
  y.sum().backward();
  check_close(l2->weight.grad(), {1, 3});
  check_close(l2->bias.grad(), {2});
  // d/dW0: row 0 active for sample 0 (weight 2), row 1 for sample 1 (weight 3).
  check_close(l0->weight.grad(), {2, 4, -3, -9});
  check_close(l0->bias.grad(), {2, 3});

  nn::ModuleList list;
  list.push_back(nn::Tanh());
  list.push_back(std::make_shared<nn::Linear>(2, 2));
  CHECK(list.size() == 2);
  CHECK(names(list.state_dict()) == std::vector<std::string>{"1.weight", "1.bias"});
  CHECK_THROWS_AS(list[5], IndexError);
}

TEST_CASE("state_dict and load_state_dict", "[nn]") {
  manual_seed(1);
  auto a = std::make_shared<Net>(), b = std::make_shared<Net>();
  Tensor x = randn({5, 3});
  a->forward(x);  // moves the running statistics
  CHECK(a->norm->num_batches_tracked.item<int64_t>() == 1);
  auto result = b->load_state_dict(a->state_dict());
  CHECK(result.missing_keys.empty());
  CHECK(result.unexpected_keys.empty());
  for (const auto& [name, t] : a->state_dict()) {
    INFO(name);
    Tensor other;
    for (const auto& [n2, t2] : b->state_dict())
      if (n2 == name) other = t2;
    CHECK(values(t) == values(other));
  }
  a->eval();
  b->eval();
  CHECK(values(a->forward(x)) == values(b->forward(x)));
  // Values are detached and share storage with the live tensors.
  Tensor w = a->state_dict()[1].second;
  CHECK_FALSE(w.requires_grad());
  CHECK(w.data_ptr() == a->fc1->weight.data_ptr());

  // Errors: nothing is written when any check fails.
  auto before = values(b->fc1->weight);
  NamedTensors bad = a->state_dict();
  bad[1].second = zeros({4, 3});
  bad[2].second = zeros({5});
  try {
    b->load_state_dict(bad);
    FAIL("expected an error");
  } catch (const ValueError& e) {
    std::string msg = e.what();
    CHECK(msg.find("size mismatch for \"fc1.bias\"") != std::string::npos);
    CHECK(msg.find("checkpoint has shape (5") != std::string::npos);
  }
  CHECK(values(b->fc1->weight) == before);
  NamedTensors missing = a->state_dict();
  missing.pop_back();
  missing.emplace_back("extra", ones({1}));
  try {
    b->load_state_dict(missing);
    FAIL("expected an error");
  } catch (const ValueError& e) {
    std::string msg = e.what();
    CHECK(msg.find("missing keys: \"fc2.weight\"") != std::string::npos);
    CHECK(msg.find("unexpected keys: \"extra\"") != std::string::npos);
  }
  auto loose = b->load_state_dict(missing, false);
  CHECK(loose.missing_keys == std::vector<std::string>{"fc2.weight"});
  CHECK(loose.unexpected_keys == std::vector<std::string>{"extra"});
}

TEST_CASE("to(dtype) casts parameters and buffers in place", "[nn]") {
  auto net = std::make_shared<Net>();
  Tensor w = net->fc1->weight;
  auto before = values(w);
  net->to(DType::Float64);
  CHECK(w.dtype() == DType::Float64);
  CHECK(net->fc1->weight.dtype() == DType::Float64);
  CHECK(net->named_parameters()[1].second.dtype() == DType::Float64);
  CHECK(w.requires_grad());
  CHECK(values(w) == before);
  CHECK(net->norm->running_var.dtype() == DType::Float64);
  CHECK(net->norm->num_batches_tracked.dtype() == DType::Int64);
  Tensor y = net->forward(randn({4, 3}, DType::Float64));
  CHECK(y.dtype() == DType::Float64);
  y.sum().backward();
  CHECK(w.grad().dtype() == DType::Float64);
}

TEST_CASE("save and load a module through safetensors", "[nn]") {
  TempDir dir;
  manual_seed(2);
  auto a = std::make_shared<Net>(), b = std::make_shared<Net>();
  Tensor x = randn({6, 3});
  a->forward(x);
  a->save(dir.file("net.safetensors"), {{"epoch", "3"}});
  CHECK(load_safetensors_metadata(dir.file("net.safetensors")) == std::map<std::string, std::string>{{"epoch", "3"}});
  b->load(dir.file("net.safetensors"));
  a->eval();
  b->eval();
  CHECK(values(a->forward(x)) == values(b->forward(x)));
  CHECK(b->norm->num_batches_tracked.item<int64_t>() == 1);
  // Only the saved file is left in the directory (no temporaries).
  CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);
  CHECK_THROWS_AS(nn::Linear(3, 3).load(dir.file("net.safetensors")), ValueError);
}

TEST_CASE("safetensors round trip of every dtype and malformed files", "[nn]") {
  TempDir dir;
  NamedTensors ts;
  for (DType d : {DType::Bool, DType::UInt8, DType::Int8, DType::Int32, DType::Int64, DType::Float16,
                  DType::BFloat16, DType::Float32, DType::Float64})
    ts.emplace_back(std::string(dtype_name(d)), arange(0, 6).reshape({2, 3}).to(d));
  ts.emplace_back("scalar", full({}, 2.5, DType::Float64));
  ts.emplace_back("view", arange(0, 12, 1, DType::Float32).reshape({3, 4}).T());
  std::string path = dir.file("all.safetensors");
  save_safetensors(path, ts);
  NamedTensors back = load_safetensors(path);
  REQUIRE(back.size() == ts.size());
  for (size_t i = 1; i < back.size(); ++i) CHECK(back[i - 1].first < back[i].first);
  for (const auto& [name, t] : ts) {
    INFO(name);
    auto it = std::find_if(back.begin(), back.end(), [&](const auto& e) { return e.first == name; });
    REQUIRE(it != back.end());
    CHECK(it->second.dtype() == t.dtype());
    CHECK(it->second.shape() == t.shape());
    CHECK(values(it->second) == values(t));
  }

  auto write = [&](const std::string& bytes) {
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  };
  auto with_header = [&](const std::string& json, const std::string& body = std::string(16, '\0')) {
    std::string len(8, '\0');
    for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((json.size() >> (8 * i)) & 0xff);
    return write(len + json + body);
  };
  auto rejects = [&](const std::string& p, const std::string& fragment) {
    try {
      load_safetensors(p);
      FAIL("expected a ValueError mentioning " << fragment);
    } catch (const ValueError& e) {
      std::string msg = e.what();
      INFO(msg);
      CHECK(msg.find(p) != std::string::npos);
      CHECK(msg.find(fragment) != std::string::npos);
    }
  };
  rejects(write(""), "too short");
  rejects(write(std::string("\xff\xff\xff\xff\xff\xff\xff\x7f{}", 10)), "exceeds");
  rejects(with_header("{\"a\": "), "not valid JSON");
  rejects(with_header("{\"w\":{\"dtype\":\"F8\",\"shape\":[2],\"data_offsets\":[0,2]}}"), "\"F8\"");
  rejects(with_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[0,32]}}"), "past the end");
  rejects(with_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}"),
          "overlap");
  CHECK_THROWS_AS(load_safetensors(dir.file("missing.safetensors")), Error);
  CHECK_THROWS_AS(save_safetensors(dir.file("x"), {{"a", ones({1})}, {"a", ones({1})}}), ValueError);
}

TEST_CASE("init functions", "[nn]") {
  manual_seed(5);
  Tensor w = Tensor::empty({200, 100});
  w.requires_grad_();
  nn::init::uniform_(w, -1, 2);
  auto v = values(w);
  CHECK(*std::min_element(v.begin(), v.end()) >= -1);
  CHECK(*std::max_element(v.begin(), v.end()) < 2);
  CHECK(w.is_leaf());
  nn::init::kaiming_uniform_(w, 0.0, "fan_in", "relu");
  double bound = std::sqrt(2.0) * std::sqrt(3.0 / 100);
  v = values(w);
  CHECK(*std::max_element(v.begin(), v.end()) <= bound);
  CHECK(*std::max_element(v.begin(), v.end()) > 0.98 * bound);
  nn::init::normal_(w, 0.0, 0.1);
  double sq = 0;
  for (double e : values(w)) sq += e * e;
  CHECK(std::abs(std::sqrt(sq / w.numel()) - 0.1) < 0.005);
  CHECK(nn::init::calculate_gain("tanh") == Approx(5.0 / 3.0));
  CHECK(nn::init::calculate_gain("leaky_relu", 0.2) == Approx(std::sqrt(2.0 / 1.04)));
  CHECK(nn::init::calculate_fan_in_and_fan_out(Tensor::empty({8, 4, 3, 3})) == std::pair<int64_t, int64_t>{36, 72});
  CHECK_THROWS_AS(nn::init::xavier_uniform_(Tensor::empty({5})), ValueError);
  CHECK_THROWS_AS(nn::init::calculate_gain("swish"), ValueError);
}

TEST_CASE("attention and transformer layers", "[nn]") {
  manual_seed(3);
  nn::MultiheadAttention mha(8, 2, {.batch_first = true});
  CHECK(names(mha.state_dict()) ==
        std::vector<std::string>{"in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"});
  Tensor x = randn({2, 5, 8});
  auto [out, weights] = mha.forward(x, x, x);
  CHECK(out.shape() == Shape{2, 5, 8});
  CHECK(weights.shape() == Shape{2, 5, 5});
  // Each row of attention weights sums to 1.
  check_close(weights.sum({-1}), std::vector<double>(10, 1.0));
  auto [out2, none] = mha.forward(x, x, x, {}, false);
  CHECK_FALSE(none.defined());
  check_close(out2, values(out), 1e-5);
  CHECK_THROWS_AS(mha.forward(randn({2, 5, 6}), x, x), ShapeError);

  nn::MultiheadAttention cross(8, 2, {.kdim = 3, .vdim = 5});
  CHECK(names(cross.state_dict()) == std::vector<std::string>{"q_proj_weight", "k_proj_weight", "v_proj_weight",
                                                              "in_proj_bias", "out_proj.weight", "out_proj.bias"});
  auto [co, cw] = cross.forward(randn({4, 2, 8}), randn({6, 2, 3}), randn({6, 2, 5}));
  CHECK(co.shape() == Shape{4, 2, 8});
  CHECK(cw.shape() == Shape{2, 4, 6});

  nn::TransformerEncoderLayer layer(8, 2, {.dim_feedforward = 16, .dropout = 0.0, .batch_first = true});
  CHECK(names(layer.state_dict()) ==
        std::vector<std::string>{"self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
                                 "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight",
                                 "linear2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"});
  Tensor src = randn({2, 5, 8});
  src.requires_grad_();
  Tensor y = layer.forward(src);
  CHECK(y.shape() == Shape{2, 5, 8});
  y.sum().backward();
  for (const auto& [name, p] : layer.named_parameters()) {
    INFO(name);
    CHECK(p.grad().defined());
  }
  CHECK(src.grad().defined());
  CHECK_THROWS_AS(nn::TransformerEncoderLayer(8, 2, {.activation = "swish"}), ValueError);
}

TEST_CASE("conv, norm, embedding and pooling layers", "[nn]") {
  manual_seed(4);
  auto cnn = std::make_shared<nn::Sequential>(nn::Conv2d(1, 4, 3, 1, 1), nn::BatchNorm2d(4), nn::ReLU(),
                                              nn::MaxPool2d(2), nn::Flatten(), nn::Linear(4 * 4 * 4, 10));
  Tensor y = cnn->forward(randn({3, 1, 8, 8}));
  CHECK(y.shape() == Shape{3, 10});
  y.sum().backward();
  CHECK(cnn->at<nn::Conv2d>(0)->weight.grad().shape() == Shape{4, 1, 3, 3});
  CHECK(cnn->at<nn::Conv2d>(0)->str() == "Conv2d(1, 4, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))");
  CHECK_THROWS_AS(cnn->forward(randn({3, 2, 8, 8})), ShapeError);

  // Sizes given as one int or a pair, like PyTorch's int-or-tuple arguments.
  CHECK(nn::Conv2d(1, 2, {3, 5}).weight.shape() == Shape{2, 1, 3, 5});
  CHECK(nn::MaxPool2d(3, 2, 1).forward(randn({1, 1, 7, 7})).shape() == Shape{1, 1, 4, 4});
  CHECK(nn::AvgPool2d(2).forward(randn({2, 3, 4, 6})).shape() == Shape{2, 3, 2, 3});
  CHECK(nn::AdaptiveAvgPool2d(1).forward(randn({2, 3, 5, 5})).shape() == Shape{2, 3, 1, 1});

  nn::Embedding emb(10, 3, 0);
  check_close(emb.weight.select(0, 0), {0, 0, 0});
  Tensor idx = arange(0, 4).reshape({2, 2});
  Tensor e = emb.forward(idx);
  CHECK(e.shape() == Shape{2, 2, 3});
  e.sum().backward();
  check_close(emb.weight.grad().select(0, 0), {0, 0, 0});
  check_close(emb.weight.grad().select(0, 1), {1, 1, 1});
  CHECK_THROWS_AS(emb.forward(ones({2})), DTypeError);

  nn::LayerNorm ln({4});
  Tensor z = ln.forward(tensor_of({1, 2, 3, 4}, {1, 4}));
  check_close(z.mean(), {0.0}, 1e-6);
  CHECK_THROWS_AS(ln.forward(ones({2, 3})), ShapeError);

  nn::BatchNorm1d bn(2, 1e-5, std::nullopt);
  bn.forward(tensor_of({1, 10, 3, 20}, {2, 2}));
  bn.forward(tensor_of({5, 0, 7, 0}, {2, 2}));
  // Cumulative average (momentum None) of the batch means [2, 15] and [6, 0].
  check_close(bn.running_mean, {4, 7.5});
  CHECK_THROWS_AS(bn.forward(ones({1, 2})), ValueError);

  nn::Dropout drop(0.5);
  drop.eval();
  Tensor ones8 = ones({8});
  CHECK(values(drop.forward(ones8)) == values(ones8));
}
