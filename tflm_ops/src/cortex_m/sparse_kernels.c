/* ARMv7E-M (Cortex-M4/M7/M33, DSP extension) variants of the sparse kernels of
 * src/reference_kernels.c.
 *
 * TFLM's layout: the optimized variant beside the reference, same entry points;
 * src/kernel_select.c's mam_sparse_s8() etc. call these where __ARM_FEATURE_DSP is set (unless
 * MAM_SPARSE_PORTABLE_ONLY is defined). Bit-exact with the *_portable kernels: same integer
 * semantics (docs/operator-contract.md section 3), same wrap-around of the accumulators.
 *
 * Compiled by GCC/Clang for Arm only, where signed integers are two's complement and the
 * conversion of an out-of-range unsigned value to a signed type wraps.
 */
#include "../internal.h"

#if defined(MAM_SPARSE_HAVE_ARMV7EM) /* __ARM_FEATURE_DSP, little-endian (see core.h) */

#include <arm_acle.h>
#include <string.h>

/* Requantization, bit-exact with src/fixed_point.c's
 * mam_multiply_by_quantized_multiplier(_64), its constants worked out once per call
 * (per-tensor scale) or once per row (per-row scales) and applied inline.
 *
 * int16 (TFLM's 64-bit form): r = acc * reduced + 2^(ts-1) modulo 2^64, then bits ts..ts+31
 * of r as int64 (ts = 15 - shift, in 8..46): one UMLAL + MLA and a 64-bit shift. */
typedef struct {
  uint64_t round; /* 2^(ts-1) */
  uint32_t reduced;
  int32_t ts;
} rq_s16;

static inline rq_s16 rq_s16_make(int32_t multiplier, int32_t shift) {
  rq_s16 r;
  r.reduced = (uint32_t)((multiplier < 0x7FFF0000) ? ((multiplier + (1 << 15)) >> 16) : 0x7FFF);
  r.ts = 15 - shift;
  r.round = (uint64_t)1 << (r.ts - 1);
  return r;
}

static inline int32_t rq_s16_apply(uint64_t acc, const rq_s16 *r) {
  const uint64_t v = acc * r->reduced + r->round;
  const uint32_t lo = (uint32_t)v, hi = (uint32_t)(v >> 32);
  if (__builtin_expect(r->ts < 32, 1)) return (int32_t)((lo >> r->ts) | (hi << (32 - r->ts)));
  return (int32_t)hi >> (r->ts - 32);
}

/* int8 (gemmlowp's): x << left, then the saturating rounding doubling high multiply, which
 * for a multiplier in [0, 2^31) never saturates and equals (x * multiplier + 2^30) >> 31 as
 * a floor (gemmlowp's nudge 1 - 2^30 and division toward zero for a negative product give
 * the same: trunc((p + 1 - 2^30) / 2^31) = floor((p + 2^30) / 2^31) for p < 0), then the
 * rounding divide by 2^right (ties away from zero). */
typedef struct {
  int32_t multiplier, left, right, mask, half;
} rq_s8;

static inline rq_s8 rq_s8_make(int32_t multiplier, int32_t shift) {
  rq_s8 r;
  r.multiplier = multiplier;
  r.left = shift > 0 ? shift : 0;
  r.right = shift > 0 ? 0 : -shift;
  r.mask = (int32_t)(((int64_t)1 << r.right) - 1);
  r.half = r.mask >> 1;
  return r;
}

static inline int32_t rq_s8_apply(uint32_t acc, const rq_s8 *r) {
  const int32_t shifted = (int32_t)(acc << r->left);
  const uint64_t p = (uint64_t)((int64_t)shifted * r->multiplier + (1 << 30));
  const int32_t h = (int32_t)(((uint32_t)(p >> 32) << 1) | ((uint32_t)p >> 31));
  const int32_t threshold = r->half + (int32_t)((uint32_t)h >> 31);
  return (h >> r->right) + ((h & r->mask) > threshold);
}

static inline int32_t finish_s8(uint32_t acc, const mam_requant *q, const rq_s8 *r0, int32_t j) {
  const rq_s8 r = q->per_row ? rq_s8_make(q->multiplier[j], q->shift[j]) : *r0;
  return clamp_i32((int32_t)((uint32_t)rq_s8_apply(acc, &r) + (uint32_t)q->output_zero_point),
                   q->act_min, q->act_max);
}

static inline int32_t finish_s16(uint64_t acc, const mam_requant *q, const rq_s16 *r0,
                                 int32_t j) {
  const rq_s16 r = q->per_row ? rq_s16_make(q->multiplier[j], q->shift[j]) : *r0;
  return clamp_i32((int32_t)((uint32_t)rq_s16_apply(acc, &r) + (uint32_t)q->output_zero_point),
                   q->act_min, q->act_max);
}

/* ---------------------------------------------------------------------------------------
 * Building blocks
 * ------------------------------------------------------------------------------------- */

/* v = the four bytes at p, then p += 4: one LDR with post-index. ARMv7-M loads words from
 * any address (rows of the offset-CSR start anywhere); where the compiler is told otherwise
 * (-mno-unaligned-access: no __ARM_FEATURE_UNALIGNED) memcpy reads the bytes. The asm reads
 * model constants that nothing writes while a kernel runs. */
#if defined(__ARM_FEATURE_UNALIGNED)
#define LOAD_WORD_INC(v, p) __asm__("ldr %0, [%1], #4" : "=r"(v), "+r"(p))
#else
#define LOAD_WORD_INC(v, p) \
  do {                      \
    memcpy(&(v), (p), 4);   \
    (p) += 4;               \
  } while (0)
#endif

/* Bytes 1 and 3 of v as two signed halfwords (SXTB16 with ROR #8), and as two unsigned
 * halfwords plus a (UXTAB16 with ROR #8): GCC's intrinsics take no rotation. */
static inline int32_t sxtb16_ror8(uint32_t v) {
  int32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
  return r;
}
static inline uint32_t uxtab16_ror8(uint32_t a, uint32_t v) {
  uint32_t r;
  __asm__("uxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(a), "r"(v));
  return r;
}

/* Bottom halfword of lo, bottom halfword of hi in the top half (PKHBT). */
static inline uint32_t pkhbt16(uint32_t lo, uint32_t hi) {
  uint32_t r;
  __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(lo), "r"(hi));
  return r;
}

/* Running max and min of a row's products, kept as neglo = -min and range = max - min
 * (max >= min always). A product p lies in [min, max] exactly when t = p - min, seen as
 * unsigned, is <= range: one compare per product in the common case; the products of a row
 * span less than 2^31, so t < 0 says p is a new min and t > range a new max. The kernels
 * get t straight from a multiply-accumulate: t = x * w + neglo. */
#define MAM_TRACK(t_expr)                                        \
  do {                                                           \
    const int32_t t_ = (t_expr);                                 \
    if (__builtin_expect((uint32_t)t_ > range, 0)) {             \
      if (t_ < 0) {                                              \
        neglo -= t_;                                             \
        range -= (uint32_t)t_;                                   \
      } else {                                                   \
        range = (uint32_t)t_;                                    \
      }                                                          \
    }                                                            \
  } while (0)

/* int8 input: xp += byte k of ow (UXTAB with ROR), then xv = *xp++ (LDRSB, post-index):
 * two instructions for the column step and the load. */
#define STEP_LOAD_S8(xp, xv, ow, ror)                                               \
  __asm__("uxtab %0, %0, %2" ror "\n\tldrsb %1, [%0], #1"                           \
          : "+r"(xp), "=r"(xv)                                                      \
          : "r"(ow))
#define ROR0 ""
#define ROR8 ", ror #8"
#define ROR16 ", ror #16"
#define ROR24 ", ror #24"

/* ---------------------------------------------------------------------------------------
 * The kernels. Each row: a main loop over 8 entries (MAM int8: 16, then 8 if left), then 4
 * if left, then the 0..3 entries left one by one; each group of four takes one word of
 * offsets and one of weights (SXTB16 splits the weights into halfwords 0,2 and 1,3). A row
 * that stores fewer than N entries starts with max = min = 0 (a pruned column's product), a
 * full row with its first product. int16 kernels keep col, the column of the last entry,
 * and step it by offset + 1 from UXTAB16 (0x00010001 + two offsets at once) before an LDRSH
 * [x, col, LSL #1]; int8 kernels keep the pointer x + col + 1 (STEP_LOAD_S8).
 *
 * Hot loops, arm-none-eabi-gcc 12.2 -O2 -mcpu=cortex-m7 (objdump): MAM int16 50
 * instructions per 8 entries, MAM int8 104 per 16 (106 where offsets and values are not
 * co-aligned), MAC int8 and int16 38 per 8; a MAM group whose products move the max or the
 * min costs about 12-15 more (records of a running max/min: about ln(entries) per side in a
 * random row, some 125 instructions per row at 128 x 16384; docs/benchmarks.md). A row's
 * fixed cost (set-up, bias, inline requantization): 57 instructions int16, 76 MAM int8.
 * ------------------------------------------------------------------------------------- */

/* Four t = p - min at once: one test in the common case that none leaves [min, max], a
 * chain of conditional compares (CMP, ITTT LS, CMPLS x3: HI if any t > range) read through
 * a flag output; else each tracked in turn. */
static inline int any_above4(int32_t t0, int32_t t1, int32_t t2, int32_t t3, uint32_t range) {
#if defined(__GCC_ASM_FLAG_OUTPUTS__)
  int above;
  __asm__("cmp %1, %5\n\tittt ls\n\tcmpls %2, %5\n\tcmpls %3, %5\n\tcmpls %4, %5"
          : "=@cchi"(above)
          : "r"(t0), "r"(t1), "r"(t2), "r"(t3), "r"(range));
  return above;
#else
  return (uint32_t)t0 > range || (uint32_t)t1 > range || (uint32_t)t2 > range ||
         (uint32_t)t3 > range;
#endif
}

/* A new min moves every later t of the group (t = p - min); a new max moves none. */
#define MAM_TRACK_REBASE(t, later)                                                  \
  do {                                                                              \
    if ((uint32_t)(t) > range) {                                                    \
      if ((t) < 0) {                                                                \
        neglo -= (t);                                                               \
        range -= (uint32_t)(t);                                                     \
        later;                                                                      \
      } else {                                                                      \
        range = (uint32_t)(t);                                                      \
      }                                                                             \
    }                                                                               \
  } while (0)

#define MAM_TRACK4(t0, t1, t2, t3)                                                  \
  do {                                                                              \
    if (__builtin_expect(any_above4((t0), (t1), (t2), (t3), range), 0)) {           \
      int32_t u1_ = (t1), u2_ = (t2), u3_ = (t3);                                   \
      MAM_TRACK_REBASE(t0, (u1_ -= (t0), u2_ -= (t0), u3_ -= (t0)));                \
      MAM_TRACK_REBASE(u1_, (u2_ -= u1_, u3_ -= u1_));                              \
      MAM_TRACK_REBASE(u2_, (u3_ -= u2_));                                          \
      MAM_TRACK_REBASE(u3_, (void)0);                                               \
    }                                                                               \
  } while (0)

/* MAM, int16: four entries from the next word of offsets and of weights. */
#define MAM_S16_GROUP()                                                             \
  do {                                                                              \
    uint32_t ow, vw;                                                                \
    LOAD_WORD_INC(ow, off);                                                         \
    LOAD_WORD_INC(vw, val);                                                         \
    const int32_t w02 = __sxtb16((int32_t)vw), w13 = sxtb16_ror8(vw);               \
    const uint32_t o02 = __uxtab16(ones, ow), o13 = uxtab16_ror8(ones, ow);         \
    col += (int32_t)(o02 & 0xFFFFu);                                                \
    const int32_t t0 = __smlabb(x[col], w02, neglo);                                \
    col += (int32_t)(o13 & 0xFFFFu);                                                \
    const int32_t t1 = __smlabb(x[col], w13, neglo);                                \
    col += (int32_t)(o02 >> 16);                                                    \
    const int32_t t2 = __smlabt(x[col], w02, neglo);                                \
    col += (int32_t)(o13 >> 16);                                                    \
    const int32_t t3 = __smlabt(x[col], w13, neglo);                                \
    MAM_TRACK4(t0, t1, t2, t3);                                                     \
  } while (0)

void mam_sparse_s16_armv7em(const mam_csr *w, const mam_requant *q, const int64_t *bias,
                            const int16_t *input, int32_t batches, int16_t *output) {
  const int32_t n = w->n, m = w->m;
  const uint32_t ones = 0x00010001u;
  const rq_s16 r0 = rq_s16_make(q->multiplier[0], q->shift[0]);
  const int32_t zy = q->output_zero_point, act_min = q->act_min, act_max = q->act_max;
  const int per_row = q->per_row;
  int16_t *y = output;
  for (int32_t b = 0; b < batches; ++b) {
    const int16_t *const x = input + (size_t)b * (size_t)n;
    const int8_t *val = w->values;
    const uint8_t *off = w->offsets;
    const int16_t *counts = w->row_counts;
    const int64_t *bp = bias;
    for (const int16_t *const end = counts + m; counts != end;) {
      const int32_t count = *counts++;
      int32_t neglo = 0;
      if (__builtin_expect(count == n, 0)) neglo = -((int32_t)x[off[0]] * (int32_t)val[0]);
      uint32_t range = 0;
      int32_t col = -1;
      for (int32_t g = count >> 3; g > 0; --g) {
        MAM_S16_GROUP();
        MAM_S16_GROUP();
      }
      if (count & 4) {
        MAM_S16_GROUP();
      }
      for (int32_t e = count & 3; e > 0; --e) {
        col += (int32_t)*off++ + 1;
        MAM_TRACK((int32_t)x[col] * (int32_t)*val++ + neglo);
      }
      /* max + min = range + 2 min = range - 2 neglo */
      uint64_t acc = (uint64_t)(int64_t)(int32_t)(range - 2u * (uint32_t)neglo);
      if (bp != NULL) acc += (uint64_t)*bp++;
      rq_s16 r = r0;
      if (__builtin_expect(per_row, 0)) {
        const int32_t k = (int32_t)(counts - w->row_counts) - 1; /* this row */
        r = rq_s16_make(q->multiplier[k], q->shift[k]);
      }
      *y++ = (int16_t)clamp_i32((int32_t)((uint32_t)rq_s16_apply(acc, &r) + (uint32_t)zy),
                                act_min, act_max);
    }
  }
}

/* MAM, int8: the same with the input zero point taken off each input, from words ow, vw. */
#define MAM_S8_GROUP(ow, vw)                                                        \
  do {                                                                              \
    const int32_t w02 = __sxtb16((int32_t)(vw)), w13 = sxtb16_ror8(vw);             \
    int32_t x0, x1, x2, x3;                                                         \
    STEP_LOAD_S8(xp, x0, ow, ROR0);                                                 \
    STEP_LOAD_S8(xp, x1, ow, ROR8);                                                 \
    STEP_LOAD_S8(xp, x2, ow, ROR16);                                                \
    STEP_LOAD_S8(xp, x3, ow, ROR24);                                                \
    const int32_t t0 = __smlabb(x0 - zx, w02, neglo);                               \
    const int32_t t1 = __smlabb(x1 - zx, w13, neglo);                               \
    const int32_t t2 = __smlabt(x2 - zx, w02, neglo);                               \
    const int32_t t3 = __smlabt(x3 - zx, w13, neglo);                               \
    MAM_TRACK4(t0, t1, t2, t3);                                                     \
  } while (0)

/* Eight offsets and eight weights: where both pointers are word-aligned, two LDRD (a
 * doubleword load needs a word-aligned address on ARMv7-M), else four LDR. */
#define LOAD_8(oa, ob, va, vb, paired)                                              \
  do {                                                                              \
    if (paired) {                                                                   \
      __asm__("ldrd %0, %1, [%2], #8" : "=r"(oa), "=r"(ob), "+r"(off));             \
      __asm__("ldrd %0, %1, [%2], #8" : "=r"(va), "=r"(vb), "+r"(val));             \
    } else {                                                                        \
      LOAD_WORD_INC(oa, off);                                                       \
      LOAD_WORD_INC(va, val);                                                       \
      LOAD_WORD_INC(ob, off);                                                       \
      LOAD_WORD_INC(vb, val);                                                       \
    }                                                                               \
  } while (0)

/* One batch row of MAM int8. paired (a constant after inlining): offsets and values sit at
 * the same address modulo 4, so that once a row's first 0..3 entries are done one by one
 * both are word-aligned and the 16-entry loop loads them with LDRD. */
static inline __attribute__((always_inline)) void mam_s8_rows(
    const mam_csr *w, const mam_requant *q, const int32_t *bias, const int8_t *x,
    int8_t *y, const rq_s8 *rq0, const int paired) {
  const int32_t n = w->n, m = w->m, zx = q->input_zero_point;
  const int32_t zy = q->output_zero_point, act_min = q->act_min, act_max = q->act_max;
  const int per_row = q->per_row;
  const rq_s8 r0 = *rq0;
  const int8_t *val = w->values;
  const uint8_t *off = w->offsets;
  const int16_t *counts = w->row_counts;
  const int32_t *bp = bias;
  for (const int16_t *const end = counts + m; counts != end;) {
    const int32_t count = *counts++;
    int32_t neglo = 0;
    if (__builtin_expect(count == n, 0)) neglo = -(((int32_t)x[off[0]] - zx) * (int32_t)val[0]);
    uint32_t range = 0;
    const int8_t *xp = x; /* x + col + 1 */
    int32_t head = paired ? (int32_t)((0u - (uintptr_t)off) & 3u) : 0;
    if (head > count) head = count;
    for (int32_t e = head; e > 0; --e) {
      xp += *off++;
      MAM_TRACK(((int32_t)*xp++ - zx) * (int32_t)*val++ + neglo);
    }
    const int32_t rest = count - head;
    for (int32_t g = rest >> 4; g > 0; --g) {
      uint32_t oa, ob, va, vb;
      LOAD_8(oa, ob, va, vb, paired);
      MAM_S8_GROUP(oa, va);
      MAM_S8_GROUP(ob, vb);
      LOAD_8(oa, ob, va, vb, paired);
      MAM_S8_GROUP(oa, va);
      MAM_S8_GROUP(ob, vb);
    }
    if (rest & 8) {
      uint32_t oa, ob, va, vb;
      LOAD_8(oa, ob, va, vb, paired);
      MAM_S8_GROUP(oa, va);
      MAM_S8_GROUP(ob, vb);
    }
    if (rest & 4) {
      uint32_t ow, vw;
      LOAD_WORD_INC(ow, off);
      LOAD_WORD_INC(vw, val);
      MAM_S8_GROUP(ow, vw);
    }
    for (int32_t e = rest & 3; e > 0; --e) {
      xp += *off++;
      MAM_TRACK(((int32_t)*xp++ - zx) * (int32_t)*val++ + neglo);
    }
    uint32_t acc = range - 2u * (uint32_t)neglo;
    if (bp != NULL) acc += (uint32_t)*bp++;
    rq_s8 r = r0;
    if (__builtin_expect(per_row, 0)) {
      const int32_t k = (int32_t)(counts - w->row_counts) - 1; /* this row */
      r = rq_s8_make(q->multiplier[k], q->shift[k]);
    }
    *y++ = (int8_t)clamp_i32((int32_t)((uint32_t)rq_s8_apply(acc, &r) + (uint32_t)zy),
                             act_min, act_max);
  }
}

void mam_sparse_s8_armv7em(const mam_csr *w, const mam_requant *q, const int32_t *bias,
                           const int8_t *input, int32_t batches, int8_t *output) {
  const int paired = (((uintptr_t)w->offsets ^ (uintptr_t)w->values) & 3u) == 0;
  const rq_s8 r0 = rq_s8_make(q->multiplier[0], q->shift[0]);
  for (int32_t b = 0; b < batches; ++b) {
    const int8_t *const x = input + (size_t)b * (size_t)w->n;
    int8_t *const y = output + (size_t)b * (size_t)w->m;
    if (paired) {
      mam_s8_rows(w, q, bias, x, y, &r0, 1);
    } else {
      mam_s8_rows(w, q, bias, x, y, &r0, 0);
    }
  }
}

/* MAC, int8: sum (x - zx) w = sum x w - zx sum w; the second sum by SMLAD of the weights
 * with -zx in both halfwords (nzx2). The int32 accumulator wraps as the portable one. */
#define MAC_S8_GROUP()                                                              \
  do {                                                                              \
    uint32_t ow, vw;                                                                \
    LOAD_WORD_INC(ow, off);                                                         \
    LOAD_WORD_INC(vw, val);                                                         \
    const int32_t w02 = __sxtb16((int32_t)vw), w13 = sxtb16_ror8(vw);               \
    int32_t x0, x1, x2, x3;                                                         \
    STEP_LOAD_S8(xp, x0, ow, ROR0);                                                 \
    STEP_LOAD_S8(xp, x1, ow, ROR8);                                                 \
    STEP_LOAD_S8(xp, x2, ow, ROR16);                                                \
    STEP_LOAD_S8(xp, x3, ow, ROR24);                                                \
    acc = __smlabb(x0, w02, acc);                                                   \
    acc = __smlabb(x1, w13, acc);                                                   \
    acc = __smlabt(x2, w02, acc);                                                   \
    acc = __smlabt(x3, w13, acc);                                                   \
    acc = __smlad(w02, nzx2, acc);                                                  \
    acc = __smlad(w13, nzx2, acc);                                                  \
  } while (0)

void mac_sparse_s8_armv7em(const mam_csr *w, const mam_requant *q, const int32_t *bias,
                           const int8_t *input, int32_t batches, int8_t *output) {
  const int32_t n = w->n, m = w->m, zx = q->input_zero_point;
  const int32_t nzx2 = (int32_t)(((uint32_t)-zx & 0xFFFFu) * 0x00010001u);
  const rq_s8 r0 = rq_s8_make(q->multiplier[0], q->shift[0]);
  for (int32_t b = 0; b < batches; ++b) {
    const int8_t *const x = input + (size_t)b * (size_t)n;
    int8_t *const y = output + (size_t)b * (size_t)m;
    const int8_t *val = w->values;
    const uint8_t *off = w->offsets;
    for (int32_t j = 0; j < m; ++j) {
      const int32_t count = w->row_counts[j];
      int32_t acc = 0;
      const int8_t *xp = x; /* x + col + 1 */
      for (int32_t g = count >> 3; g > 0; --g) {
        MAC_S8_GROUP();
        MAC_S8_GROUP();
      }
      if (count & 4) {
        MAC_S8_GROUP();
      }
      for (int32_t e = count & 3; e > 0; --e) {
        xp += *off++;
        acc = (int32_t)((uint32_t)acc + (uint32_t)(((int32_t)*xp++ - zx) * (int32_t)*val++));
      }
      uint32_t uacc = (uint32_t)acc;
      if (bias != NULL) uacc += (uint32_t)bias[j];
      y[j] = (int8_t)finish_s8(uacc, q, &r0, j);
    }
  }
}

/* MAC, int16: two inputs packed by PKHBT, SMLALD adds two products to the int64 sum
 * (|sum| < 2^37: no wrap before the bias). */
#define MAC_S16_GROUP()                                                             \
  do {                                                                              \
    uint32_t ow, vw;                                                                \
    LOAD_WORD_INC(ow, off);                                                         \
    LOAD_WORD_INC(vw, val);                                                         \
    const int32_t w02 = __sxtb16((int32_t)vw), w13 = sxtb16_ror8(vw);               \
    const uint32_t o02 = __uxtab16(ones, ow), o13 = uxtab16_ror8(ones, ow);         \
    col += (int32_t)(o02 & 0xFFFFu);                                                \
    const uint32_t x0 = (uint16_t)x[col];                                           \
    col += (int32_t)(o13 & 0xFFFFu);                                                \
    const uint32_t x1 = (uint16_t)x[col];                                           \
    col += (int32_t)(o02 >> 16);                                                    \
    const uint32_t x2 = (uint16_t)x[col];                                           \
    col += (int32_t)(o13 >> 16);                                                    \
    const uint32_t x3 = (uint16_t)x[col];                                           \
    acc = __smlald((int32_t)pkhbt16(x0, x2), w02, acc);                             \
    acc = __smlald((int32_t)pkhbt16(x1, x3), w13, acc);                             \
  } while (0)

void mac_sparse_s16_armv7em(const mam_csr *w, const mam_requant *q, const int64_t *bias,
                            const int16_t *input, int32_t batches, int16_t *output) {
  const int32_t n = w->n, m = w->m;
  const uint32_t ones = 0x00010001u;
  const rq_s16 r0 = rq_s16_make(q->multiplier[0], q->shift[0]);
  for (int32_t b = 0; b < batches; ++b) {
    const int16_t *const x = input + (size_t)b * (size_t)n;
    int16_t *const y = output + (size_t)b * (size_t)m;
    const int8_t *val = w->values;
    const uint8_t *off = w->offsets;
    for (int32_t j = 0; j < m; ++j) {
      const int32_t count = w->row_counts[j];
      int64_t acc = 0;
      int32_t col = -1;
      for (int32_t g = count >> 3; g > 0; --g) {
        MAC_S16_GROUP();
        MAC_S16_GROUP();
      }
      if (count & 4) {
        MAC_S16_GROUP();
      }
      for (int32_t e = count & 3; e > 0; --e) {
        col += (int32_t)*off++ + 1;
        acc += (int32_t)x[col] * (int32_t)*val++;
      }
      uint64_t uacc = (uint64_t)acc;
      if (bias != NULL) uacc += (uint64_t)bias[j];
      y[j] = (int16_t)finish_s16(uacc, q, &r0, j);
    }
  }
}

#else
/* Not a (little-endian) ARMv7E-M target: nothing to compile (ISO C wants a non-empty
 * unit). */
typedef int mam_sparse_cortex_m_unused;
#endif /* MAM_SPARSE_HAVE_ARMV7EM */
