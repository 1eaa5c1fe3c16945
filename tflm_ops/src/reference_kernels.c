/* The portable reference kernels (Eval): every target runs them or, on ARMv7E-M,
 * src/cortex_m/sparse_kernels.c, which must give the same bytes. They trust what
 * mam_validate / mam_validate_requant accepted and check nothing. */
#include "internal.h"

/* Requantization shared by all kernels. */
/* acc is int32 (wrapped); 32-bit double-rounding requantization. */
static inline int32_t finish_s8(uint32_t acc, const mam_requant *q, int32_t j) {
  const int32_t r = q->per_row ? j : 0;
  const int32_t scaled =
      mam_multiply_by_quantized_multiplier(wrap_i32(acc), q->multiplier[r], q->shift[r]);
  const int32_t y = wrap_i32((uint32_t)scaled + (uint32_t)q->output_zero_point);
  return clamp_i32(y, q->act_min, q->act_max);
}

/* acc is int64 (wrapped); TFLM's 64-bit requantization. */
static inline int32_t finish_s16(uint64_t acc, const mam_requant *q, int32_t j) {
  const int32_t r = q->per_row ? j : 0;
  const int32_t scaled =
      mam_multiply_by_quantized_multiplier_64(wrap_i64(acc), q->multiplier[r], q->shift[r]);
  const int32_t y = wrap_i32((uint32_t)scaled + (uint32_t)q->output_zero_point);
  return clamp_i32(y, q->act_min, q->act_max);
}

/* Sparse kernels: the s8 and s16 twins of each op side by side. */
void mam_sparse_s8_portable(const mam_csr *w, const mam_requant *q, const int32_t *bias,
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

void mam_sparse_s16_portable(const mam_csr *w, const mam_requant *q, const int64_t *bias,
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

void mac_sparse_s8_portable(const mam_csr *w, const mam_requant *q, const int32_t *bias,
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

void mac_sparse_s16_portable(const mam_csr *w, const mam_requant *q, const int64_t *bias,
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

/* Dense baselines. */
void mac_dense_s8(const int8_t *weights, int32_t m, int32_t n, const mam_requant *q,
                  const int32_t *bias, const int8_t *input, int32_t batches, int8_t *output) {
  const int32_t zx = q->input_zero_point;
  for (int32_t b = 0; b < batches; ++b) {
    const int8_t *x = input + (size_t)b * (size_t)n;
    for (int32_t j = 0; j < m; ++j) {
      const int8_t *wr = weights + (size_t)j * (size_t)n;
      uint32_t acc = 0;
      for (int32_t i = 0; i < n; ++i) {
        acc += (uint32_t)(((int32_t)x[i] - zx) * (int32_t)wr[i]);
      }
      if (bias != NULL) acc += (uint32_t)bias[j];
      output[(size_t)b * (size_t)m + (size_t)j] = (int8_t)finish_s8(acc, q, j);
    }
  }
}

void mac_dense_s16(const int8_t *weights, int32_t m, int32_t n, const mam_requant *q,
                   const int64_t *bias, const int16_t *input, int32_t batches,
                   int16_t *output) {
  for (int32_t b = 0; b < batches; ++b) {
    const int16_t *x = input + (size_t)b * (size_t)n;
    for (int32_t j = 0; j < m; ++j) {
      const int8_t *wr = weights + (size_t)j * (size_t)n;
      uint64_t acc = 0;
      for (int32_t i = 0; i < n; ++i) {
        acc += (uint64_t)(int64_t)((int32_t)x[i] * (int32_t)wr[i]);
      }
      if (bias != NULL) acc += (uint64_t)bias[j];
      output[(size_t)b * (size_t)m + (size_t)j] = (int16_t)finish_s16(acc, q, j);
    }
  }
}

void mam_dense_s8(const int8_t *weights, int32_t m, int32_t n, const mam_requant *q,
                  const int32_t *bias, const int8_t *input, int32_t batches, int8_t *output) {
  const int32_t zx = q->input_zero_point;
  for (int32_t b = 0; b < batches; ++b) {
    const int8_t *x = input + (size_t)b * (size_t)n;
    for (int32_t j = 0; j < m; ++j) {
      const int8_t *wr = weights + (size_t)j * (size_t)n;
      int32_t hi = INT32_MIN, lo = INT32_MAX;
      for (int32_t i = 0; i < n; ++i) {
        const int32_t p = ((int32_t)x[i] - zx) * (int32_t)wr[i];
        if (p > hi) hi = p;
        if (p < lo) lo = p;
      }
      uint32_t acc = (uint32_t)hi + (uint32_t)lo;
      if (bias != NULL) acc += (uint32_t)bias[j];
      output[(size_t)b * (size_t)m + (size_t)j] = (int8_t)finish_s8(acc, q, j);
    }
  }
}

void mam_dense_s16(const int8_t *weights, int32_t m, int32_t n, const mam_requant *q,
                   const int64_t *bias, const int16_t *input, int32_t batches,
                   int16_t *output) {
  for (int32_t b = 0; b < batches; ++b) {
    const int16_t *x = input + (size_t)b * (size_t)n;
    for (int32_t j = 0; j < m; ++j) {
      const int8_t *wr = weights + (size_t)j * (size_t)n;
      int32_t hi = INT32_MIN, lo = INT32_MAX;
      for (int32_t i = 0; i < n; ++i) {
        const int32_t p = (int32_t)x[i] * (int32_t)wr[i];
        if (p > hi) hi = p;
        if (p < lo) lo = p;
      }
      uint64_t acc = (uint64_t)(int64_t)hi + (uint64_t)(int64_t)lo;
      if (bias != NULL) acc += (uint64_t)bias[j];
      output[(size_t)b * (size_t)m + (size_t)j] = (int16_t)finish_s16(acc, q, j);
    }
  }
}
