#pragma once
// kiln::data: minibatches over tensors that share their first dimension,
// the C++ counterpart of kiln.data.DataLoader (same seed, same batches).
//
//   kiln::data::DataLoader loader({x, y}, {.batch_size = 64, .shuffle = true, .seed = 0});
//   for (const auto& batch : loader) { const Tensor& xb = batch[0], &yb = batch[1]; ... }
#include <cstdint>
#include <vector>

#include "eager/tensor.h"

namespace kiln::data {

// A permutation of 0..n-1 (int64) that depends only on seed: splitmix64 and
// Fisher-Yates, the same on every platform and in Python
// (kiln.data.randperm).
Tensor randperm(int64_t n, uint64_t seed);

struct LoaderOptions {
  int64_t batch_size = 1;
  bool shuffle = false;
  // Drop the last batch when it is smaller than batch_size.
  bool drop_last = false;
  // Epoch e shuffles with randperm(n, epoch_seed(seed, e)).
  uint64_t seed = 0;
};

// The seed of one epoch's permutation.
uint64_t epoch_seed(uint64_t seed, int64_t epoch);

class DataLoader {
 public:
  DataLoader(std::vector<Tensor> tensors, LoaderOptions options);

  int64_t num_samples() const { return n_; }
  int64_t size() const;  // batches per epoch
  int64_t epoch() const { return epoch_; }

  // Batch i of the current epoch: rows gathered with index_select when
  // shuffling, else views of consecutive rows.
  std::vector<Tensor> batch(int64_t i) const;

  class Iterator {
   public:
    Iterator(const DataLoader* loader, int64_t i) : loader_(loader), i_(i) {}
    std::vector<Tensor> operator*() const { return loader_->batch(i_); }
    Iterator& operator++() {
      ++i_;
      return *this;
    }
    bool operator!=(const Iterator& other) const { return i_ != other.i_; }

   private:
    const DataLoader* loader_;
    int64_t i_;
  };
  // Starts an epoch (a new permutation when shuffling).
  Iterator begin();
  Iterator end() const { return Iterator(this, size()); }

 private:
  std::vector<Tensor> tensors_;
  LoaderOptions options_;
  int64_t n_ = 0;
  int64_t epoch_ = -1;
  Tensor order_;  // this epoch's permutation
};

}  // namespace kiln::data
