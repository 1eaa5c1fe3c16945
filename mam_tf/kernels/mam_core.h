// The fused MAM core: forward (value, argmax and argmin in one pass) and backward (a scatter
// from the indices).
//
// No TensorFlow here: the op glue (mam_ops.cc) validates, allocates and splits the work into
// independent pieces; every number is computed by this header. Semantics are MAM_SPARSE.md
// section 1: y[b,j] = max_i(x[b,i]*w[i,j]) + min_i(x[b,i]*w[i,j]), ties go to the LOWEST i,
// and a pair with argmax == argmin receives its gradient twice.
//
// Layouts (Keras): x [B, N] row-major, w [N, M] row-major, y, amax, amin and g [B, M].
//
// Exactness: a product is one float multiply (the build passes -ffp-contract=off so that no
// multiply is fused into an add), max and min are exact, y is one float add: the forward is
// bit-identical to any reference that multiplies, then reduces. The backward adds its terms,
// each one product g[b,j] * x[b,i] (for dw) or g[b,j] * w[i,j] (for dx), to a zero in a fixed
// order, independent of the thread count: first every max term, then every min term, each pass
// in row-major (b, j) order. That is the order of the reference's unsorted_segment_sum over
// [max terms; min terms] on the CPU, so the fused gradients equal the reference's bit for bit.
// NaN: the comparisons skip NaN products, so the indices are the lowest extremes among the
// others (always in [0, N): the backward never reads out of bounds), and propagate_nan_rows
// then sets y to NaN wherever a NaN product was skipped, as TensorFlow's max and min do.
#ifndef MAM_TF_KERNELS_MAM_CORE_H_
#define MAM_TF_KERNELS_MAM_CORE_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

namespace mam {

// The widest float vector of the build target (the build uses -march=native). GCC/Clang vector
// extensions keep one source for every target; the compiler picks the instructions.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
typedef float VF __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t VI __attribute__((vector_size(kLanes * sizeof(int32_t))));

// Tile sizes, measured on AVX2 (Zen 3): the column block is kVecs vectors (16 floats, one
// 64-byte line of w), each load of w serves kRows rows of x.
constexpr int kVecs = 2;
constexpr int kBlock = kVecs * kLanes;
constexpr int kRows = 2;
// Inputs per packed slice of w: [kChunk, kBlock] floats (8 KiB with AVX2) stay in L1 while
// every row of a work item passes over them.
constexpr int64_t kChunk = 128;
// Inputs per step of the value-only loop; see forward_tile.
constexpr int64_t kStep = 16;

struct ForwardState {  // running max/min and their indices for one row and one column block
  VF mx[kVecs], mn[kVecs];
  VI ix[kVecs], in[kVecs];
};

// A broadcast that keeps the sign of zero: s - (+0) is s for every s, where 0 + s would turn
// -0 into +0; compilers fold it to a plain broadcast.
static inline VF splat(float s) { return s - VF{}; }

// An unaligned vector load. (memcpy into a whole array of vectors instead makes GCC copy through
// the stack, with a store-forwarding stall on every load: 5x slower.)
static inline VF load(const float* p) {
  VF v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

static inline bool any_lane(VI m) {
  uint64_t u[sizeof(VI) / sizeof(uint64_t)];
  std::memcpy(u, &m, sizeof m);
  uint64_t o = 0;
  for (uint64_t v : u) o |= v;
  return o != 0;
}

// One row of x against one packed slice `w` ([i1 - i0, kBlock]) over inputs [i0, i1),
// tracking the index of every candidate: a multiply, then a compare and two blends for the max
// and again for the min. Used where most candidates still improve the running extremes (the
// first inputs of a row), where forward_tile would search nearly every step. One row at a time:
// two rows need more vector registers than AVX2 has.
static inline void forward_tile_tracking(const float* x, const float* w, int64_t i0, int64_t i1,
                                         ForwardState* st) {
  VF mx[kVecs], mn[kVecs];
  VI ix[kVecs], in[kVecs];
  for (int v = 0; v < kVecs; ++v) {
    mx[v] = st->mx[v];
    mn[v] = st->mn[v];
    ix[v] = st->ix[v];
    in[v] = st->in[v];
  }
  VI iv = VI{} + static_cast<int32_t>(i0);
  for (int64_t i = i0; i < i1; ++i) {
    VF wv[kVecs];
    for (int v = 0; v < kVecs; ++v) wv[v] = load(w + (i - i0) * kBlock + v * kLanes);
    const VF xb = splat(x[i]);
    for (int v = 0; v < kVecs; ++v) {
      const VF p = xb * wv[v];
      const VI gt = p > mx[v];
      const VI lt = p < mn[v];
      mx[v] = gt ? p : mx[v];
      ix[v] = gt ? iv : ix[v];
      mn[v] = lt ? p : mn[v];
      in[v] = lt ? iv : in[v];
    }
    iv += 1;
  }
  for (int v = 0; v < kVecs; ++v) {
    st->mx[v] = mx[v];
    st->mn[v] = mn[v];
    st->ix[v] = ix[v];
    st->in[v] = in[v];
  }
}

// `R` rows of x (row stride ldx) against one packed slice `w` ([i1 - i0, kBlock]) over inputs
// [i0, i1), updating the running state of those rows.
//
// Tracking the index of every candidate costs two compares and two blends per product on top
// of the multiply. Instead each step of kStep inputs computes only max and min values
// (multiply, max, min), and the indices are searched again in the rare steps where a lane's
// running max or min improves (on random data a few percent of steps after the first few; a
// monotone input makes every step a search: slower, never wrong). Comparisons are
// strict and steps ascend, so the lowest index wins every tie; inside a step the search takes
// the first input whose product equals the step's extreme.
template <int R>
static inline void forward_tile(const float* x, int64_t ldx, const float* w, int64_t i0,
                                int64_t i1, ForwardState* st) {
  const float inf = std::numeric_limits<float>::infinity();
  for (int64_t s0 = i0; s0 < i1; s0 += kStep) {
    const int64_t s1 = std::min(i1, s0 + kStep);
    const float* ws = w + (s0 - i0) * kBlock;
    VF cmx[R][kVecs], cmn[R][kVecs];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < kVecs; ++v) {
        cmx[r][v] = splat(-inf);
        cmn[r][v] = splat(inf);
      }
    for (int64_t i = s0; i < s1; ++i) {
      VF wv[kVecs];
      for (int v = 0; v < kVecs; ++v) wv[v] = load(ws + (i - s0) * kBlock + v * kLanes);
      for (int r = 0; r < R; ++r) {
        const VF xb = splat(x[r * ldx + i]);
        for (int v = 0; v < kVecs; ++v) {
          const VF p = xb * wv[v];
          cmx[r][v] = p > cmx[r][v] ? p : cmx[r][v];
          cmn[r][v] = p < cmn[r][v] ? p : cmn[r][v];
        }
      }
    }
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < kVecs; ++v) {
        const VI up = cmx[r][v] > st[r].mx[v];
        const VI dn = cmn[r][v] < st[r].mn[v];
        if (__builtin_expect(!any_lane(up | dn), 1)) continue;
        VI fx = VI{} - 1;  // -1: not found yet
        VI fn = fx;
        VI iv = VI{} + static_cast<int32_t>(s0);
        for (int64_t i = s0; i < s1; ++i) {
          const VF p = splat(x[r * ldx + i]) * load(ws + (i - s0) * kBlock + v * kLanes);
          fx = ((p == cmx[r][v]) & (fx < 0)) ? iv : fx;
          fn = ((p == cmn[r][v]) & (fn < 0)) ? iv : fn;
          iv += 1;
        }
        st[r].mx[v] = up ? cmx[r][v] : st[r].mx[v];
        st[r].ix[v] = up ? fx : st[r].ix[v];
        st[r].mn[v] = dn ? cmn[r][v] : st[r].mn[v];
        st[r].in[v] = dn ? fn : st[r].in[v];
      }
  }
}

// Scratch for forward_rows: the packed slice and the running states of up to kMaxRows rows.
constexpr int64_t kMaxRows = 16;
struct ForwardScratch {
  alignas(64) float w[kChunk * kBlock];
  ForwardState st[kMaxRows];
};

// Rows [b0, b1) of x (b1 - b0 <= kMaxRows) against columns [j0, j0 + ncols) of w
// (ncols <= kBlock). Writes y, amax and amin at [b, j0 .. j0 + ncols).
static void forward_rows(const float* x, const float* w, int64_t N, int64_t M, int64_t b0,
                         int64_t b1, int64_t j0, int ncols, ForwardScratch* s, float* y,
                         int32_t* amax, int32_t* amin) {
  const float inf = std::numeric_limits<float>::infinity();
  const int64_t rows = b1 - b0;
  for (int64_t r = 0; r < rows; ++r)
    for (int v = 0; v < kVecs; ++v) {
      s->st[r].mx[v] = splat(-inf);
      s->st[r].mn[v] = splat(inf);
      s->st[r].ix[v] = VI{};
      s->st[r].in[v] = VI{};
    }
  for (int64_t i0 = 0; i0 < N; i0 += kChunk) {
    const int64_t i1 = std::min(N, i0 + kChunk);
    // Packing makes the slice contiguous (w's rows are M floats apart, which maps a column
    // block onto few L1 sets) and zero-pads a partial block so every load is in bounds.
    for (int64_t i = i0; i < i1; ++i) {
      float* d = s->w + (i - i0) * kBlock;
      std::memcpy(d, w + i * M + j0, ncols * sizeof(float));
      if (ncols < kBlock) std::memset(d + ncols, 0, (kBlock - ncols) * sizeof(float));
    }
    int64_t r = 0;
    if (i0 == 0) {  // the first slice: nearly every step would search
      for (; r < rows; ++r) forward_tile_tracking(x + (b0 + r) * N, s->w, i0, i1, s->st + r);
    }
    for (; r + kRows <= rows; r += kRows)
      forward_tile<kRows>(x + (b0 + r) * N, N, s->w, i0, i1, s->st + r);
    for (; r < rows; ++r) forward_tile<1>(x + (b0 + r) * N, N, s->w, i0, i1, s->st + r);
  }
  for (int64_t r = 0; r < rows; ++r) {
    float mx[kBlock], mn[kBlock];
    int32_t ix[kBlock], in[kBlock];
    std::memcpy(mx, s->st[r].mx, sizeof mx);
    std::memcpy(mn, s->st[r].mn, sizeof mn);
    std::memcpy(ix, s->st[r].ix, sizeof ix);
    std::memcpy(in, s->st[r].in, sizeof in);
    const int64_t o = (b0 + r) * M + j0;
    for (int c = 0; c < ncols; ++c) {
      y[o + c] = mx[c] + mn[c];
      amax[o + c] = ix[c];
      amin[o + c] = in[c];
    }
  }
}

// Adds the gradient of columns [j0, j1) into dw (zero there on entry), in the documented order:
// every max term (rows ascending), then every min term (rows ascending).
static void backward_dw_cols(const float* g, const float* x, const int32_t* amax,
                             const int32_t* amin, int64_t B, int64_t N, int64_t M, int64_t j0,
                             int64_t j1, float* dw) {
  for (const int32_t* idx : {amax, amin}) {
    for (int64_t b = 0; b < B; ++b) {
      const float* gb = g + b * M;
      const float* xb = x + b * N;
      const int32_t* ib = idx + b * M;
      for (int64_t j = j0; j < j1; ++j) dw[ib[j] * M + j] += gb[j] * xb[ib[j]];
    }
  }
}

// Writes dx for rows [b0, b1): zero, then every max term (units ascending), then every min term.
static void backward_dx_rows(const float* g, const float* w, const int32_t* amax,
                             const int32_t* amin, int64_t N, int64_t M, int64_t b0, int64_t b1,
                             float* dx) {
  for (int64_t b = b0; b < b1; ++b) {
    const float* gb = g + b * M;
    float* dxb = dx + b * N;
    std::memset(dxb, 0, N * sizeof(float));
    for (const int32_t* idx : {amax, amin}) {
      const int32_t* ib = idx + b * M;
      for (int64_t j = 0; j < M; ++j) dxb[ib[j]] += gb[j] * w[ib[j] * M + j];
    }
  }
}

// Whether any of the n values is NaN or infinite (v * 0 is 0 exactly for the finite ones).
static bool any_nonfinite(const float* v, int64_t n) {
  VI bad = VI{};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) bad |= (load(v + k) * 0.0f) != 0.0f;
  bool tail = false;
  for (; k < n; ++k) tail |= (v[k] * 0.0f) != 0.0f;
  return tail || any_lane(bad);
}

// Sets y[b, j] = NaN for rows [b0, b1) where some product x[b,i] * w[i,j] is NaN. The main
// pass skips NaN products; max and min of TensorFlow propagate them, and so must a MAM output
// (a NaN input must not train on silently). Only run when the inputs hold a NaN or an infinity.
static void propagate_nan_rows(const float* x, const float* w, int64_t N, int64_t M,
                               int64_t b0, int64_t b1, float* y) {
  for (int64_t b = b0; b < b1; ++b) {
    float* yb = y + b * M;
    for (int64_t i = 0; i < N; ++i) {
      const float xv = x[b * N + i];
      const float* wi = w + i * M;
      for (int64_t j = 0; j < M; ++j) {
        const float p = xv * wi[j];
        if (p != p) yb[j] = p;
      }
    }
  }
}

}  // namespace mam

#endif  // MAM_TF_KERNELS_MAM_CORE_H_
