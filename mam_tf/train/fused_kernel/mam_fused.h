// The fused MAM core: forward (value, argmax and argmin in one pass) and backward (a scatter
// from the indices).
//
// No TensorFlow here: the op glue (mam_fused_op.cc) validates, allocates and splits the work into
// independent pieces; every number is computed by this header. Semantics are
// docs/operator-contract.md section 1: y[b,j] = max_i(x[b,i]*w[i,j]) + min_i(x[b,i]*w[i,j]),
// ties go to the LOWEST i, and a pair with argmax == argmin receives its gradient twice.
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

#if defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

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

// Register tiles: a column block is kVecs vectors (kBlock floats of w) and each load of w serves
// kRows rows of x. The value loop holds 2 * kRows * kVecs running extremes in registers: with
// AVX-512's 32 vector registers 4 rows x 2 vectors (16 + 2 for w + 1 for x), with AVX2's 16 two
// rows. Index tracking needs twice the registers per row: half the rows.
constexpr int kVecs = 2;
constexpr int kBlock = kVecs * kLanes;
#if defined(__AVX512F__)
constexpr int kRows = 4;
constexpr int kTrackRows = 2;
#else
constexpr int kRows = 2;
constexpr int kTrackRows = 1;
#endif
// Inputs per packed slice of w: [kChunk, kBlock] floats (16 KiB with AVX-512, 8 KiB with AVX2)
// stay in L1 while every row of a work item passes over them.
constexpr int64_t kChunk = 128;
// Inputs per step of the value-only loop; see forward_tile.
constexpr int64_t kStep = 16;
// Inputs per group of the value loop's bound test; see forward_tile_bounded.
constexpr int64_t kGroup = 4;

struct ForwardState {  // running max/min and their indices for one row and one column block
  VF mx[kVecs], mn[kVecs];
  VI ix[kVecs], in[kVecs];
};

// A broadcast that keeps the sign of zero: s - (+0) is s for every s, where 0 + s would turn
// -0 into +0; compilers fold it to a plain broadcast.
static inline VF splat(float s) { return s - VF{}; }

// An unaligned vector load. (memcpy into a whole array of vectors instead makes GCC copy through
// the stack, with a store-forwarding stall on every load.)
static inline VF load(const float* p) {
  VF v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

static inline bool any_lane(VI m) {
#if defined(__AVX512F__)
  return _mm512_test_epi32_mask((__m512i)(m), (__m512i)(m)) != 0;
#elif defined(__AVX__)
  return !_mm256_testz_si256((__m256i)(m), (__m256i)(m));
#else
  uint64_t u[sizeof(VI) / sizeof(uint64_t)];
  std::memcpy(u, &m, sizeof m);
  uint64_t o = 0;
  for (uint64_t v : u) o |= v;
  return o != 0;
#endif
}

// The lanes of a mask (all bits of a lane set or clear) that are set, as bits (lane k: bit k).
static inline uint32_t lane_bits(VI m) {
#if defined(__AVX512F__)
  return _mm512_test_epi32_mask((__m512i)(m), (__m512i)(m));
#elif defined(__AVX__)
  return _mm256_movemask_ps((__m256)(m));
#else
  uint32_t bits = 0;
  for (int k = 0; k < kLanes; ++k) bits |= (m[k] != 0 ? 1u : 0u) << k;
  return bits;
#endif
}

// The lanes where a > b, as bits (lane k: bit k). On AVX-512 one compare into a mask register,
// where the generic form materialises a vector mask first.
static inline uint32_t gt_bits(VF a, VF b) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask((__m512)(a), (__m512)(b), _CMP_GT_OQ);
#elif defined(__AVX__)
  return _mm256_movemask_ps(_mm256_cmp_ps((__m256)(a), (__m256)(b), _CMP_GT_OQ));
#else
  const VI m = a > b;
  uint32_t bits = 0;
  for (int k = 0; k < kLanes; ++k) bits |= (m[k] != 0 ? 1u : 0u) << k;
  return bits;
#endif
}

// The larger of a product p and a running maximum a: p if p > a (strictly, so the earlier of
// equal values stays), else a. kIntMax compares the bit patterns as signed integers instead,
// which is the same order when a is +0 or positive (a float's bits order as a signed integer
// among non-negative values, and a negative p, -0 included, is below every such a in both
// orders; bits equal exactly when the floats are equal, as +0 and -0 never meet here) and when
// no product is NaN. The integer max issues on more execution ports than the float max on
// common x86 cores (the multiply and the float min take the others), so the loop goes faster.
template <bool kIntMax>
static inline VF max_step(VF p, VF a) {
  if (kIntMax) {
#if defined(__AVX512F__)
    return (VF)(_mm512_max_epi32((__m512i)(a),
                                                 (__m512i)(p)));
#elif defined(__AVX2__)
    return (VF)(_mm256_max_epi32((__m256i)(a),
                                                 (__m256i)(p)));
#else
    const VI pi = (VI)(p), ai = (VI)(a);
    return (VF)(pi > ai ? pi : ai);
#endif
  }
  return p > a ? p : a;
}

// The running max and min updated by one product p: p if p > a (strictly, so the earlier of
// equal values stays; a NaN p never), else a; likewise for the min. On x86 one max/min
// instruction, which is exactly this (it returns its second operand when the operands are equal
// or unordered), where a compare-and-blend would take the same ports as the index updates.
static inline VF keep_max(VF p, VF a) {
#if defined(__AVX512F__)
  return (VF)(_mm512_max_ps((__m512)(p), (__m512)(a)));
#elif defined(__AVX__)
  return (VF)(_mm256_max_ps((__m256)(p), (__m256)(a)));
#else
  return p > a ? p : a;
#endif
}
static inline VF keep_min(VF p, VF a) {
#if defined(__AVX512F__)
  return (VF)(_mm512_min_ps((__m512)(p), (__m512)(a)));
#elif defined(__AVX__)
  return (VF)(_mm256_min_ps((__m256)(p), (__m256)(a)));
#else
  return p < a ? p : a;
#endif
}

// R rows of x (row stride ldx) against one packed slice `w` ([i1 - i0, kBlock]) over inputs
// [i0, i1), tracking the index of every candidate: a multiply, then a compare, a max and an
// index blend for the max and again for the min. Used where many candidates still improve the
// running extremes (the first slices of a row; keep_tracking decides), where forward_tile
// would search most steps. kInit: start from the empty state (-inf, +inf, index 0) instead of
// reading st.
// out: when not null (the slice is the whole row, i0 == 0 and i1 == N, and the block has
// kBlock columns), y, amax and amin of row r are written at out->y + r * out->ld (and the same
// offset of amax and amin) instead of the state, which saves its round trip through memory.
struct TileOut {
  float* y;
  int32_t* amax;
  int32_t* amin;
  int64_t ld;
};

template <int R, bool kInit>
static inline void forward_tile_tracking(const float* x, int64_t ldx, const float* w, int64_t i0,
                                         int64_t i1, ForwardState* st,
                                         const TileOut* out = nullptr) {
  VF mx[R][kVecs], mn[R][kVecs];
  VI ix[R][kVecs], in[R][kVecs];
  const float inf = std::numeric_limits<float>::infinity();
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < kVecs; ++v) {
      mx[r][v] = kInit ? splat(-inf) : st[r].mx[v];
      mn[r][v] = kInit ? splat(inf) : st[r].mn[v];
      ix[r][v] = kInit ? VI{} : st[r].ix[v];
      in[r][v] = kInit ? VI{} : st[r].in[v];
    }
  VI iv = VI{} + static_cast<int32_t>(i0);
  for (int64_t i = i0; i < i1; ++i) {
    VF wv[kVecs];
    for (int v = 0; v < kVecs; ++v) wv[v] = load(w + (i - i0) * kBlock + v * kLanes);
    for (int r = 0; r < R; ++r) {
      const VF xb = splat(x[r * ldx + i]);
      for (int v = 0; v < kVecs; ++v) {
        const VF p = xb * wv[v];
#if defined(__AVX512F__)
        // The compares straight into mask registers: the generic form below makes GCC copy
        // both extremes every product.
        const __mmask16 gt = _mm512_cmp_ps_mask((__m512)(p), (__m512)(mx[r][v]), _CMP_GT_OQ);
        const __mmask16 lt = _mm512_cmp_ps_mask((__m512)(p), (__m512)(mn[r][v]), _CMP_LT_OQ);
        mx[r][v] = keep_max(p, mx[r][v]);
        ix[r][v] = (VI)(_mm512_mask_mov_epi32((__m512i)(ix[r][v]), gt, (__m512i)(iv)));
        mn[r][v] = keep_min(p, mn[r][v]);
        in[r][v] = (VI)(_mm512_mask_mov_epi32((__m512i)(in[r][v]), lt, (__m512i)(iv)));
#else
        const VI gt = p > mx[r][v];
        const VI lt = p < mn[r][v];
        mx[r][v] = keep_max(p, mx[r][v]);
        ix[r][v] = gt ? iv : ix[r][v];
        mn[r][v] = keep_min(p, mn[r][v]);
        in[r][v] = lt ? iv : in[r][v];
#endif
      }
    }
    iv += 1;
  }
  if (out != nullptr) {
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < kVecs; ++v) {
        const int64_t o = r * out->ld + v * kLanes;
        const VF yv = mx[r][v] + mn[r][v];
        std::memcpy(out->y + o, &yv, sizeof yv);
        std::memcpy(out->amax + o, &ix[r][v], sizeof(VI));
        std::memcpy(out->amin + o, &in[r][v], sizeof(VI));
      }
    return;
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < kVecs; ++v) {
      st[r].mx[v] = mx[r][v];
      st[r].mn[v] = mn[r][v];
      st[r].ix[v] = ix[r][v];
      st[r].in[v] = in[r][v];
    }
}

// The lowest input i in [s0, s1) whose product x[i] * ws[(i - s0) * kBlock + k] equals t (there
// is one). On AVX-512 (kStep == kLanes) the step's products of lane k in one vector: a load of x,
// a gather of the lane's column of the slice and one compare, no branch to mispredict.
static inline int64_t find_in_lane(const float* x, const float* ws, int64_t s0, int64_t s1,
                                   int k, float t) {
#if defined(__AVX512F__)
  if (kStep == kLanes) {
    const __mmask16 valid = static_cast<__mmask16>((1u << (s1 - s0)) - 1u);
    const __m512i rows = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(kBlock));
    const __m512 xv = _mm512_maskz_loadu_ps(valid, x + s0);
    const __m512 wv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, rows, ws + k, 4);
    const __mmask16 eq = _mm512_mask_cmp_ps_mask(valid, _mm512_mul_ps(xv, wv),
                                                 _mm512_set1_ps(t), _CMP_EQ_OQ);
    return s0 + __builtin_ctz(eq);
  }
#endif
  int64_t i = s0;
  while (x[i] * ws[(i - s0) * kBlock + k] != t) ++i;
  return i;
}

// The step [s0, s1) of one row x against one vector of the packed slice (ws: its first input)
// ended with the running extremes mx and mn, which improved on the state in the lanes ub (max)
// and db (min): store the new extremes and, for those lanes, the lowest index whose product
// equals the new extreme (every improved lane has one: its new extreme is one of the step's
// products). Few lanes (the common case after the first steps) are searched one by one; more
// at once as vectors, from the step's last input down, so that the last match written is the
// lowest index.
__attribute__((noinline, cold)) static void search_step(const float* x, const float* ws,
                                                        int64_t s0, int64_t s1, VF mx, VF mn,
                                                        uint32_t ub, uint32_t db, VF* st_mx,
                                                        VI* st_ix, VF* st_mn, VI* st_in) {
  *st_mx = mx;
  *st_mn = mn;
  if (__builtin_popcount(ub) + __builtin_popcount(db) <= 3) {
    for (int pass = 0; pass < 2; ++pass) {
      const VF target = pass == 0 ? mx : mn;
      char* index = reinterpret_cast<char*>(pass == 0 ? st_ix : st_in);
      for (uint32_t bits = pass == 0 ? ub : db; bits != 0; bits &= bits - 1) {
        const int k = __builtin_ctz(bits);
        const int32_t i = static_cast<int32_t>(find_in_lane(x, ws, s0, s1, k, target[k]));
        std::memcpy(index + k * sizeof(int32_t), &i, sizeof i);
      }
    }
    return;
  }
  VI fx = VI{}, fn = VI{};
  VI iv = VI{} + static_cast<int32_t>(s1 - 1);
  for (int64_t i = s1 - 1; i >= s0; --i) {
    const VF p = splat(x[i]) * load(ws + (i - s0) * kBlock);
    fx = p == mx ? iv : fx;
    fn = p == mn ? iv : fn;
    iv -= 1;
  }
  VI up = VI{}, dn = VI{};
  for (int k = 0; k < kLanes; ++k) {
    up[k] = -static_cast<int32_t>((ub >> k) & 1u);
    dn[k] = -static_cast<int32_t>((db >> k) & 1u);
  }
  *st_ix = up ? fx : *st_ix;
  *st_in = dn ? fn : *st_in;
}

// R rows of x (row stride ldx) against one packed slice `w` ([i1 - i0, kBlock]) over inputs
// [i0, i1), updating the running state of those rows.
//
// Tracking the index of every candidate costs two compares and two blends per product on top
// of the multiply. Instead the loop computes only max and min values (multiply, max, min) into
// running extremes held in registers, and after each step of kStep inputs compares them with
// the state: in the rare steps where a lane's max or min improved (on random data a few
// percent of steps after the first few; a monotone input makes every step a search: slower,
// never wrong) that row and vector is searched again, from the step's last input down, for
// the lowest index whose product equals the new extreme. Comparisons are strict and steps
// ascend, so the lowest index wins every tie.
//
// x_next: the x that the next call reads for its inputs [i0, i1) (the next rows), prefetched
// step by step: a row of x is read 128 inputs at a time, too briefly for the hardware prefetcher
// to follow it out of L3.
template <int R, bool kIntMax>
static inline void forward_tile(const float* x, int64_t ldx, const float* w, int64_t i0,
                                int64_t i1, ForwardState* st, const float* x_next) {
  VF amx[R][kVecs], amn[R][kVecs];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < kVecs; ++v) {
      amx[r][v] = st[r].mx[v];
      amn[r][v] = st[r].mn[v];
    }
  for (int64_t s0 = i0; s0 < i1; s0 += kStep) {
    const int64_t s1 = std::min(i1, s0 + kStep);
    const float* ws = w + (s0 - i0) * kBlock;
    for (int r = 0; r < R; ++r) __builtin_prefetch(x_next + r * ldx + s0);
    for (int64_t i = s0; i < s1; ++i) {
      VF wv[kVecs];
      for (int v = 0; v < kVecs; ++v) wv[v] = load(ws + (i - s0) * kBlock + v * kLanes);
      for (int r = 0; r < R; ++r) {
        const VF xb = splat(x[r * ldx + i]);
        for (int v = 0; v < kVecs; ++v) {
          const VF p = xb * wv[v];
          amx[r][v] = max_step<kIntMax>(p, amx[r][v]);
          amn[r][v] = p < amn[r][v] ? p : amn[r][v];
        }
      }
    }
    uint32_t ub[R][kVecs], db[R][kVecs], changed = 0;
    // Unrolled: the extremes stay in registers (an indexed access would keep them in memory).
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < kVecs; ++v) {
        ub[r][v] = gt_bits(amx[r][v], st[r].mx[v]);
        db[r][v] = gt_bits(st[r].mn[v], amn[r][v]);
        changed |= ub[r][v] | db[r][v];
      }
    if (__builtin_expect(changed == 0, 1)) continue;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < kVecs; ++v)
        if (ub[r][v] | db[r][v])
          search_step(x + r * ldx, ws + v * kLanes, s0, s1, amx[r][v], amn[r][v], ub[r][v],
                      db[r][v], &st[r].mx[v], &st[r].ix[v], &st[r].mn[v], &st[r].in[v]);
  }
}

#if defined(__AVX512F__)
// Rows of a bounded tile: the (row, group) pairs of a step fill one test vector.
constexpr int kBoundRows = kLanes / (kStep / kGroup);
static_assert(kBoundRows == kRows, "a bounded tile replaces a value-loop tile");
// After a slice where the bound test saved too little, the next kBoundRest slices run
// forward_tile, twice as many after each further such slice, at most kBoundRestMax.
constexpr int64_t kBoundRest = 4;
constexpr int64_t kBoundRestMax = 64;

// forward_tile<kRows, true> (the integer-max form: finite inputs, running max >= +0) that skips
// the groups of kGroup inputs whose products cannot change the running extremes.
//
// For row r and group g of a step, X = max |x| over the group's inputs and W = wgroup's max |w|
// over its kGroup x kBlock weights bound every product: |x * w| <= X * W, and rounding to float
// is monotone, so |fl(x * w)| <= fl(X * W). The row's floor F is the least of max and -min over
// its valid columns (ncols). If fl(X * W) < F, every product of the group is strictly below
// every running max and strictly above every running min: no extreme and no index changes (a
// tie would not either: the earlier index wins), and the group is skipped. Random and trained
// data let a test skip most groups once a row's extremes have grown (past the tracked slices);
// one vector multiply and compare test all (row, group) pairs of a step. The groups left run
// one after another, their row's extremes in memory (a loop per row would mispredict once per
// row), then the usual check and search of the rows that ran. A row's floor is recomputed when
// its extremes changed; an older, lower floor only skips less. A NaN or infinite bound never
// skips (the compare is "not less than", true when unordered). Adds the number of groups that
// ran to *ran.
static inline void forward_tile_bounded(const float* x, int64_t ldx, const float* w,
                                        const VF* wgroup, int ncols, int64_t i0, int64_t i1,
                                        ForwardState* st, const float* x_next, int64_t* ran) {
  constexpr int R = kBoundRows;
  constexpr int G = kStep / kGroup;
  alignas(64) VF cmx[R][kVecs], cmn[R][kVecs];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < kVecs; ++v) {
      cmx[r][v] = st[r].mx[v];
      cmn[r][v] = st[r].mn[v];
    }
  const float inf = std::numeric_limits<float>::infinity();
  auto row_floor = [&](int r) {
    __m512 f = _mm512_set1_ps(inf);
    for (int v = 0; v < kVecs; ++v) {
      const int valid = std::max(0, std::min(kLanes, ncols - v * kLanes));
      const __mmask16 lanes = static_cast<__mmask16>((1u << valid) - 1u);
      const VF m = keep_min(cmx[r][v], -cmn[r][v]);
      f = _mm512_mask_min_ps(f, lanes, f, (__m512)(m));
    }
    return _mm512_set1_ps(_mm512_reduce_min_ps(f));
  };
  auto row_lanes = [](int r) { return static_cast<__mmask16>(((1u << G) - 1u) << (r * G)); };
  __m512 floor = _mm512_setzero_ps();
  for (int r = 0; r < R; ++r) floor = _mm512_mask_mov_ps(floor, row_lanes(r), row_floor(r));
  const __m512 abs_bits = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  // Lane r * G + g of the test vector <- lane g * kGroup of row r's group maxima.
  const __m512i pick_pairs =
      _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i pick_halves =
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
  for (int64_t s0 = i0; s0 < i1; s0 += kStep) {
    const int64_t s1 = std::min(i1, s0 + kStep);
    const float* ws = w + (s0 - i0) * kBlock;
    for (int r = 0; r < R; ++r) __builtin_prefetch(x_next + r * ldx + s0);
    uint32_t left = 0;  // bit r * G + g: group g of row r runs
    uint32_t rows = 0;  // bit r: row r ran some group
    if (s1 - s0 == kStep) {
      __m512 gx[R];
      for (int r = 0; r < R; ++r) {
        __m512 a = _mm512_and_ps(_mm512_loadu_ps(x + r * ldx + s0), abs_bits);
        a = _mm512_max_ps(a, _mm512_permute_ps(a, 0xb1));  // lanes k and k ^ 1
        gx[r] = _mm512_max_ps(a, _mm512_permute_ps(a, 0x4e));  // and k ^ 2: the group's max
      }
      const __m512 lo = _mm512_permutex2var_ps(gx[0], pick_pairs, gx[1]);
      const __m512 hi = _mm512_permutex2var_ps(gx[2], pick_pairs, gx[3]);
      const __m512 bound = _mm512_mul_ps(_mm512_permutex2var_ps(lo, pick_halves, hi),
                                         (__m512)(wgroup[(s0 - i0) / kStep]));
      left = _mm512_cmp_ps_mask(bound, floor, _CMP_NLT_UQ);
      *ran += __builtin_popcount(left);
      if (left == 0) continue;
    } else {  // a partial step, the slice's last: every product
      rows = (1u << R) - 1u;
      *ran += R * G;
      for (int64_t i = s0; i < s1; ++i)
        for (int r = 0; r < R; ++r) {
          const VF xb = splat(x[r * ldx + i]);
          for (int v = 0; v < kVecs; ++v) {
            const VF p = xb * load(ws + (i - s0) * kBlock + v * kLanes);
            cmx[r][v] = max_step<true>(p, cmx[r][v]);
            cmn[r][v] = p < cmn[r][v] ? p : cmn[r][v];
          }
        }
    }
    for (; left != 0; left &= left - 1) {
      const int k = __builtin_ctz(left);
      const int r = k / G;
      rows |= 1u << r;
      const int64_t g0 = s0 + (k % G) * kGroup;
      VF mx[kVecs], mn[kVecs];
      for (int v = 0; v < kVecs; ++v) {
        mx[v] = cmx[r][v];
        mn[v] = cmn[r][v];
      }
      for (int64_t i = g0; i < g0 + kGroup; ++i) {
        const VF xb = splat(x[r * ldx + i]);
        for (int v = 0; v < kVecs; ++v) {
          const VF p = xb * load(ws + (i - s0) * kBlock + v * kLanes);
          mx[v] = max_step<true>(p, mx[v]);
          mn[v] = p < mn[v] ? p : mn[v];
        }
      }
      for (int v = 0; v < kVecs; ++v) {
        cmx[r][v] = mx[v];
        cmn[r][v] = mn[v];
      }
    }
    for (; rows != 0; rows &= rows - 1) {
      const int r = __builtin_ctz(rows);
      uint32_t ub[kVecs], db[kVecs], changed = 0;
      for (int v = 0; v < kVecs; ++v) {
        ub[v] = gt_bits(cmx[r][v], st[r].mx[v]);
        db[v] = gt_bits(st[r].mn[v], cmn[r][v]);
        changed |= ub[v] | db[v];
      }
      if (__builtin_expect(changed == 0, 1)) continue;
      for (int v = 0; v < kVecs; ++v)
        if (ub[v] | db[v])
          search_step(x + r * ldx, ws + v * kLanes, s0, s1, cmx[r][v], cmn[r][v], ub[v], db[v],
                      &st[r].mx[v], &st[r].ix[v], &st[r].mn[v], &st[r].in[v]);
      floor = _mm512_mask_mov_ps(floor, row_lanes(r), row_floor(r));
    }
  }
}
#endif

// Whether the n floats at v are all finite: v * 0 is 0 for finite v and NaN otherwise, so the
// sum of those is 0 or NaN. (Four sums: one would be a chain of dependent adds.)
static inline bool all_finite(const float* v, int64_t n) {
  VF acc = VF{}, a1 = VF{}, a2 = VF{}, a3 = VF{};
  int64_t k = 0;
  for (; k + 4 * kLanes <= n; k += 4 * kLanes) {
    acc += load(v + k) * 0.0f;
    a1 += load(v + k + kLanes) * 0.0f;
    a2 += load(v + k + 2 * kLanes) * 0.0f;
    a3 += load(v + k + 3 * kLanes) * 0.0f;
  }
  acc += a1 + a2 + a3;
  for (; k + kLanes <= n; k += kLanes) acc += load(v + k) * 0.0f;
  float tail = 0.0f;
  for (; k < n; ++k) tail += v[k] * 0.0f;
  return !any_lane(acc != acc) && tail == tail;
}

// Whether every lane of the running max of rows st[0 .. R) is +0 or positive (sign bit clear),
// the precondition of max_step<true>.
template <int R>
static inline bool max_sign_clear(const ForwardState* st) {
  VI neg = VI{};
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < kVecs; ++v) neg |= (VI)(st[r].mx[v]) < 0;
  return !any_lane(neg);
}

// Scratch for forward_block: the packed slice of w and its group maxima.
struct ForwardScratch {
  alignas(64) float w[kChunk * kBlock];
  // Per step of the slice, for forward_tile_bounded: lane r * (kStep / kGroup) + g (every r)
  // holds the largest |w| of the step's group g (kGroup inputs x kBlock columns).
  VF wgroup[kChunk / kStep];
};

// Runs R rows (their x at x, row stride N, state st) over one packed slice: with index
// tracking if `track` (always for the first slice, i0 == 0, which starts the state; with `out`
// (see forward_tile_tracking) it is also the last and writes the outputs), else the value loop,
// in the integer-max form where that is exact (finite inputs, running max >= +0), with the
// bound test where `wgroup` is given (then *ran counts the groups that ran). Returns false when
// some x in the slice is not finite.
template <int R>
static inline bool forward_slice(const float* x, int64_t N, const float* w, int64_t i0,
                                 int64_t i1, bool w_finite, bool track, ForwardState* st,
                                 const float* x_next, const TileOut* out,
                                 const VF* wgroup = nullptr, int ncols = 0,
                                 int64_t* ran = nullptr) {
  bool finite = w_finite;
  for (int r = 0; r < R; ++r) finite &= all_finite(x + r * N + i0, i1 - i0);
  if (i0 == 0) {
    forward_tile_tracking<R, true>(x, N, w, i0, i1, st, out);
  } else if (track) {
    forward_tile_tracking<R, false>(x, N, w, i0, i1, st, nullptr);
  } else if (finite && max_sign_clear<R>(st)) {
#if defined(__AVX512F__)
    if constexpr (R == kBoundRows) {
      if (wgroup != nullptr) {
        forward_tile_bounded(x, N, w, wgroup, ncols, i0, i1, st, x_next, ran);
        return finite;
      }
    }
#endif
    forward_tile<R, true>(x, N, w, i0, i1, st, x_next);
  } else {
    forward_tile<R, false>(x, N, w, i0, i1, st, x_next);
  }
  return finite;
}

// Whether the next slice should track indices too: the fraction of extremes (max and min of
// every row and column) whose index is at or after `mid`, the middle of the slice just done,
// i.e. that the second half of the slice raised. Products in random order raise a running
// extreme at input i with probability ~1/i, so this fraction predicts the next slice's rate;
// from ~8% (two new records per lane in 100 steps of the next slice, one in three vectors
// searching per step) tracking costs less than the value loop's searches.
static inline bool keep_tracking(const ForwardState* st, int64_t rows, int64_t mid) {
  int64_t late = 0;
  const VI m = VI{} + static_cast<int32_t>(mid);
  for (int64_t r = 0; r < rows; ++r)
    for (int v = 0; v < kVecs; ++v)
      late += __builtin_popcount(lane_bits(st[r].ix[v] >= m)) +
              __builtin_popcount(lane_bits(st[r].in[v] >= m));
  return late * 100 >= rows * kBlock * 2 * 8;
}

// Rows [b0, b1) of x against columns [j0, j0 + ncols) of w (ncols <= kBlock), with the running
// states st[0 .. b1 - b0). Every slice of w is packed once and passed over by all these rows.
// Writes y, amax and amin at [b, j0 .. j0 + ncols). Returns false when some input was not finite
// (then NaN products were skipped: see propagate_nan_rows).
static bool forward_block(const float* x, const float* w, int64_t N, int64_t M, int64_t b0,
                          int64_t b1, int64_t j0, int ncols, ForwardScratch* s,
                          ForwardState* st, float* y, int32_t* amax, int32_t* amin) {
  const int64_t rows = b1 - b0;
  // A row that fits one slice of whole vectors goes from the first product to its outputs in
  // registers (the state, started by the first slice, is not used).
  const bool whole = N <= kChunk && ncols == kBlock;
  bool finite = true;
  bool track = true;  // the first slice always tracks; later ones while records stay frequent
#if defined(__AVX512F__)
  // The bound test where it pays: on whole tiles of rows (their wgroup is computed once per
  // slice), while it lets most groups skip. After a slice that ran more than 40% of its groups
  // (ties, monotone data: the plain loop is faster there) the next slices do without it, more
  // of them each time it fails again.
  const bool bound_rows = rows >= kBoundRows;
  int64_t bound_rest = 0, bound_rest_next = kBoundRest;
#endif
  for (int64_t i0 = 0; i0 < N; i0 += kChunk) {
    const int64_t i1 = std::min(N, i0 + kChunk);
    // Packing makes the slice contiguous (w's rows are M floats apart, which maps a column
    // block onto few L1 sets) and zero-pads a partial block so every load is in bounds.
    // Vector copies (a memcpy call per row of the slice costs more than the copy), and the
    // next slice's rows of w prefetched: they are kBlock floats out of every M, a stride the
    // hardware prefetcher follows badly.
    const int64_t i2 = std::min(N, i1 + kChunk);
    for (int64_t i = i1; i < i2; ++i) {
      __builtin_prefetch(w + i * M + j0, 0, 2);  // to L2: a slice's compute evicts L1
      __builtin_prefetch(w + i * M + j0 + kBlock - 1, 0, 2);
    }
    if (ncols == kBlock) {
      for (int64_t i = i0; i < i1; ++i)
        for (int v = 0; v < kVecs; ++v) {
          const VF c = load(w + i * M + j0 + v * kLanes);
          std::memcpy(s->w + (i - i0) * kBlock + v * kLanes, &c, sizeof c);
        }
    } else {
      for (int64_t i = i0; i < i1; ++i) {
        float* d = s->w + (i - i0) * kBlock;
        std::memcpy(d, w + i * M + j0, ncols * sizeof(float));
        std::memset(d + ncols, 0, (kBlock - ncols) * sizeof(float));
      }
    }
    const bool w_finite = all_finite(s->w, (i1 - i0) * kBlock);
    const VF* wgroup = nullptr;
    int64_t ran = 0;
#if defined(__AVX512F__)
    if (!track && w_finite && bound_rows && bound_rest-- <= 0) {
      constexpr int64_t G = kStep / kGroup;
      const VI abs_bits = VI{} + static_cast<int32_t>(0x7fffffff);
      for (int64_t k = 0; k * kStep < i1 - i0; ++k) {
        float most[G];
        for (int64_t g = 0; g < G; ++g) {
          VF m = VF{};
          for (int64_t i = k * kStep + g * kGroup;
               i < std::min(i1 - i0, k * kStep + (g + 1) * kGroup); ++i)
            for (int v = 0; v < kVecs; ++v)
              m = keep_max((VF)((VI)(load(s->w + i * kBlock + v * kLanes)) & abs_bits), m);
          most[g] = _mm512_reduce_max_ps((__m512)(m));
        }
        for (int l = 0; l < kLanes; ++l) s->wgroup[k][l] = most[l % G];
      }
      wgroup = s->wgroup;
    }
#endif
    // x + i0 of row b: the next rows' inputs [i0, i1) are prefetched while these run; the last
    // rows prefetch the first rows' next slice (a hint: never read, so never out of bounds).
    auto at = [&](int64_t r) { return r < rows ? x + (b0 + r) * N + i0 : x + b0 * N + i1; };
    TileOut out{nullptr, nullptr, nullptr, M};
    auto out_of = [&](int64_t r) -> const TileOut* {
      if (!whole) return nullptr;
      const int64_t o = (b0 + r) * M + j0;
      out = TileOut{y + o, amax + o, amin + o, M};
      return &out;
    };
    int64_t r = 0;
    if (track) {
      for (; r + kTrackRows <= rows; r += kTrackRows)
        finite &= forward_slice<kTrackRows>(at(r) - i0, N, s->w, i0, i1, w_finite, true, st + r,
                                            at(r + kTrackRows) - i0, out_of(r));
    } else {
      for (; r + kRows <= rows; r += kRows)
        finite &= forward_slice<kRows>(at(r) - i0, N, s->w, i0, i1, w_finite, false, st + r,
                                       at(r + kRows) - i0, nullptr, wgroup, ncols, &ran);
    }
#if defined(__AVX512F__)
    if (wgroup != nullptr) {
      const int64_t groups = (rows / kRows) * kRows * ((i1 - i0 + kStep - 1) / kStep) *
                             (kStep / kGroup);
      if (ran * 10 > groups * 4) {
        bound_rest = bound_rest_next;
        bound_rest_next = std::min(kBoundRestMax, 2 * bound_rest_next);
      } else {
        bound_rest_next = kBoundRest;
      }
    }
#endif
    for (; r < rows; ++r)
      finite &= forward_slice<1>(at(r) - i0, N, s->w, i0, i1, w_finite, track, st + r,
                                 at(r + 1) - i0, i0 == 0 ? out_of(r) : nullptr);
    if (track && i1 < N) track = keep_tracking(st, rows, (i0 + i1) / 2);
  }
  if (whole) return finite;
  if (ncols == kBlock) {  // whole vectors: one add and three stores per vector
    for (int64_t r = 0; r < rows; ++r)
      for (int v = 0; v < kVecs; ++v) {
        const int64_t o = (b0 + r) * M + j0 + v * kLanes;
        const VF yv = st[r].mx[v] + st[r].mn[v];
        std::memcpy(y + o, &yv, sizeof yv);
        std::memcpy(amax + o, &st[r].ix[v], sizeof(VI));
        std::memcpy(amin + o, &st[r].in[v], sizeof(VI));
      }
    return finite;
  }
  for (int64_t r = 0; r < rows; ++r) {
    float mx[kBlock], mn[kBlock];
    int32_t ix[kBlock], in[kBlock];
    std::memcpy(mx, st[r].mx, sizeof mx);
    std::memcpy(mn, st[r].mn, sizeof mn);
    std::memcpy(ix, st[r].ix, sizeof ix);
    std::memcpy(in, st[r].in, sizeof in);
    const int64_t o = (b0 + r) * M + j0;
    for (int c = 0; c < ncols; ++c) {
      y[o + c] = mx[c] + mn[c];
      amax[o + c] = ix[c];
      amin[o + c] = in[c];
    }
  }
  return finite;
}

// Columns per piece of dw in the backward: 16 floats, one 64-byte line.
constexpr int64_t kPiece = 16;
// Up to this many inputs a piece of dw is accumulated in a local [N, kPiece] buffer (16 KiB):
// in dw itself the piece's rows are M floats apart, which maps them onto a few L1 sets (at
// M = 256 four sets hold all 48 lines of a 48-input piece: every add missed L1) and onto the
// same 4 KiB offsets as the rows of g being read (false store-to-load dependencies).
constexpr int64_t kLocalDwInputs = 256;

// Adds the gradient of columns [j0, j1) (at most kPiece) into dw, zeroed here first if `zero`
// (else zero on entry; ignored up to kLocalDwInputs inputs, where the piece is overwritten), in
// the documented order: every max term (rows ascending), then every min term (rows ascending).
static void backward_dw_cols(const float* g, const float* x, const int32_t* amax,
                             const int32_t* amin, int64_t B, int64_t N, int64_t M, int64_t j0,
                             int64_t j1, bool zero, float* dw) {
  const int64_t ncols = j1 - j0;
  if (N <= kLocalDwInputs) {
    alignas(64) float acc[kLocalDwInputs * kPiece];
    std::memset(acc, 0, N * kPiece * sizeof(float));
    for (const int32_t* idx : {amax, amin}) {
      for (int64_t b = 0; b < B; ++b) {
        const float* gb = g + b * M + j0;
        const float* xb = x + b * N;
        const int32_t* ib = idx + b * M + j0;
        if (ncols == kPiece) {  // a constant trip count: unrolled
          for (int64_t c = 0; c < kPiece; ++c) acc[ib[c] * kPiece + c] += gb[c] * xb[ib[c]];
        } else {
          for (int64_t c = 0; c < ncols; ++c) acc[ib[c] * kPiece + c] += gb[c] * xb[ib[c]];
        }
      }
    }
    for (int64_t i = 0; i < N; ++i)
      std::memcpy(dw + i * M + j0, acc + i * kPiece, ncols * sizeof(float));
    return;
  }
  if (zero && ncols == kPiece) {  // a constant size: one or two vector stores
    for (int64_t i = 0; i < N; ++i) std::memset(dw + i * M + j0, 0, kPiece * sizeof(float));
  } else if (zero) {
    for (int64_t i = 0; i < N; ++i) std::memset(dw + i * M + j0, 0, ncols * sizeof(float));
  }
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
// Two rows at a time, their terms interleaved: two independent chains of adds in flight (each
// row's own order is unchanged).
static void backward_dx_rows(const float* g, const float* w, const int32_t* amax,
                             const int32_t* amin, int64_t N, int64_t M, int64_t b0, int64_t b1,
                             float* dx) {
  int64_t b = b0;
  for (; b + 2 <= b1; b += 2) {
    const float* g0 = g + b * M;
    const float* g1 = g0 + M;
    float* d0 = dx + b * N;
    float* d1 = d0 + N;
    std::memset(d0, 0, 2 * N * sizeof(float));
    for (const int32_t* idx : {amax, amin}) {
      const int32_t* i0 = idx + b * M;
      const int32_t* i1 = i0 + M;
      for (int64_t j = 0; j < M; ++j) {
        d0[i0[j]] += g0[j] * w[i0[j] * M + j];
        d1[i1[j]] += g1[j] * w[i1[j] * M + j];
      }
    }
  }
  for (; b < b1; ++b) {
    const float* gb = g + b * M;
    float* dxb = dx + b * N;
    std::memset(dxb, 0, N * sizeof(float));
    for (const int32_t* idx : {amax, amin}) {
      const int32_t* ib = idx + b * M;
      for (int64_t j = 0; j < M; ++j) dxb[ib[j]] += gb[j] * w[ib[j] * M + j];
    }
  }
}

// Writes dx and dw in one pass over the indices, on one thread: for the max indices, then the
// min indices, rows ascending, units ascending, the term of dw[i, j] and of dx[b, i]. That pass
// order is the documented order of both sums (dw: every max term, rows ascending, then every
// min term; dx: within a row, every max term, units ascending, then every min term), so the
// results are the same bits as backward_dw_cols and backward_dx_rows give. For small layers
// (dw in L2), where the split into dx rows and dw pieces would read g and the indices twice.
static void backward_serial(const float* g, const float* x, const float* w, const int32_t* amax,
                            const int32_t* amin, int64_t B, int64_t N, int64_t M, float* dx,
                            float* dw) {
  std::memset(dx, 0, B * N * sizeof(float));
  std::memset(dw, 0, N * M * sizeof(float));
  for (const int32_t* idx : {amax, amin}) {
    for (int64_t b = 0; b < B; ++b) {
      const float* gb = g + b * M;
      const float* xb = x + b * N;
      const int32_t* ib = idx + b * M;
      float* dxb = dx + b * N;
#pragma GCC unroll 4
      for (int64_t j = 0; j < M; ++j) {
        const int32_t i = ib[j];
        const float to_w = gb[j] * xb[i];
        const float to_x = gb[j] * w[i * M + j];
        dw[i * M + j] += to_w;
        dxb[i] += to_x;
      }
    }
  }
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
