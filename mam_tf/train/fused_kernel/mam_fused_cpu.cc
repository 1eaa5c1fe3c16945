// The fused MAM driver (mam_fused_driver.h) without TensorFlow, for the Keras 3 backends:
// - a plain C ABI (mam_fused_forward_f32, mam_fused_backward_f32) on contiguous float32 arrays,
//   with its own pool of worker threads or, with MAM_FUSED_OPENMP defined (and -fopenmp), on
//   the process's OpenMP threads: PyTorch calls it through ctypes;
// - with MAM_FUSED_XLA_FFI defined (the build adds jax.ffi.include_dir()), two XLA FFI
//   handlers (MamFusedForward, MamFusedBackward) that run on XLA's intra-op thread pool, which
//   JAX registers as custom-call targets (they work under jax.jit).
// Both call the same driver and core as the TensorFlow op: the same bits for any thread count.
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "mam_fused_driver.h"

namespace {

// Worker threads that run scheduled tasks, started on demand up to the largest count a call
// asked for, and never stopped (the process ends them: no join at exit, no destructor racing a
// worker). A process forked while the pool exists has no workers in the child; its queue is
// never served there, which the driver tolerates (the caller does every unclaimed item).
class WorkerPool {
 public:
  static WorkerPool& instance() {
    static WorkerPool* pool = new WorkerPool;  // leaked on purpose: see above
    return *pool;
  }

  // Makes sure threads - 1 workers exist (the caller is the other thread).
  void ensure(int64_t threads) {
    std::lock_guard<std::mutex> lock(mutex_);
    while (static_cast<int64_t>(started_) + 1 < threads) {
      std::thread(&WorkerPool::serve, this).detach();
      ++started_;
    }
  }

  void schedule(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(std::move(task));
    }
    ready_.notify_one();
  }

 private:
  void serve() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        ready_.wait(lock, [this] { return !queue_.empty(); });
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }

  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> queue_;
  size_t started_ = 0;
};

// The driver's Pool for C ABI calls: `threads` threads, this one included.
class CallerPool {
 public:
  explicit CallerPool(int64_t threads) : threads_(std::max<int64_t>(1, threads)) {
    if (threads_ > 1) WorkerPool::instance().ensure(threads_);
  }
  int64_t num_threads() const { return threads_; }
  void schedule(std::function<void()> task) { WorkerPool::instance().schedule(std::move(task)); }

 private:
  int64_t threads_;
};

#ifdef MAM_FUSED_OPENMP
// The driver's Pool on the process's OpenMP threads: built with -fopenmp, the library shares the
// libgomp that PyTorch has loaded (same soname), so its work runs on torch's own intra-op
// threads, awake from the ops before, instead of a second set of threads competing with them.
// Unlike the worker pool, a parallel region ends at a barrier: the caller waits for every
// thread of the region, also one that starts late.
class OmpPool {
 public:
  explicit OmpPool(int64_t threads) : threads_(std::max<int64_t>(1, threads)) {}
  int64_t num_threads() const { return threads_; }

 private:
  int64_t threads_;
};
using CallPool = OmpPool;
#else
using CallPool = CallerPool;
#endif

// Copies `message` into the caller's buffer (NUL-terminated, cut to fit).
int fail(const std::string& message, char* error, int64_t error_size) {
  if (error != nullptr && error_size > 0)
    std::snprintf(error, static_cast<size_t>(error_size), "%s", message.c_str());
  return 1;
}

}  // namespace

#ifdef MAM_FUSED_OPENMP
namespace mam {
// parallel_for on an OpenMP team: the caller and `helpers` threads claim the items.
template <>
void parallel_for<OmpPool>(OmpPool& pool, int64_t total, int64_t cost, int64_t cycles_per_helper,
                           const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t helpers = helpers_or_inline(pool, total, cost, cycles_per_helper, fn);
  if (helpers == 0) return;
  SharedItems shared(total, fn);
#pragma omp parallel num_threads(static_cast<int>(helpers + 1))
  shared.work();
}
}  // namespace mam
#endif

extern "C" {

// y, amax, amin [B, M] of x [B, N] and w [N, M], all contiguous row-major, on `threads`
// threads. Returns 0, or 1 with the reason in `error` (error_size bytes).
__attribute__((visibility("default"))) int mam_fused_forward_f32(
    const float* x, const float* w, int64_t B, int64_t N, int64_t M, float* y, int32_t* amax,
    int32_t* amin, int64_t threads, char* error, int64_t error_size) {
  const std::string why = mam::check_inputs(N, N);
  if (!why.empty()) return fail(why, error, error_size);
  CallPool pool(threads);
  mam::forward(pool, x, w, B, N, M, y, amax, amin);
  return 0;
}

// dx [B, N] and dw [N, M] from g, amax, amin [B, M], x and w, as mam_fused_forward_f32.
__attribute__((visibility("default"))) int mam_fused_backward_f32(
    const float* g, const float* x, const float* w, const int32_t* amax, const int32_t* amin,
    int64_t B, int64_t N, int64_t M, float* dx, float* dw, int64_t threads, char* error,
    int64_t error_size) {
  const std::string why = mam::check_inputs(N, N);
  if (!why.empty()) return fail(why, error, error_size);
  const int64_t bad = mam::first_bad_index(amax, amin, B * M, N);
  if (bad >= 0)
    return fail("MAM fused backward: index out of range at flat position " +
                    std::to_string(bad) + ": amax " + std::to_string(amax[bad]) + ", amin " +
                    std::to_string(amin[bad]) + ", inputs " + std::to_string(N),
                error, error_size);
  CallPool pool(threads);
  mam::backward(pool, g, x, w, amax, amin, B, N, M, dx, dw);
  return 0;
}

}  // extern "C"

#ifdef MAM_FUSED_XLA_FFI
#include "xla/ffi/api/ffi.h"

namespace {

namespace ffi = xla::ffi;

// The driver's Pool over XLA's intra-op threads (the FFI execution context's pool).
class XlaPool {
 public:
  explicit XlaPool(ffi::ThreadPool& pool) : pool_(pool), threads_(pool.num_threads()) {}
  int64_t num_threads() const { return threads_; }
  void schedule(std::function<void()> task) { pool_.Schedule(std::move(task)); }

 private:
  ffi::ThreadPool& pool_;
  int64_t threads_;
};

// The inputs and units of x [B, N] and w [N, M], or an error naming the mismatch.
ffi::Error check_xw(const ffi::Buffer<ffi::F32, 2>& x, const ffi::Buffer<ffi::F32, 2>& w) {
  const std::string why = mam::check_inputs(x.dimensions()[1], w.dimensions()[0]);
  return why.empty() ? ffi::Error::Success() : ffi::Error::InvalidArgument(why);
}

ffi::Error forward_impl(ffi::ThreadPool thread_pool, ffi::Buffer<ffi::F32, 2> x,
                        ffi::Buffer<ffi::F32, 2> w, ffi::ResultBuffer<ffi::F32, 2> y,
                        ffi::ResultBuffer<ffi::S32, 2> amax, ffi::ResultBuffer<ffi::S32, 2> amin) {
  ffi::Error status = check_xw(x, w);
  if (status.failure()) return status;
  XlaPool pool(thread_pool);
  mam::forward(pool, x.typed_data(), w.typed_data(), x.dimensions()[0], x.dimensions()[1],
               w.dimensions()[1], y->typed_data(), amax->typed_data(), amin->typed_data());
  return ffi::Error::Success();
}

ffi::Error backward_impl(ffi::ThreadPool thread_pool, ffi::Buffer<ffi::F32, 2> g,
                         ffi::Buffer<ffi::F32, 2> x, ffi::Buffer<ffi::F32, 2> w,
                         ffi::Buffer<ffi::S32, 2> amax, ffi::Buffer<ffi::S32, 2> amin,
                         ffi::ResultBuffer<ffi::F32, 2> dx, ffi::ResultBuffer<ffi::F32, 2> dw) {
  ffi::Error status = check_xw(x, w);
  if (status.failure()) return status;
  const int64_t B = x.dimensions()[0], N = x.dimensions()[1], M = w.dimensions()[1];
  for (const auto dims : {g.dimensions(), amax.dimensions(), amin.dimensions()})
    if (dims[0] != B || dims[1] != M)
      return ffi::Error::InvalidArgument("MAM fused backward: g, amax and amin must be [" +
                                         std::to_string(B) + ", " + std::to_string(M) + "]");
  const int64_t bad = mam::first_bad_index(amax.typed_data(), amin.typed_data(), B * M, N);
  if (bad >= 0)
    return ffi::Error::InvalidArgument(
        "MAM fused backward: index out of range at flat position " + std::to_string(bad) +
        ": amax " + std::to_string(amax.typed_data()[bad]) + ", amin " +
        std::to_string(amin.typed_data()[bad]) + ", inputs " + std::to_string(N));
  XlaPool pool(thread_pool);
  mam::backward(pool, g.typed_data(), x.typed_data(), w.typed_data(), amax.typed_data(),
                amin.typed_data(), B, N, M, dx->typed_data(), dw->typed_data());
  return ffi::Error::Success();
}

}  // namespace

// (Aliases: a comma inside a template argument list would split the macro's arguments.)
using F32Matrix = ffi::Buffer<ffi::F32, 2>;
using S32Matrix = ffi::Buffer<ffi::S32, 2>;

XLA_FFI_DEFINE_HANDLER_SYMBOL(MamFusedForward, forward_impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32Matrix>()
                                  .Arg<F32Matrix>()
                                  .Ret<F32Matrix>()
                                  .Ret<S32Matrix>()
                                  .Ret<S32Matrix>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MamFusedBackward, backward_impl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32Matrix>()
                                  .Arg<F32Matrix>()
                                  .Arg<F32Matrix>()
                                  .Arg<S32Matrix>()
                                  .Arg<S32Matrix>()
                                  .Ret<F32Matrix>()
                                  .Ret<F32Matrix>());
#endif  // MAM_FUSED_XLA_FFI
