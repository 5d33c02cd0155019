#include "eager/data.h"

#include "eager/ops.h"

namespace kiln::data {

namespace {

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

Tensor randperm(int64_t n, uint64_t seed) {
  KILN_CHECK(n >= 0, ValueError, "randperm: n must be non-negative, got {}", n);
  Tensor out = Tensor::empty({n}, DType::Int64);
  int64_t* p = out.data<int64_t>();
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  uint64_t state = seed;
  for (int64_t i = n - 1; i > 0; --i) {
    // A draw in [0, i] by multiply-high (Lemire): no modulo, bias below 2^-40 here.
    auto j = static_cast<int64_t>((static_cast<unsigned __int128>(splitmix64(state)) * static_cast<uint64_t>(i + 1)) >> 64);
    std::swap(p[i], p[j]);
  }
  return out;
}

uint64_t epoch_seed(uint64_t seed, int64_t epoch) {
  uint64_t state = seed ^ (static_cast<uint64_t>(epoch) * 0xd1b54a32d192ed03ULL);
  return splitmix64(state);
}

DataLoader::DataLoader(std::vector<Tensor> tensors, LoaderOptions options)
    : tensors_(std::move(tensors)), options_(options) {
  KILN_CHECK(!tensors_.empty(), ValueError, "DataLoader: needs at least one tensor");
  KILN_CHECK(options_.batch_size > 0, ValueError, "DataLoader: batch_size must be positive, got {}",
             options_.batch_size);
  for (size_t i = 0; i < tensors_.size(); ++i) {
    KILN_CHECK(tensors_[i].dim() > 0, ShapeError, "DataLoader: tensor {} is 0-d; samples are rows of dim 0", i);
    if (i == 0) n_ = tensors_[0].size(0);
    KILN_CHECK(tensors_[i].size(0) == n_, ShapeError,
               "DataLoader: tensor {} has {} rows but tensor 0 has {}; all need the same first dimension", i,
               tensors_[i].size(0), n_);
  }
}

int64_t DataLoader::size() const {
  int64_t b = options_.batch_size;
  return options_.drop_last ? n_ / b : (n_ + b - 1) / b;
}

DataLoader::Iterator DataLoader::begin() {
  ++epoch_;
  if (options_.shuffle) order_ = randperm(n_, epoch_seed(options_.seed, epoch_));
  return Iterator(this, 0);
}

std::vector<Tensor> DataLoader::batch(int64_t i) const {
  KILN_CHECK(i >= 0 && i < size(), IndexError, "DataLoader: batch {} out of range ({} batches)", i, size());
  int64_t start = i * options_.batch_size, len = std::min(options_.batch_size, n_ - start);
  std::vector<Tensor> out;
  out.reserve(tensors_.size());
  if (options_.shuffle) {
    KILN_CHECK(order_.defined(), Error, "DataLoader: call begin() (start an epoch) before batch()");
    Tensor index = order_.narrow(0, start, len);
    for (const Tensor& t : tensors_) out.push_back(index_select(t, 0, index));
  } else {
    for (const Tensor& t : tensors_) out.push_back(t.narrow(0, start, len));
  }
  return out;
}

}  // namespace kiln::data
