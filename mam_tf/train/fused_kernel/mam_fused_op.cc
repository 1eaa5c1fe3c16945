// TensorFlow CPU ops around the fused MAM driver (mam_fused_driver.h, which splits the work over
// helper threads and calls the numeric core, mam_fused.h): shapes, errors, output allocation and
// TensorFlow's threads. Kernels hold no state: concurrent calls are safe.
#include <cstdint>
#include <functional>
#include <string>

#include "mam_fused_driver.h"
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

// The driver's Pool (mam_fused_driver.h) over TensorFlow's threads. Helpers go to the
// executor's runner (ctx->runner(): the inter-op pool that runs the step's ops, in graphs,
// tf.function and eager alike) where there is one, else to the intra-op pool. The runner's
// threads have just run the ops before this one and are still awake; the intra-op pool's sleep
// at these sizes and start late, too late to help a small layer (the timings:
// docs/benchmarks.md, "A/B runs of the fused kernel"). tf.config.threading's intra-op setting
// caps the helpers.
class TfPool {
 public:
  explicit TfPool(OpKernelContext* ctx)
      : runner_(ctx->runner()), pool_(ctx->device()->tensorflow_cpu_worker_threads()->workers) {}
  int64_t num_threads() const { return pool_->NumThreads(); }
  void schedule(std::function<void()> task) {
    if (runner_ != nullptr && *runner_) {
      (*runner_)(std::move(task));
    } else {
      pool_->Schedule(std::move(task));
    }
  }

 private:
  std::function<void(std::function<void()>)>* runner_;
  ThreadPool* pool_;
};

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

// Checks that x [B, N] and w [N, M] are matrices the driver takes (mam::check_inputs).
tensorflow::Status check_xw(const Tensor& x, const Tensor& w) {
  if (x.dims() != 2 || w.dims() != 2)
    return InvalidArgument("MAM fused op: x must be [batch, inputs] and w [inputs, units], got x ",
                           x.shape().DebugString(), " and w ", w.shape().DebugString());
  const std::string why = mam::check_inputs(x.dim_size(1), w.dim_size(0));
  if (!why.empty()) return InvalidArgument(why);
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
    TfPool pool(ctx);
    mam::forward(pool, xt.flat<float>().data(), wt.flat<float>().data(), B, N, M,
                 yt->flat<float>().data(), amaxt->flat<int32_t>().data(),
                 amint->flat<int32_t>().data());
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
    const int64_t bad = mam::first_bad_index(amax, amin, B * M, N);
    OP_REQUIRES(ctx, bad < 0,
                InvalidArgument("MAM fused backward: index out of range at flat position ", bad,
                                ": amax ", amax[bad], ", amin ", amin[bad], ", inputs ", N));
    Tensor *dxt, *dwt;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, xt.shape(), &dxt));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, wt.shape(), &dwt));
    TfPool pool(ctx);
    mam::backward(pool, g, x, w, amax, amin, B, N, M, dxt->flat<float>().data(),
                  dwt->flat<float>().data());
  }
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("MamFusedForward").Device(tensorflow::DEVICE_CPU), MamFusedForwardOp);
REGISTER_KERNEL_BUILDER(Name("MamFusedBackward").Device(tensorflow::DEVICE_CPU),
                        MamFusedBackwardOp);
