// TensorFlow CPU ops around the fused MAM core (mam_fused.h): shape and index validation, output
// allocation, and the split of the work over helper threads (see parallel_for). Pieces never
// write to the same element, and every element's sum order is fixed by the core, so results are
// identical for any thread count. Kernels hold no state: concurrent calls are safe.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>

#include "mam_fused.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;
using ThreadPool = tensorflow::thread::ThreadPool;

// Runs fn(k, k + 1) for every item k of [0, total), shared out dynamically: the calling thread
// and up to (intra-op threads - 1) helpers (tf.config.threading's intra-op setting caps them)
// claim items one at a time from a counter until none is left. cost is an estimate in cycles of
// one item; a helper is woken per cycles_per_helper of work, less work runs on the caller alone.
//
// Helpers go to the executor's runner (ctx->runner(): the inter-op pool that runs the step's
// ops, in graphs, tf.function and eager alike) where there is one, else to the intra-op pool.
// The runner's threads have just run the ops before this one and are still awake; the intra-op
// pool's sleep at these sizes and start late, too late to help a small layer (the timings:
// docs/benchmarks.md, "A/B runs of the fused kernel").
//
// The caller never waits for a helper to start: on a machine whose cores are busy with other
// jobs or ops a helper may run milliseconds late, and then the caller has done the items itself
// (a static split, like ThreadPool::ParallelFor's, would wait for the late thread's share). It
// waits only for items a helper has claimed. A helper that starts after the last item was
// claimed touches nothing but the shared counters, which it keeps alive itself.
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
int64_t helper_count(OpKernelContext* ctx, int64_t total, int64_t cost,
                     int64_t cycles_per_helper) {
  ThreadPool* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  const double work = static_cast<double>(total) * static_cast<double>(std::max<int64_t>(cost, 1));
  return std::max<int64_t>(0, std::min<int64_t>(
      {static_cast<int64_t>(pool->NumThreads()) - 1, total - 1,
       static_cast<int64_t>(work / static_cast<double>(cycles_per_helper))}));
}

void parallel_for(OpKernelContext* ctx, int64_t total, int64_t cost, int64_t cycles_per_helper,
                  const std::function<void(int64_t, int64_t)>& fn) {
  if (total <= 0) return;
  const int64_t helpers = helper_count(ctx, total, cost, cycles_per_helper);
  if (helpers <= 0) {
    fn(0, total);
    return;
  }
  auto shared = std::make_shared<SharedItems>(total, fn);
  std::function<void(std::function<void()>)>* runner = ctx->runner();
  ThreadPool* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  for (int64_t h = 0; h < helpers; ++h) {
    if (runner != nullptr && *runner) {
      (*runner)([shared] { shared->work(); });
    } else {
      pool->Schedule([shared] { shared->work(); });
    }
  }
  shared->work();
  std::unique_lock<std::mutex> lock(shared->mutex);
  shared->all_done.wait(lock, [&] { return shared->done.load() == total; });
}

tensorflow::Status forward_shape(InferenceContext* c) {
  ShapeHandle x, w;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &w));
  DimensionHandle n;
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(x, 1), c->Dim(w, 0), &n));
  ShapeHandle y = c->Matrix(c->Dim(x, 0), c->Dim(w, 1));
  c->set_output(0, y);
  c->set_output(1, y);
  c->set_output(2, y);
  return tensorflow::OkStatus();
}

tensorflow::Status backward_shape(InferenceContext* c) {
  ShapeHandle g, x, w, amax, amin;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &g));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &x));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &w));
  TF_RETURN_IF_ERROR(c->Merge(c->input(3), g, &amax));
  TF_RETURN_IF_ERROR(c->Merge(c->input(4), g, &amin));
  c->set_output(0, x);
  c->set_output(1, w);
  return tensorflow::OkStatus();
}

}  // namespace

REGISTER_OP("MamFusedForward")
    .Input("x: float")
    .Input("w: float")
    .Output("y: float")
    .Output("amax: int32")
    .Output("amin: int32")
    .SetShapeFn(forward_shape)
    .Doc(R"doc(
y = max_i(x[b,i] * w[i,j]) + min_i(x[b,i] * w[i,j]) with the lowest argmax and argmin.
x: [B, N]; w: [N, M] (Keras kernel layout); y, amax, amin: [B, M].
)doc");

REGISTER_OP("MamFusedBackward")
    .Input("g: float")
    .Input("x: float")
    .Input("w: float")
    .Input("amax: int32")
    .Input("amin: int32")
    .Output("dx: float")
    .Output("dw: float")
    .SetShapeFn(backward_shape)
    .Doc(R"doc(
Gradient of MamFusedForward's y: only the selected pairs receive gradient, twice when
amax == amin.
)doc");

namespace {

// Checks x [B, N] and w [N, M] with 1 <= N <= INT32_MAX (indices are int32; the max of an
// empty set does not exist).
tensorflow::Status check_xw(const Tensor& x, const Tensor& w) {
  if (x.dims() != 2 || w.dims() != 2)
    return InvalidArgument("MAM fused op: x must be [batch, inputs] and w [inputs, units], got x ",
                           x.shape().DebugString(), " and w ", w.shape().DebugString());
  if (x.dim_size(1) != w.dim_size(0))
    return InvalidArgument("MAM fused op: x has ", x.dim_size(1), " inputs but w has ",
                           w.dim_size(0), " rows");
  if (x.dim_size(1) < 1 || x.dim_size(1) > std::numeric_limits<int32_t>::max())
    return InvalidArgument("MAM fused op: the number of inputs is ", x.dim_size(1),
                           "; it must be in [1, 2^31 - 1]");
  return tensorflow::OkStatus();
}

class MamFusedForwardOp : public OpKernel {
 public:
  explicit MamFusedForwardOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& xt = ctx->input(0);
    const Tensor& wt = ctx->input(1);
    OP_REQUIRES_OK(ctx, check_xw(xt, wt));
    const int64_t B = xt.dim_size(0), N = xt.dim_size(1), M = wt.dim_size(1);
    Tensor *yt, *amaxt, *amint;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({B, M}), &yt));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({B, M}), &amaxt));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({B, M}), &amint));
    if (B == 0 || M == 0) return;
    const float* x = xt.flat<float>().data();
    const float* w = wt.flat<float>().data();
    float* y = yt->flat<float>().data();
    int32_t* amax = amaxt->flat<int32_t>().data();
    int32_t* amin = amint->flat<int32_t>().data();
    // Work item: a group of rows against one column block, so that each packed slice of w serves
    // every row of the group. Groups are as big as they can be while leaving two items per
    // thread (an uneven machine balances them), eight where a row is one slice (packing that
    // slice costs little); items of one block are adjacent.
    ThreadPool* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    const int64_t blocks = (M + mam::kBlock - 1) / mam::kBlock;
    const int64_t per_thread = N <= mam::kChunk ? 8 : 2;
    const int64_t want_groups =
        std::max<int64_t>(1, (per_thread * pool->NumThreads() + blocks - 1) / blocks);
    int64_t group = (B + want_groups - 1) / want_groups;
    group = std::min(B, (group + mam::kRows - 1) / mam::kRows * mam::kRows);
    const int64_t groups = (B + group - 1) / group;
    const int64_t cost = group * N * mam::kBlock / 8;  // ~8 products per cycle
    std::atomic<bool> nonfinite{false};
    parallel_for(ctx, groups * blocks, cost, kForwardCyclesPerHelper,
                 [&](int64_t begin, int64_t end) {
      // Default-initialised (make_unique would zero the 16 KiB that packing overwrites anyway).
      std::unique_ptr<mam::ForwardScratch> scratch(new mam::ForwardScratch);
      std::unique_ptr<mam::ForwardState[]> states(new mam::ForwardState[group]);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t j0 = (item / groups) * mam::kBlock;
        const int64_t b0 = (item % groups) * group;
        const bool finite = mam::forward_block(
            x, w, N, M, b0, std::min(B, b0 + group), j0,
            static_cast<int>(std::min<int64_t>(mam::kBlock, M - j0)), scratch.get(),
            states.get(), y, amax, amin);
        if (!finite) nonfinite.store(true, std::memory_order_relaxed);
      }
    });
    // A NaN or infinite input can make NaN products, which the main pass skips: find the
    // outputs they reach (a slow pass, for this exceptional case only).
    if (nonfinite.load()) {
      parallel_for(ctx, B, N * M, kForwardCyclesPerHelper, [&](int64_t b0, int64_t b1) {
        mam::propagate_nan_rows(x, w, N, M, b0, b1, y);
      });
    }
  }
};

class MamFusedBackwardOp : public OpKernel {
 public:
  explicit MamFusedBackwardOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& gt = ctx->input(0);
    const Tensor& xt = ctx->input(1);
    const Tensor& wt = ctx->input(2);
    const Tensor& amaxt = ctx->input(3);
    const Tensor& amint = ctx->input(4);
    OP_REQUIRES_OK(ctx, check_xw(xt, wt));
    const int64_t B = xt.dim_size(0), N = xt.dim_size(1), M = wt.dim_size(1);
    const TensorShape ym({B, M});
    OP_REQUIRES(ctx, gt.shape() == ym && amaxt.shape() == ym && amint.shape() == ym,
                InvalidArgument("MAM fused backward: g, amax and amin must be ", ym.DebugString(),
                                ", got ", gt.shape().DebugString(), ", ",
                                amaxt.shape().DebugString(), ", ", amint.shape().DebugString()));
    const float* g = gt.flat<float>().data();
    const float* x = xt.flat<float>().data();
    const float* w = wt.flat<float>().data();
    const int32_t* amax = amaxt.flat<int32_t>().data();
    const int32_t* amin = amint.flat<int32_t>().data();
    // Indices come from the caller: check them all before any scatter reads through them
    // (one branch-free pass; the message names the first bad position).
    uint32_t highest = 0;  // as unsigned, a negative index is above every valid one
    for (int64_t k = 0; k < B * M; ++k)
      highest = std::max(highest, std::max(static_cast<uint32_t>(amax[k]),
                                           static_cast<uint32_t>(amin[k])));
    for (int64_t k = 0; static_cast<int64_t>(highest) >= N && k < B * M; ++k) {
      OP_REQUIRES(ctx, amax[k] >= 0 && amax[k] < N && amin[k] >= 0 && amin[k] < N,
                  InvalidArgument("MAM fused backward: index out of range at flat position ", k,
                                  ": amax ", amax[k], ", amin ", amin[k], ", inputs ", N));
    }
    Tensor *dxt, *dwt;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, xt.shape(), &dxt));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, wt.shape(), &dwt));
    float* dx = dxt->flat<float>().data();
    float* dw = dwt->flat<float>().data();
    // Items [0, dx_items) write rows of dx, the others columns of dw (pieces of kPiece columns:
    // a 64-byte line when M is a multiple of 16, little false sharing); each zeroes what it
    // owns first. A big dw is zeroed by contiguous rows in a first pass instead (zeroing a
    // column piece strides through all of it), unless its pieces are written whole (up to
    // kLocalDwInputs inputs).
    const int64_t dx_rows = 8;
    const int64_t dx_items = (B + dx_rows - 1) / dx_rows;
    const int64_t dx_cost = dx_rows * (N + 8 * M);
    const int64_t pieces = (M + mam::kPiece - 1) / mam::kPiece;
    // A small layer whose items would all run on this thread: one pass writes both
    // (mam_fused.h: backward_serial). (Its dw is below zero_first's size: the items are these.)
    if (N * M <= kSerialDwFloats &&
        helper_count(ctx, dx_items + pieces, dx_cost, kCyclesPerHelper) == 0) {
      mam::backward_serial(g, x, w, amax, amin, B, N, M, dx, dw);
      return;
    }
    const bool zero_first = N * M > (int64_t{1} << 18) && N > mam::kLocalDwInputs;
    const int64_t zero_rows = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(M, 1));
    const int64_t zero_items = zero_first ? (N + zero_rows - 1) / zero_rows : 0;
    auto dw_pieces = [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t j0 = p * mam::kPiece;
        mam::backward_dw_cols(g, x, amax, amin, B, N, M, j0, std::min(M, j0 + mam::kPiece),
                              !zero_first, dw);
      }
    };
    parallel_for(ctx, dx_items + zero_items + (zero_first ? 0 : pieces), dx_cost,
                 kCyclesPerHelper, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        if (item < dx_items) {
          const int64_t b0 = item * dx_rows;
          mam::backward_dx_rows(g, w, amax, amin, N, M, b0, std::min(B, b0 + dx_rows), dx);
        } else if (zero_first) {
          const int64_t i0 = (item - dx_items) * zero_rows;
          std::fill(dw + i0 * M, dw + std::min(N, i0 + zero_rows) * M, 0.0f);
        } else {
          dw_pieces(item - dx_items, item - dx_items + 1);
        }
      }
    });
    // A piece of a dw this big misses the cache on most adds: ~32 cycles a term.
    if (zero_first) parallel_for(ctx, pieces, 64 * B * mam::kPiece, kCyclesPerHelper, dw_pieces);
  }
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("MamFusedForward").Device(tensorflow::DEVICE_CPU), MamFusedForwardOp);
REGISTER_KERNEL_BUILDER(Name("MamFusedBackward").Device(tensorflow::DEVICE_CPU),
                        MamFusedBackwardOp);
