// The pool behind parallel.h: chunks claimed from one atomic word, a calling thread that waits
// only for claimed chunks, and workers that spin briefly and then sleep on a futex.

#include "parallel.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace kakehashi::cpu {

namespace {

using Clock = std::chrono::steady_clock;

#ifndef KH_CHUNKS_PER_THREAD
#define KH_CHUNKS_PER_THREAD 4
#endif
#ifndef KH_WORKER_SPIN_US
#define KH_WORKER_SPIN_US 200
#endif

// Chunks per thread: a few, so that a thread taken off its core in the middle of a chunk
// leaves little for the others to wait on, and still long enough to stream well.
constexpr int64_t kChunksPerThread = KH_CHUNKS_PER_THREAD;
// How long an idle worker spins before it sleeps: the regions of a decode step come within
// microseconds of each other, the steps themselves a millisecond or more apart.
constexpr auto kWorkerSpin = std::chrono::microseconds(KH_WORKER_SPIN_US);
// How long the calling thread spins on a claimed chunk before it yields its core (to the
// thread that holds the chunk, if that thread is waiting for one).
constexpr auto kOwnerSpin = std::chrono::microseconds(50);
// The chunk index of a loop that is being published: no chunk of it can be claimed yet.
constexpr uint64_t kClosed = 0xFFFFFFFFu;

thread_local bool t_in_loop = false;

void futex_wait(std::atomic<uint32_t>* word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr,
          nullptr, 0);
}

void futex_wake_all(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
          nullptr, 0);
}

void run_inline(int64_t begin, int64_t end, detail::ChunkFn fn, const void* body) {
  const bool outer = t_in_loop;
  t_in_loop = true;
  try {
    fn(body, begin, end);
  } catch (...) {
    t_in_loop = outer;
    throw;
  }
  t_in_loop = outer;
}

class Pool {
 public:
  // Runs a loop of `chunks` chunks of `chunk` iterations with up to `workers` helpers.
  // Returns false, having run nothing, when another thread's loop holds the pool.
  bool run(int64_t begin, int64_t end, int64_t chunk, int64_t chunks, int64_t workers,
           detail::ChunkFn fn, const void* body) {
    std::unique_lock<std::mutex> owner(owner_, std::try_to_lock);
    if (!owner.owns_lock()) return false;
    while (static_cast<int64_t>(threads_.size()) < workers) {
      const int index = static_cast<int>(threads_.size());
      threads_.emplace_back([this, index] { work(index); });
      threads_.back().detach();  // the pool lives as long as the process
    }
    active_workers_.store(workers, std::memory_order_relaxed);
    const uint32_t gen = ++generation_;
    // Close the word before the fields change: a worker still in the last loop's
    // claim_and_run may have read its state and be about to read the fields. Whatever new
    // field it reads, the fences make its compare-exchange see this store and fail, so it
    // can never run (or count as done) a chunk made of two loops' fields.
    state_.store(static_cast<uint64_t>(gen) << 32 | kClosed, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    fn_.store(fn, std::memory_order_relaxed);
    body_.store(body, std::memory_order_relaxed);
    begin_.store(begin, std::memory_order_relaxed);
    end_.store(end, std::memory_order_relaxed);
    chunk_.store(chunk, std::memory_order_relaxed);
    chunks_.store(chunks, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    error_ = nullptr;
    state_.store(static_cast<uint64_t>(gen) << 32, std::memory_order_release);
    epoch_.store(gen, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) futex_wake_all(&epoch_);

    t_in_loop = true;
    claim_and_run(gen);
    wait_for_claimed(chunks);
    t_in_loop = false;
    if (error_) std::rethrow_exception(error_);
    return true;
  }

 private:
  // Claims chunks of generation `gen` one by one and runs them, until none is left (or the
  // loop is over and another has begun: a worker may wake late).
  void claim_and_run(uint32_t gen) {
    for (;;) {
      uint64_t state = state_.load(std::memory_order_acquire);
      if (static_cast<uint32_t>(state >> 32) != gen) return;
      const int64_t index = static_cast<uint32_t>(state);
      const int64_t chunks = chunks_.load(std::memory_order_relaxed);
      if (index >= chunks) return;
      const detail::ChunkFn fn = fn_.load(std::memory_order_relaxed);
      const void* body = body_.load(std::memory_order_relaxed);
      const int64_t b = begin_.load(std::memory_order_relaxed) +
                        index * chunk_.load(std::memory_order_relaxed);
      const int64_t e = std::min(end_.load(std::memory_order_relaxed),
                                 b + chunk_.load(std::memory_order_relaxed));
      // An unchanged word proves the fields above were this loop's: it cannot end while this
      // chunk is unclaimed, and the next loop closes the word before it touches a field.
      std::atomic_thread_fence(std::memory_order_acquire);
      if (!state_.compare_exchange_weak(state, state + 1, std::memory_order_acq_rel)) continue;
      try {
        fn(body, b, e);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex_);
        if (!error_) error_ = std::current_exception();
      }
      done_.fetch_add(1, std::memory_order_acq_rel);
    }
  }

  // Every chunk is claimed; waits for the ones other threads are still running.
  void wait_for_claimed(int64_t chunks) {
    if (done_.load(std::memory_order_acquire) == chunks) return;
    const auto start = Clock::now();
    for (int spins = 1; done_.load(std::memory_order_acquire) != chunks; ++spins) {
      if (spins % 64 == 0 && Clock::now() - start > kOwnerSpin)
        sched_yield();
      else
        _mm_pause();
    }
  }

  void work(int index) {
    t_in_loop = true;  // a kernel a worker runs never starts a loop of its own
    uint32_t seen = epoch_.load(std::memory_order_acquire);
    for (;;) {
      uint32_t now = wait_for_loop(seen);
      seen = now;
      if (index < active_workers_.load(std::memory_order_relaxed)) claim_and_run(now);
    }
  }

  // Spins until a loop newer than `seen` is published, then sleeps until one is.
  uint32_t wait_for_loop(uint32_t seen) {
    auto start = Clock::now();
    for (int spins = 1;; ++spins) {
      const uint32_t now = epoch_.load(std::memory_order_acquire);
      if (now != seen) return now;
      _mm_pause();
      if (spins % 256 != 0 || Clock::now() - start < kWorkerSpin) continue;
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      if (epoch_.load(std::memory_order_seq_cst) == seen) futex_wait(&epoch_, seen);
      sleepers_.fetch_sub(1, std::memory_order_seq_cst);
      start = Clock::now();
    }
  }

  std::mutex owner_;                // held by the thread whose loop runs
  std::vector<std::thread> threads_;  // grown under owner_
  uint32_t generation_ = 0;         // under owner_
  alignas(64) std::atomic<uint64_t> state_{0};  // generation << 32 | next unclaimed chunk
  alignas(64) std::atomic<int64_t> done_{0};    // chunks finished in this generation
  alignas(64) std::atomic<uint32_t> epoch_{0};  // latest generation; sleeping workers wait on it
  std::atomic<int> sleepers_{0};
  std::atomic<int64_t> active_workers_{0};
  std::atomic<detail::ChunkFn> fn_{nullptr};
  std::atomic<const void*> body_{nullptr};
  std::atomic<int64_t> begin_{0}, end_{0}, chunk_{1}, chunks_{0};
  std::mutex error_mutex_;
  std::exception_ptr error_;
};

Pool*& instance() {
  static Pool* pool = new Pool();  // never destroyed: its workers outlive main()
  return pool;
}

// A forked child has none of its parent's workers (and maybe a lock held by one of its other
// threads): it starts a pool of its own, and the parent's copy is left unused.
void renew_after_fork() { instance() = new Pool(); }

Pool& pool() {
  static const int registered = pthread_atfork(nullptr, nullptr, renew_after_fork);
  (void)registered;
  return *instance();
}

}  // namespace

int64_t parallel_threads() { return std::max<int64_t>(1, at::get_num_threads()); }

namespace detail {

void run_parallel(int64_t begin, int64_t end, int64_t grain, ChunkFn fn, const void* body) {
  const int64_t range = end - begin;
  const int64_t threads = t_in_loop ? 1 : parallel_threads();
  const int64_t most = (range + std::max<int64_t>(grain, 1) - 1) / std::max<int64_t>(grain, 1);
  int64_t chunks = std::min(most, threads * kChunksPerThread);
  if (threads <= 1 || chunks <= 1) return run_inline(begin, end, fn, body);
  const int64_t chunk = (range + chunks - 1) / chunks;
  chunks = (range + chunk - 1) / chunk;
  if (!pool().run(begin, end, chunk, chunks, threads - 1, fn, body))
    run_inline(begin, end, fn, body);
}

}  // namespace detail

}  // namespace kakehashi::cpu
