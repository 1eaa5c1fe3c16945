/* ARMv7E-M (Cortex-M4/M7/M33, DSP extension) variants of the sparse kernels of core.c.
 *
 * TFLM's layout: the optimized variant beside the reference, same entry points; core.c's
 * mam_sparse_s8() etc. call these where __ARM_FEATURE_DSP is set (unless
 * MAM_SPARSE_PORTABLE_ONLY is defined). Bit-exact with the *_portable kernels: same integer
 * semantics (MAM_SPARSE.md section 3), same wrap-around of the accumulators.
 *
 * Compiled by GCC/Clang for Arm only, where signed integers are two's complement and the
 * conversion of an out-of-range unsigned value to a signed type wraps.
 */
#include "mam_sparse/core.h"

#if defined(__ARM_FEATURE_DSP)

static inline int32_t clamp_i32(int32_t v, int32_t lo, int32_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

static inline int32_t finish_s8(uint32_t acc, const mam_requant *q, int32_t j) {
  const int32_t r = q->per_row ? j : 0;
  const int32_t scaled =
      mam_multiply_by_quantized_multiplier((int32_t)acc, q->multiplier[r], q->shift[r]);
  return clamp_i32((int32_t)((uint32_t)scaled + (uint32_t)q->output_zero_point), q->act_min,
                   q->act_max);
}

static inline int32_t finish_s16(uint64_t acc, const mam_requant *q, int32_t j) {
  const int32_t r = q->per_row ? j : 0;
  const int32_t scaled =
      mam_multiply_by_quantized_multiplier_64((int64_t)acc, q->multiplier[r], q->shift[r]);
  return clamp_i32((int32_t)((uint32_t)scaled + (uint32_t)q->output_zero_point), q->act_min,
                   q->act_max);
}

/* Starting point: straight copies of the portable kernels (to be optimized). */
void mam_sparse_s8_armv7em(const mam_csr *w, const mam_requant *q, const int32_t *bias,
                           const int8_t *input, int32_t batches, int8_t *output) {
  const int32_t n = w->n, m = w->m, zx = q->input_zero_point;
  for (int32_t b = 0; b < batches; ++b) {
    const int8_t *x = input + (size_t)b * (size_t)n;
    int8_t *y = output + (size_t)b * (size_t)m;
    const int8_t *val = w->values;
    const uint8_t *off = w->offsets;
    for (int32_t j = 0; j < m; ++j) {
      const int32_t count = w->row_counts[j];
      /* A row storing fewer than N entries has a pruned column whose product 0 competes. */
      int32_t hi = count < n ? 0 : INT32_MIN;
      int32_t lo = count < n ? 0 : INT32_MAX;
      int32_t col = -1;
      for (int32_t e = 0; e < count; ++e) {
        col += (int32_t)off[e] + 1;
        const int32_t p = ((int32_t)x[col] - zx) * (int32_t)val[e];
        if (p > hi) hi = p;
        if (p < lo) lo = p;
      }
      val += count;
      off += count;
      uint32_t acc = (uint32_t)hi + (uint32_t)lo;
      if (bias != NULL) acc += (uint32_t)bias[j];
      y[j] = (int8_t)finish_s8(acc, q, j);
    }
  }
}

void mam_sparse_s16_armv7em(const mam_csr *w, const mam_requant *q, const int64_t *bias,
                            const int16_t *input, int32_t batches, int16_t *output) {
  const int32_t n = w->n, m = w->m;
  for (int32_t b = 0; b < batches; ++b) {
    const int16_t *x = input + (size_t)b * (size_t)n;
    int16_t *y = output + (size_t)b * (size_t)m;
    const int8_t *val = w->values;
    const uint8_t *off = w->offsets;
    for (int32_t j = 0; j < m; ++j) {
      const int32_t count = w->row_counts[j];
      int32_t hi = count < n ? 0 : INT32_MIN;
      int32_t lo = count < n ? 0 : INT32_MAX;
      int32_t col = -1;
      for (int32_t e = 0; e < count; ++e) {
        col += (int32_t)off[e] + 1;
        const int32_t p = (int32_t)x[col] * (int32_t)val[e];
        if (p > hi) hi = p;
        if (p < lo) lo = p;
      }
      val += count;
      off += count;
      uint64_t acc = (uint64_t)(int64_t)hi + (uint64_t)(int64_t)lo;
      if (bias != NULL) acc += (uint64_t)bias[j];
      y[j] = (int16_t)finish_s16(acc, q, j);
    }
  }
}

void mac_sparse_s8_armv7em(const mam_csr *w, const mam_requant *q, const int32_t *bias,
                           const int8_t *input, int32_t batches, int8_t *output) {
  const int32_t n = w->n, m = w->m, zx = q->input_zero_point;
  for (int32_t b = 0; b < batches; ++b) {
    const int8_t *x = input + (size_t)b * (size_t)n;
    int8_t *y = output + (size_t)b * (size_t)m;
    const int8_t *val = w->values;
    const uint8_t *off = w->offsets;
    for (int32_t j = 0; j < m; ++j) {
      const int32_t count = w->row_counts[j];
      uint32_t acc = 0;
      int32_t col = -1;
      for (int32_t e = 0; e < count; ++e) {
        col += (int32_t)off[e] + 1;
        acc += (uint32_t)(((int32_t)x[col] - zx) * (int32_t)val[e]);
      }
      val += count;
      off += count;
      if (bias != NULL) acc += (uint32_t)bias[j];
      y[j] = (int8_t)finish_s8(acc, q, j);
    }
  }
}

void mac_sparse_s16_armv7em(const mam_csr *w, const mam_requant *q, const int64_t *bias,
                            const int16_t *input, int32_t batches, int16_t *output) {
  const int32_t n = w->n, m = w->m;
  for (int32_t b = 0; b < batches; ++b) {
    const int16_t *x = input + (size_t)b * (size_t)n;
    int16_t *y = output + (size_t)b * (size_t)m;
    const int8_t *val = w->values;
    const uint8_t *off = w->offsets;
    for (int32_t j = 0; j < m; ++j) {
      const int32_t count = w->row_counts[j];
      uint64_t acc = 0;
      int32_t col = -1;
      for (int32_t e = 0; e < count; ++e) {
        col += (int32_t)off[e] + 1;
        acc += (uint64_t)(int64_t)((int32_t)x[col] * (int32_t)val[e]);
      }
      val += count;
      off += count;
      if (bias != NULL) acc += (uint64_t)bias[j];
      y[j] = (int16_t)finish_s16(acc, q, j);
    }
  }
}

#else
/* Not an ARMv7E-M target: nothing to compile (ISO C wants a non-empty unit). */
typedef int mam_sparse_cortex_m_unused;
#endif /* __ARM_FEATURE_DSP */
