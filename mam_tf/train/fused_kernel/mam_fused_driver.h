// The fused MAM op without any framework: validation, the split of the work into independent
// pieces and their dynamic sharing over a thread pool, around the numeric core (mam_fused.h).
// Each framework's glue (mam_fused_op.cc for TensorFlow, mam_fused_cpu.cc for XLA's FFI and a
// plain C ABI) allocates the outputs and passes its own pool. Pieces never write to the same
// element, and every element's sum order is fixed by the core, so results are identical for any
// thread count.
//
// A Pool is any object with
//   int64_t num_threads();                       // threads that may run items, the caller's too
//   void schedule(std::function<void()> task);   // run task on some other thread, some time
// A task scheduled late (or never: a pool without threads) costs nothing but the time it would
// have helped: the caller does every item no helper has claimed.
#ifndef MAM_TF_KERNELS_MAM_DRIVER_H_
#define MAM_TF_KERNELS_MAM_DRIVER_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <string>

#include "mam_fused.h"

namespace mam {

// Runs fn(k, k + 1) for every item k of [0, total), shared out dynamically: the calling thread
// and up to (pool threads - 1) helpers claim items one at a time from a counter until none is
// left. cost is an estimate in cycles of one item; a helper is woken per cycles_per_helper of
// work, less work runs on the caller alone.
//
// The caller never waits for a helper to start: on a machine whose cores are busy with other
// jobs or ops a helper may run milliseconds late, and then the caller has done the items itself
// (a static split would wait for the late thread's share). It waits only for items a helper has
// claimed. A helper that starts after the last item was claimed touches nothing but the shared
// counters, which it keeps alive itself.
//
// The forward's threshold: a helper pays for its start only above a few hundred thousand cycles
// of estimated work; below, it changed nothing or cost a little (docs/benchmarks.md).
constexpr int64_t kForwardCyclesPerHelper = 300000;
// The backward's: its small layers run one serial pass over dx and dw (backward_serial), faster
// than the split into dx rows and dw pieces that a helper needs, so a helper there gains nothing
// (docs/benchmarks.md).
constexpr int64_t kCyclesPerHelper = 1000000;
// The backward writes dx and dw in one serial pass (mam_fused.h: backward_serial) when no helper
// would run and dw has at most this many floats (256 KiB: its scattered adds stay in L2); there
// it beats the dx rows followed by the dw pieces (docs/benchmarks.md).
constexpr int64_t kSerialDwFloats = int64_t{1} << 16;

struct SharedItems {
  explicit SharedItems(int64_t n, const std::function<void(int64_t, int64_t)>& f)
      : total(n), fn(f) {}
  const int64_t total;
  const std::function<void(int64_t, int64_t)> fn;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;
  std::condition_variable all_done;

  void work() {
    int64_t mine = 0;
    for (int64_t k; (k = next.fetch_add(1, std::memory_order_relaxed)) < total; ++mine)
      fn(k, k + 1);
    if (mine > 0 && done.fetch_add(mine, std::memory_order_acq_rel) + mine == total) {
      std::lock_guard<std::mutex> lock(mutex);
      all_done.notify_all();
    }
  }
};

// How many helpers parallel_for wakes for `total` items of `cost` cycles each.
template <class Pool>
int64_t helper_count(Pool& pool, int64_t total, int64_t cost, int64_t cycles_per_helper) {
  const double work = static_cast<double>(total) * static_cast<double>(std::max<int64_t>(cost, 1));
  return std::max<int64_t>(0, std::min<int64_t>(
      {pool.num_threads() - 1, total - 1,
       static_cast<int64_t>(work / static_cast<double>(cycles_per_helper))}));
}

// The helpers to wake for `fn` over `total` items; 0 when the work is too small to share, after
// running all of it on the calling thread.
template <class Pool>
int64_t helpers_or_inline(Pool& pool, int64_t total, int64_t cost, int64_t cycles_per_helper,
                          const std::function<void(int64_t, int64_t)>& fn) {
  if (total <= 0) return 0;
  const int64_t helpers = helper_count(pool, total, cost, cycles_per_helper);
  if (helpers <= 0) fn(0, total);
  return helpers;  // helper_count is never negative
}

template <class Pool>
void parallel_for(Pool& pool, int64_t total, int64_t cost, int64_t cycles_per_helper,
                  const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t helpers = helpers_or_inline(pool, total, cost, cycles_per_helper, fn);
  if (helpers == 0) return;
  auto shared = std::make_shared<SharedItems>(total, fn);
  for (int64_t h = 0; h < helpers; ++h) pool.schedule([shared] { shared->work(); });
  shared->work();
  std::unique_lock<std::mutex> lock(shared->mutex);
  shared->all_done.wait(lock, [&] { return shared->done.load() == total; });
}

// Why x [B, N] and w [N, M] (given as their dims; rank checked by the caller) cannot go through
// the op, or "" when they can: 1 <= N <= INT32_MAX (indices are int32; the max of an empty set
// does not exist).
inline std::string check_inputs(int64_t x_inputs, int64_t w_inputs) {
  if (x_inputs != w_inputs)
    return "MAM fused op: x has " + std::to_string(x_inputs) + " inputs but w has " +
           std::to_string(w_inputs) + " rows";
  if (x_inputs < 1 || x_inputs > std::numeric_limits<int32_t>::max())
    return "MAM fused op: the number of inputs is " + std::to_string(x_inputs) +
           "; it must be in [1, 2^31 - 1]";
  return "";
}

// The first flat position k of amax/amin ([B * M] entries) holding an index outside [0, N), or
// -1. Indices come from the caller: checked before any scatter reads through them (one
// branch-free pass, then a search only when something is wrong).
inline int64_t first_bad_index(const int32_t* amax, const int32_t* amin, int64_t count,
                               int64_t N) {
  uint32_t highest = 0;  // as unsigned, a negative index is above every valid one
  for (int64_t k = 0; k < count; ++k)
    highest = std::max(highest, std::max(static_cast<uint32_t>(amax[k]),
                                         static_cast<uint32_t>(amin[k])));
  if (static_cast<int64_t>(highest) < N) return -1;
  for (int64_t k = 0; k < count; ++k)
    if (amax[k] < 0 || amax[k] >= N || amin[k] < 0 || amin[k] >= N) return k;
  return -1;
}

// y, amax, amin [B, M] of x [B, N] and w [N, M] (inputs checked by check_inputs).
template <class Pool>
void forward(Pool& pool, const float* x, const float* w, int64_t B, int64_t N, int64_t M,
             float* y, int32_t* amax, int32_t* amin) {
  if (B == 0 || M == 0) return;
  // Work item: a group of rows against one column block, so that each packed slice of w serves
  // every row of the group. Groups are as big as they can be while leaving two items per
  // thread (an uneven machine balances them), eight where a row is one slice (packing that
  // slice costs little); items of one block are adjacent.
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t blocks = (M + kBlock - 1) / kBlock;
  const int64_t per_thread = N <= kChunk ? 8 : 2;
  const int64_t want_groups = std::max<int64_t>(1, (per_thread * threads + blocks - 1) / blocks);
  int64_t group = (B + want_groups - 1) / want_groups;
  group = std::min(B, (group + kRows - 1) / kRows * kRows);
  const int64_t groups = (B + group - 1) / group;
  const int64_t cost = group * N * kBlock / 8;  // ~8 products per cycle
  std::atomic<bool> nonfinite{false};
  parallel_for(pool, groups * blocks, cost, kForwardCyclesPerHelper,
               [&](int64_t begin, int64_t end) {
    // Default-initialised (make_unique would zero the 16 KiB that packing overwrites anyway).
    std::unique_ptr<ForwardScratch> scratch(new ForwardScratch);
    std::unique_ptr<ForwardState[]> states(new ForwardState[group]);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t j0 = (item / groups) * kBlock;
      const int64_t b0 = (item % groups) * group;
      const bool finite = forward_block(
          x, w, N, M, b0, std::min(B, b0 + group), j0,
          static_cast<int>(std::min<int64_t>(kBlock, M - j0)), scratch.get(), states.get(), y,
          amax, amin);
      if (!finite) nonfinite.store(true, std::memory_order_relaxed);
    }
  });
  // A NaN or infinite input can make NaN products, which the main pass skips: find the outputs
  // they reach (a slow pass, for this exceptional case only).
  if (nonfinite.load()) {
    parallel_for(pool, B, N * M, kForwardCyclesPerHelper, [&](int64_t b0, int64_t b1) {
      propagate_nan_rows(x, w, N, M, b0, b1, y);
    });
  }
}

// dx [B, N] and dw [N, M] from g [B, M] and forward's indices (checked by first_bad_index).
template <class Pool>
void backward(Pool& pool, const float* g, const float* x, const float* w, const int32_t* amax,
              const int32_t* amin, int64_t B, int64_t N, int64_t M, float* dx, float* dw) {
  // Items [0, dx_items) write rows of dx, the others columns of dw (pieces of kPiece columns:
  // a 64-byte line when M is a multiple of 16, little false sharing); each zeroes what it
  // owns first. A big dw is zeroed by contiguous rows in a first pass instead (zeroing a
  // column piece strides through all of it), unless its pieces are written whole (up to
  // kLocalDwInputs inputs).
  const int64_t dx_rows = 8;
  const int64_t dx_items = (B + dx_rows - 1) / dx_rows;
  const int64_t dx_cost = dx_rows * (N + 8 * M);
  const int64_t pieces = (M + kPiece - 1) / kPiece;
  // A small layer whose items would all run on this thread: one pass writes both
  // (backward_serial). (Its dw is below zero_first's size: the items are these.)
  if (N * M <= kSerialDwFloats &&
      helper_count(pool, dx_items + pieces, dx_cost, kCyclesPerHelper) == 0) {
    backward_serial(g, x, w, amax, amin, B, N, M, dx, dw);
    return;
  }
  const bool zero_first = N * M > (int64_t{1} << 18) && N > kLocalDwInputs;
  const int64_t zero_rows = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(M, 1));
  const int64_t zero_items = zero_first ? (N + zero_rows - 1) / zero_rows : 0;
  auto dw_pieces = [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t j0 = p * kPiece;
      backward_dw_cols(g, x, amax, amin, B, N, M, j0, std::min(M, j0 + kPiece), !zero_first,
                       dw);
    }
  };
  parallel_for(pool, dx_items + zero_items + (zero_first ? 0 : pieces), dx_cost,
               kCyclesPerHelper, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      if (item < dx_items) {
        const int64_t b0 = item * dx_rows;
        backward_dx_rows(g, w, amax, amin, N, M, b0, std::min(B, b0 + dx_rows), dx);
      } else if (zero_first) {
        const int64_t i0 = (item - dx_items) * zero_rows;
        std::fill(dw + i0 * M, dw + std::min(N, i0 + zero_rows) * M, 0.0f);
      } else {
        dw_pieces(item - dx_items, item - dx_items + 1);
      }
    }
  });
  // A piece of a dw this big misses the cache on most adds: ~32 cycles a term.
  if (zero_first) parallel_for(pool, pieces, 64 * B * kPiece, kCyclesPerHelper, dw_pieces);
}

}  // namespace mam

#endif  // MAM_TF_KERNELS_MAM_DRIVER_H_
