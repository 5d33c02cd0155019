// Trains an MLP on the scikit-learn digits (8x8 images of 0-9) from C++:
// kiln::nn layers, kiln::optim::AdamW with a cosine schedule, and
// kiln::data::DataLoader.
//
//   build/examples/kiln_digits [--epochs N] [--csv PATH] [--out DIR]
//
// The data is the CSV that Debian's python3-sklearn ships (1797 rows of 64
// pixel values 0..16 and the label), read through `gzip -dc`.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "eager/autograd.h"
#include "eager/data.h"
#include "eager/nn/functional.h"
#include "eager/nn/layers.h"
#include "eager/optim.h"
#include "kiln.h"

using namespace kiln;
namespace F = kiln::nn::functional;

namespace {

constexpr const char* kDefaultCsv = "/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz";

struct Digits {
  Tensor x;  // (n, 64) float32 in [0, 1]
  Tensor y;  // (n) int64
};

Digits read_digits(const std::string& path) {
  if (!std::filesystem::exists(path)) {
    std::cerr << "digits: " << path << " not found.\n"
              << "It comes with scikit-learn: install python3-sklearn (scripts/install-deps.sh does), or pass\n"
              << "--csv PATH to a digits.csv.gz (find it with `dpkg -L python3-sklearn | grep digits`).\n";
    std::exit(2);
  }
  std::string command = "gzip -dc '" + path + "'";
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) {
    std::cerr << "digits: could not run `" << command << "`\n";
    std::exit(2);
  }
  std::string text;
  char chunk[1 << 16];
  for (size_t n; (n = fread(chunk, 1, sizeof chunk, pipe)) > 0;) text.append(chunk, n);
  if (pclose(pipe) != 0) {
    std::cerr << "digits: `" << command << "` failed (is " << path << " a gzip file?)\n";
    std::exit(2);
  }
  std::vector<float> pixels;
  std::vector<int64_t> labels;
  std::istringstream lines(text);
  int64_t row = 0;
  for (std::string line; std::getline(lines, line); ++row) {
    if (line.empty()) continue;
    std::vector<float> fields;
    std::istringstream cells(line);
    for (std::string cell; std::getline(cells, cell, ',');) fields.push_back(std::stof(cell));
    if (fields.size() != 65) {
      std::cerr << "digits: line " << row + 1 << " of " << path << " has " << fields.size()
                << " fields, expected 65 (64 pixels and the label)\n";
      std::exit(2);
    }
    for (int i = 0; i < 64; ++i) pixels.push_back(fields[i] / 16.0f);
    labels.push_back(static_cast<int64_t>(fields[64]));
  }
  auto n = static_cast<int64_t>(labels.size());
  return {from_blob_copy(pixels.data(), {n, 64}, DType::Float32),
          from_blob_copy(labels.data(), {n}, DType::Int64)};
}

// Fraction of rows whose largest logit is the label.
double accuracy(const Tensor& logits, const Tensor& y) {
  return eq(argmax(logits, 1), y).to(DType::Float64).mean().item<double>();
}

std::string bar(int64_t done, int64_t total, int width = 30) {
  int64_t filled = total ? done * width / total : width;
  return "[" + std::string(filled, '#') + std::string(width - filled, '.') + "]";
}

}  // namespace

int main(int argc, char** argv) {
  int epochs = 20;
  Device device = kCPU;
  std::string csv = kDefaultCsv;
  std::filesystem::path out = std::filesystem::temp_directory_path() / "kiln-digits";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--epochs" && i + 1 < argc)
      epochs = std::atoi(argv[++i]);
    else if (a == "--csv" && i + 1 < argc)
      csv = argv[++i];
    else if (a == "--out" && i + 1 < argc)
      out = argv[++i];
    else if (a == "--device" && i + 1 < argc)
      device = Device::parse(argv[++i]);
    else {
      std::cerr << "usage: " << argv[0] << " [--epochs N] [--csv digits.csv.gz] [--out DIR] [--device cuda]\n";
      return 2;
    }
  }

  Digits d = read_digits(csv);
  // A fixed split: the first 20% of a seeded permutation is the test set
  // (the same split as examples/digits.py).
  int64_t n = d.x.size(0), n_test = n / 5;
  Tensor order = data::randperm(n, 0);
  Tensor test_idx = order.narrow(0, 0, n_test), train_idx = order.narrow(0, n_test, n - n_test);
  Tensor x_train = index_select(d.x, 0, train_idx), y_train = index_select(d.y, 0, train_idx);
  Tensor x_test = index_select(d.x, 0, test_idx), y_test = index_select(d.y, 0, test_idx);
  std::cout << "digits: " << n - n_test << " train, " << n_test << " test images of 8x8 pixels\n";

  manual_seed(0);
  auto model = std::make_shared<nn::Sequential>(nn::Linear(64, 128), nn::ReLU(), nn::Linear(128, 128), nn::ReLU(),
                                                nn::Linear(128, 10));
  model->to(device);
  x_test = x_test.to(device), y_test = y_test.to(device);
  optim::AdamW opt(model->parameters(), {.lr = 3e-3, .weight_decay = 1e-4});
  optim::CosineAnnealingLR schedule(opt, epochs);
  data::DataLoader loader({x_train, y_train}, {.batch_size = 64, .shuffle = true, .seed = 0});

  auto start = std::chrono::steady_clock::now();
  double test_acc = 0;
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    model->train();
    double loss_sum = 0;
    int64_t seen = 0, correct = 0;
    for (const auto& batch : loader) {
      const Tensor x = batch[0].to(device), y = batch[1].to(device);
      Tensor logits = model->forward(x);
      Tensor loss = F::cross_entropy(logits, y);
      opt.zero_grad();
      loss.backward();
      opt.step();
      int64_t b = y.size(0);
      loss_sum += loss.item<double>() * static_cast<double>(b);
      correct += eq(argmax(logits, 1), y).sum().item<int64_t>();
      seen += b;
    }
    schedule.step();
    {
      NoGradGuard no_grad;
      model->eval();
      test_acc = accuracy(model->forward(x_test), y_test);
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("epoch %2d/%d %s loss %.4f  train %5.1f%%  test %5.1f%%  %.1fs\n", epoch, epochs,
                bar(epoch, epochs).c_str(), loss_sum / static_cast<double>(seen),
                100.0 * static_cast<double>(correct) / static_cast<double>(seen), 100 * test_acc, secs);
  }
  std::filesystem::create_directories(out);
  std::filesystem::path file = out / "digits_mlp_cpp.safetensors";
  model->save(file.string());
  std::printf("test accuracy %.1f%%; saved the model to %s\n", 100 * test_acc, file.c_str());
  return 0;
}
