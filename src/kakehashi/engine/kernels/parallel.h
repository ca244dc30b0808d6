// The kernels' parallel loop: a pool whose calling thread never waits for a worker that has
// not started.
//
// OpenMP (torch's at::parallel_for) hands each thread a fixed share and ends every region in
// a barrier, so a region lasts until every thread has run its share. On a busy host a worker
// is often off its core for a whole scheduler slice (milliseconds) while the region it owes
// work to needed microseconds; a decode step has hundreds of regions, and the kernels lost
// 10x where torch's own path lost 2-3x (measured with two busy processes on two cores).
//
// Here the range is cut into chunks that threads claim one at a time. The calling thread
// claims chunks too, and waits only for chunks another thread has claimed and not finished:
// a worker that is not running simply claims nothing, and the region runs at the speed of
// the threads that are. Idle workers spin for a bounded time (regions of one step follow
// each other within microseconds) and then sleep on a futex.

#pragma once

#include <cstdint>

namespace kakehashi::cpu {

namespace detail {
using ChunkFn = void (*)(const void* body, int64_t begin, int64_t end);
void run_parallel(int64_t begin, int64_t end, int64_t grain, ChunkFn fn, const void* body);
}  // namespace detail

// Calls f(b, e) over disjoint sub-ranges covering [begin, end), each at least `grain` long
// (but the last), on the calling thread and the pool's workers; returns when all are done.
// Runs inline when the range is one grain, inside another parallel loop, or while another
// thread's loop holds the pool. An exception thrown by f is rethrown here.
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (end <= begin) return;
  detail::run_parallel(
      begin, end, grain,
      [](const void* body, int64_t b, int64_t e) { (*static_cast<const F*>(body))(b, e); }, &f);
}

// Threads a parallel loop may use: torch's intra-op setting (torch.set_num_threads).
int64_t parallel_threads();

}  // namespace kakehashi::cpu
