#include "runtime/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace kiln {
namespace {

thread_local bool t_in_parallel = false;

struct Job {
  detail::RangeFn fn;
  void* ctx;
  int64_t begin, end, chunk, nchunks;
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
};

void work_on(Job& job) {
  t_in_parallel = true;
  for (int64_t c; (c = job.next.fetch_add(1)) < job.nchunks;) {
    int64_t b = job.begin + c * job.chunk;
    int64_t e = std::min(job.end, b + job.chunk);
    try {
      job.fn(job.ctx, b, e);
    } catch (...) {
      std::lock_guard lock(job.error_mutex);
      if (!job.error) job.error = std::current_exception();
    }
  }
  t_in_parallel = false;
}

class ThreadPool {
 public:
  explicit ThreadPool(int nthreads) {
    for (int i = 1; i < nthreads; ++i) workers_.emplace_back([this] { worker_loop(); });
  }
  ~ThreadPool() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void run(Job& job) {
    std::lock_guard serialize(run_mutex_);
    {
      std::lock_guard lock(mutex_);
      job_ = &job;
      ++generation_;
    }
    wake_.notify_all();
    work_on(job);
    std::unique_lock lock(mutex_);
    idle_.wait(lock, [&] { return active_ == 0; });
    job_ = nullptr;
  }

 private:
  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || (job_ && generation_ != seen); });
      if (stop_) return;
      seen = generation_;
      Job* job = job_;
      ++active_;
      lock.unlock();
      work_on(*job);
      lock.lock();
      if (--active_ == 0) idle_.notify_one();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex run_mutex_, mutex_;
  std::condition_variable wake_, idle_;
  Job* job_ = nullptr;
  uint64_t generation_ = 0;
  int active_ = 0;
  bool stop_ = false;
};

int default_threads() {
  if (const char* env = std::getenv("KILN_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

std::atomic<int> g_num_threads{0};
std::mutex g_pool_mutex;
std::unique_ptr<ThreadPool> g_pool;

ThreadPool& pool() {
  std::lock_guard lock(g_pool_mutex);
  int want = num_threads();
  if (!g_pool || g_pool->size() != want) {
    // Another thread may still be running on the old pool: retire it
    // instead of destroying it (resizing is rare).
    static std::vector<std::unique_ptr<ThreadPool>> retired;
    if (g_pool) retired.push_back(std::move(g_pool));
    g_pool = std::make_unique<ThreadPool>(want);
  }
  return *g_pool;
}

}  // namespace

int num_threads() {
  int n = g_num_threads.load(std::memory_order_relaxed);
  if (n == 0) {
    n = default_threads();
    g_num_threads.store(n);
  }
  return n;
}

void set_num_threads(int n) { g_num_threads.store(std::max(1, n)); }
bool in_parallel_region() { return t_in_parallel; }

namespace detail {
void parallel_for_impl(int64_t begin, int64_t end, int64_t grain, RangeFn fn, void* ctx) {
  ThreadPool& p = pool();
  int64_t range = end - begin;
  int64_t nchunks = std::min<int64_t>(p.size(), (range + grain - 1) / std::max<int64_t>(grain, 1));
  Job job;
  job.fn = fn;
  job.ctx = ctx;
  job.begin = begin;
  job.end = end;
  job.chunk = (range + nchunks - 1) / nchunks;
  job.nchunks = (range + job.chunk - 1) / job.chunk;
  p.run(job);
  if (job.error) std::rethrow_exception(job.error);
}
}  // namespace detail

}  // namespace kiln
