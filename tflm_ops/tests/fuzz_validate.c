/* Fuzz driver for mam_validate / mam_validate_requant and the kernels.
 *
 *   fuzz_validate [cases] [seed]
 *
 * Each case builds a random, consistent MAM_SPARSE node (random pruned matrix, offset-CSR
 * with dummy entries, int8 or int16, bias or not, per-tensor or per-row requantization),
 * applies 0..4 random corruptions of what a model file can say (row counts, offsets, E of
 * either array, N, shapes, types, tensor counts, options, activation, zero points,
 * multipliers, shifts, clamp), allocates every buffer at EXACTLY the length the corrupted
 * description declares, and calls the validation. Only when validation passes do the
 * kernels run (all four of the mode); their results are then compared against the dense
 * kernels on the decoded matrix. Built with -fsanitize=address,undefined, any read or write
 * outside a declared buffer aborts the run.
 *
 * Prints one summary line "cases=<n> valid=<n> kernel_runs=<n> mismatches=<n> ..." and exits
 * 0 only when nothing mismatched and every message was one well-formed line.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mam_sparse/core.h"

static uint64_t g_state;

static uint64_t next_u64(void) { /* splitmix64 */
  uint64_t z = (g_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Uniform in [lo, hi] (inclusive). */
static int64_t rnd(int64_t lo, int64_t hi) {
  const uint64_t span = (uint64_t)(hi - lo) + 1u;
  return lo + (int64_t)(next_u64() % span);
}

static int chance(int percent) { return rnd(0, 99) < percent; }

static void *xmalloc(size_t bytes) {
  /* Never malloc(0): an exact, possibly empty, allocation that ASan still bounds. */
  void *p = malloc(bytes == 0 ? 1 : bytes);
  if (p == NULL) {
    fprintf(stderr, "out of memory\n");
    exit(2);
  }
  return p;
}

/* Resize to exactly new_len elements, keeping what fits and filling the rest randomly. */
static void *resize(void *old, size_t old_len, size_t new_len, size_t elem) {
  unsigned char *p = (unsigned char *)xmalloc(new_len * elem);
  const size_t keep = (old_len < new_len ? old_len : new_len) * elem;
  if (keep) memcpy(p, old, keep);
  for (size_t i = keep; i < new_len * elem; ++i) p[i] = (unsigned char)next_u64();
  free(old);
  return p;
}

typedef struct {
  int32_t m, n;
  int8_t *dense; /* [m][n] */
  int8_t *values;
  uint8_t *offsets;
  int16_t *row_counts;
  int32_t e;
} layer;

/* Offset-CSR encoding (docs/operator-contract.md section 2), written independently of
 * mam_tf.deploy.offset_csr. */
static void encode(layer *l) {
  int32_t e = 0;
  for (int32_t j = 0; j < l->m; ++j) {
    int32_t prev = -1;
    for (int32_t c = 0; c < l->n; ++c) {
      if (l->dense[(size_t)j * l->n + c] == 0) continue;
      e += 1 + (c - prev - 1) / 256;
      prev = c;
    }
  }
  l->e = e;
  l->values = (int8_t *)xmalloc((size_t)e);
  l->offsets = (uint8_t *)xmalloc((size_t)e);
  l->row_counts = (int16_t *)xmalloc((size_t)l->m * sizeof(int16_t));
  int32_t k = 0;
  for (int32_t j = 0; j < l->m; ++j) {
    int32_t prev = -1;
    const int32_t start = k;
    for (int32_t c = 0; c < l->n; ++c) {
      const int8_t v = l->dense[(size_t)j * l->n + c];
      if (v == 0) continue;
      int32_t gap = c - prev - 1;
      while (gap > 255) {
        l->values[k] = 0;
        l->offsets[k++] = 255;
        gap -= 256;
      }
      l->values[k] = v;
      l->offsets[k++] = (uint8_t)gap;
      prev = c;
    }
    l->row_counts[j] = (int16_t)(k - start);
  }
}

static int8_t random_weight(void) {
  int8_t v;
  do v = (int8_t)rnd(-128, 127); while (v == 0);
  return v;
}

static const int32_t kTypes[] = {MAM_TYPE_NONE, MAM_TYPE_INT32, MAM_TYPE_UINT8, MAM_TYPE_INT64,
                                 MAM_TYPE_INT16, MAM_TYPE_INT8,  1 /* float32 */, 17, -1, 99};

static int32_t random_type(void) { return kTypes[rnd(0, (int64_t)(sizeof(kTypes) / sizeof(kTypes[0])) - 1)]; }

static int check_message(const char *msg, size_t cap, int status, long long case_no) {
  if (cap == 0) return 1;
  size_t len = 0;
  while (len < cap && msg[len] != '\0') ++len;
  if (len >= cap) {
    fprintf(stderr, "case %lld: message not NUL-terminated within %zu bytes\n", case_no, cap);
    return 0;
  }
  if (strchr(msg, '\n') != NULL || strchr(msg, '\r') != NULL) {
    fprintf(stderr, "case %lld: message spans lines: %s\n", case_no, msg);
    return 0;
  }
  if (status == MAM_OK && len != 0) {
    fprintf(stderr, "case %lld: success left a message: %s\n", case_no, msg);
    return 0;
  }
  if (status != MAM_OK && cap >= 64 && strncmp(msg, "MAM_SPARSE: ", 12) != 0) {
    fprintf(stderr, "case %lld: error %d without a message: '%s'\n", case_no, status, msg);
    return 0;
  }
  return 1;
}

int main(int argc, char **argv) {
  const long long cases = argc > 1 ? atoll(argv[1]) : 100000;
  g_state = argc > 2 ? strtoull(argv[2], NULL, 10) : 20240601u;
  long long valid = 0, kernel_runs = 0, mismatches = 0, bad_messages = 0, corrupted = 0;
  long long by_status[16] = {0};
  long long requant_rejected = 0;
  long long prepared = 0;

  for (long long c = 0; c < cases; ++c) {
    /* ---- a consistent node ---- */
    layer l;
    l.m = (int32_t)rnd(1, 12);
    l.n = (int32_t)(chance(20) ? rnd(256, 1400) : rnd(1, 300));
    l.dense = (int8_t *)xmalloc((size_t)l.m * (size_t)l.n);
    const int density = (int)rnd(0, 100);
    for (int32_t j = 0; j < l.m; ++j) {
      const int kind = (int)rnd(0, 9); /* 0: empty row, 1: full row, else random density */
      for (int32_t i = 0; i < l.n; ++i) {
        int8_t v = 0;
        if (kind == 1 || (kind > 1 && rnd(0, 999) < density * 10 / (chance(30) ? 50 : 1))) {
          v = random_weight();
        }
        l.dense[(size_t)j * l.n + i] = v;
      }
    }
    encode(&l);

    const int s8 = chance(50);
    const int32_t in_type = s8 ? MAM_TYPE_INT8 : MAM_TYPE_INT16;
    const int has_bias = chance(60);
    const int32_t batches = (int32_t)rnd(0, 3);

    mam_layer_desc d;
    memset(&d, 0, sizeof(d));
    d.num_inputs = has_bias ? 5 : (chance(50) ? 4 : 5);
    d.num_outputs = 1;
    d.input_type = in_type;
    d.values_type = MAM_TYPE_INT8;
    d.offsets_type = MAM_TYPE_UINT8;
    d.row_counts_type = MAM_TYPE_INT16;
    d.bias_type = has_bias ? (s8 ? MAM_TYPE_INT32 : MAM_TYPE_INT64) : MAM_TYPE_NONE;
    d.output_type = in_type;
    d.input_elements = (int64_t)batches * l.n;
    d.output_elements = (int64_t)batches * l.m;
    d.input_last_dim = l.n;
    d.output_last_dim = l.m;
    d.values_len = l.e;
    d.offsets_len = l.e;
    d.row_counts_len = l.m;
    d.bias_len = has_bias ? l.m : 0;
    d.in_features = l.n;
    d.activation = (int32_t)rnd(0, 3);
    d.version = 1;
    d.weight_scale_count = chance(50) ? 1 : l.m;
    d.weight_zero_point = 0;
    d.input_zero_point = s8 ? (int32_t)rnd(-128, 127) : 0;
    d.output_zero_point = s8 ? (int32_t)rnd(-128, 127) : 0;

    mam_requant q;
    memset(&q, 0, sizeof(q));
    q.per_row = chance(50);
    int32_t qcount = q.per_row ? l.m : 1;
    int32_t *mult = (int32_t *)xmalloc((size_t)qcount * sizeof(int32_t));
    int32_t *shift = (int32_t *)xmalloc((size_t)qcount * sizeof(int32_t));
    for (int32_t j = 0; j < qcount; ++j) {
      mult[j] = chance(5) ? 0 : (int32_t)rnd(1 << 30, INT32_MAX);
      shift[j] = (int32_t)rnd(MAM_SHIFT_MIN, s8 ? MAM_SHIFT_MAX_S8 : MAM_SHIFT_MAX_S16);
      if (chance(80)) shift[j] = (int32_t)rnd(-20, 0);
    }
    q.input_zero_point = d.input_zero_point;
    q.output_zero_point = d.output_zero_point;
    {
      const int32_t lo = s8 ? INT8_MIN : INT16_MIN, hi = s8 ? INT8_MAX : INT16_MAX;
      q.act_min = (int32_t)rnd(lo, hi);
      q.act_max = (int32_t)rnd(q.act_min, hi);
      if (chance(40)) {
        q.act_min = lo;
        q.act_max = hi;
      }
    }

    d.input_quantized = d.output_quantized = 1;
    d.input_scale = (float)rnd(1, 1000) / 4096.0f;
    d.output_scale = (float)rnd(1, 1000) / 4096.0f;

    /* ---- corruptions ---- */
    int32_t rc_len = l.m, v_len = l.e, o_len = l.e;
    int64_t bytes_delta[4] = {0, 0, 0, 0};
    int bad_weight_scale = 0;
    const int ncorrupt = chance(30) ? 0 : (int)rnd(1, 4);
    if (ncorrupt) ++corrupted;
    for (int t = 0; t < ncorrupt; ++t) {
      switch ((int)rnd(0, 23)) {
        case 0: { /* one row count */
          const int32_t j = (int32_t)rnd(0, rc_len - 1 < 0 ? 0 : rc_len - 1);
          if (rc_len > 0) {
            static const int32_t deltas[] = {-1, 1, -2, 2, 100, -100, 255, 256};
            const int32_t v = chance(50) ? l.row_counts[j] + deltas[rnd(0, 7)]
                                         : (int32_t)rnd(INT16_MIN, INT16_MAX);
            l.row_counts[j] = (int16_t)(v < INT16_MIN ? INT16_MIN : v > INT16_MAX ? INT16_MAX : v);
          }
          break;
        }
        case 1: /* one offset */
          if (o_len > 0) l.offsets[rnd(0, o_len - 1)] = (uint8_t)rnd(0, 255);
          break;
        case 2: { /* E of values */
          const int32_t nl = (int32_t)(chance(50) ? v_len + rnd(-2, 2) : rnd(0, 3 * (int64_t)l.e + 3));
          if (nl >= 0) {
            l.values = (int8_t *)resize(l.values, (size_t)v_len, (size_t)nl, 1);
            v_len = nl;
          } else {
            d.values_len = nl; /* a negative length: no buffer change */
            break;
          }
          d.values_len = v_len;
          break;
        }
        case 3: { /* E of offsets */
          const int32_t nl = (int32_t)(chance(50) ? o_len + rnd(-2, 2) : rnd(0, 3 * (int64_t)l.e + 3));
          if (nl >= 0) {
            l.offsets = (uint8_t *)resize(l.offsets, (size_t)o_len, (size_t)nl, 1);
            o_len = nl;
            d.offsets_len = o_len;
          } else {
            d.offsets_len = nl;
          }
          break;
        }
        case 4: { /* a consistent extra (or missing) entry: lengths agree, columns may not */
          if (rc_len > 0) {
            const int32_t j = (int32_t)rnd(0, rc_len - 1);
            const int32_t delta = chance(50) ? 1 : -1;
            if (l.row_counts[j] + delta >= 0 && l.row_counts[j] + delta <= INT16_MAX &&
                v_len + delta >= 0 && o_len == v_len) {
              l.row_counts[j] = (int16_t)(l.row_counts[j] + delta);
              l.values = (int8_t *)resize(l.values, (size_t)v_len, (size_t)(v_len + delta), 1);
              l.offsets = (uint8_t *)resize(l.offsets, (size_t)o_len, (size_t)(o_len + delta), 1);
              v_len += delta;
              o_len += delta;
              d.values_len = v_len;
              d.offsets_len = o_len;
            }
          }
          break;
        }
        case 5: { /* N, consistently in every shape: only the columns can tell */
          const int32_t nn = (int32_t)(chance(50) ? l.n + rnd(-300, 300) : rnd(-3, 4));
          d.in_features = nn;
          d.input_last_dim = nn;
          d.input_elements = (int64_t)batches * nn;
          break;
        }
        case 6: d.in_features = (int32_t)(chance(50) ? d.in_features + rnd(-2, 2) : rnd(INT32_MIN, INT32_MAX)); break;
        case 7: d.input_last_dim = (int32_t)(d.input_last_dim + rnd(-2, 2)); break;
        case 8: d.input_elements = chance(50) ? d.input_elements + rnd(-3, 3) : rnd(-5, 5000); break;
        case 9: d.output_elements = chance(50) ? d.output_elements + rnd(-3, 3) : rnd(-5, 5000); break;
        case 10: d.output_last_dim = (int32_t)(d.output_last_dim + rnd(-2, 2)); break;
        case 11: { /* M */
          const int32_t nl = (int32_t)(chance(50) ? rc_len + rnd(-2, 2) : rnd(0, 20));
          if (nl >= 0) {
            l.row_counts = (int16_t *)resize(l.row_counts, (size_t)rc_len, (size_t)nl, sizeof(int16_t));
            rc_len = nl;
          }
          d.row_counts_len = nl;
          break;
        }
        case 12: d.activation = (int32_t)(chance(50) ? rnd(-2, 8) : rnd(INT32_MIN, INT32_MAX)); break;
        case 13: d.version = (int32_t)rnd(-1, 3); break;
        case 14: {
          int32_t *const fields[] = {&d.input_type, &d.values_type, &d.offsets_type,
                                     &d.row_counts_type, &d.bias_type, &d.output_type};
          *fields[rnd(0, 5)] = random_type();
          break;
        }
        case 15:
          if (chance(50)) d.num_inputs = (int32_t)rnd(0, 7);
          else d.num_outputs = (int32_t)rnd(0, 3);
          break;
        case 16: d.bias_len = (int32_t)(d.bias_len + rnd(-2, 2)); break;
        case 17:
          if (chance(50)) d.weight_scale_count = (int32_t)rnd(-1, l.m + 2);
          else d.weight_zero_point = (int32_t)rnd(-3, 3);
          break;
        case 18:
          if (chance(50)) d.input_zero_point = (int32_t)rnd(-40000, 40000);
          else d.output_zero_point = (int32_t)rnd(-40000, 40000);
          q.input_zero_point = d.input_zero_point;
          q.output_zero_point = d.output_zero_point;
          break;
        case 19: { /* a multiplier or shift */
          const int32_t j = (int32_t)rnd(0, qcount - 1);
          if (chance(50)) mult[j] = (int32_t)rnd(INT32_MIN, INT32_MAX);
          else shift[j] = (int32_t)rnd(-64, 64);
          break;
        }
        case 22: /* a byte size that disagrees with the shape (the buffer stays as it is) */
          bytes_delta[rnd(0, 3)] = chance(50) ? rnd(-2, 2) : rnd(INT32_MIN, INT32_MAX);
          break;
        case 23: { /* a scale: zero, negative, NaN, infinite, or an unquantized tensor */
          static const float bad[] = {0.0f, -0.5f, NAN, INFINITY, -INFINITY};
          const int which = (int)rnd(0, 4);
          if (which == 0) d.input_scale = bad[rnd(0, 4)];
          else if (which == 1) d.output_scale = bad[rnd(0, 4)];
          else if (which == 2) d.input_quantized = 0;
          else if (which == 3) d.output_quantized = 0;
          else bad_weight_scale = 1;
          break;
        }
        case 20: /* the clamp */
          q.act_min = (int32_t)rnd(-70000, 70000);
          q.act_max = (int32_t)rnd(-70000, 70000);
          break;
        default: { /* per-tensor <-> per-row (the glue then allocates M parameters) */
          q.per_row = !q.per_row;
          const int32_t nq = q.per_row ? (rc_len > 0 ? rc_len : 1) : 1;
          mult = (int32_t *)resize(mult, (size_t)qcount, (size_t)nq, sizeof(int32_t));
          shift = (int32_t *)resize(shift, (size_t)qcount, (size_t)nq, sizeof(int32_t));
          for (int32_t j = 0; j < nq; ++j) {
            if (j >= qcount) {
              mult[j] = (int32_t)rnd(0, INT32_MAX);
              shift[j] = (int32_t)rnd(-31, 7);
            }
          }
          qcount = nq;
          break;
        }
      }
    }
    d.offsets = l.offsets;
    d.row_counts = l.row_counts;
    /* The byte sizes of the buffers as allocated (plus any corruption of them). */
    d.values_bytes = (int64_t)v_len + bytes_delta[0];
    d.offsets_bytes = (int64_t)o_len + bytes_delta[1];
    d.row_counts_bytes = 2 * (int64_t)rc_len + bytes_delta[2];
    d.bias_bytes = (int64_t)(d.input_type == MAM_TYPE_INT8 ? 4 : 8) * d.bias_len + bytes_delta[3];
    /* The weight scales: exactly weight_scale_count of them. */
    const int32_t nscales = d.weight_scale_count > 0 ? d.weight_scale_count : 0;
    float *wscales = (float *)xmalloc((size_t)nscales * sizeof(float));
    for (int32_t j = 0; j < nscales; ++j) wscales[j] = (float)rnd(1, 1000) / 65536.0f;
    if (bad_weight_scale && nscales > 0) wscales[rnd(0, nscales - 1)] = chance(50) ? 0.0f : NAN;
    d.weight_scales = wscales;

    /* ---- validation ---- */
    static const size_t caps[] = {0, 1, 7, 64, 256};
    const size_t cap = caps[rnd(0, 4)];
    char *msg = cap ? (char *)xmalloc(cap) : NULL; /* exact size: ASan bounds the writes */
    if (msg) memset(msg, 'x', cap);
    int status = mam_validate(&d, msg, cap);
    if (!check_message(msg, cap, status, c)) ++bad_messages;
    if (status == MAM_OK) {
      const int32_t m = d.row_counts_len;
      /* A per-row requantization needs M parameters: that is Prepare's allocation. */
      if (q.per_row && qcount != m) {
        mult = (int32_t *)resize(mult, (size_t)qcount, (size_t)m, sizeof(int32_t));
        shift = (int32_t *)resize(shift, (size_t)qcount, (size_t)m, sizeof(int32_t));
        for (int32_t j = qcount; j < m; ++j) {
          mult[j] = (int32_t)rnd(0, INT32_MAX);
          shift[j] = (int32_t)rnd(-31, 7);
        }
        qcount = m;
      }
      q.multiplier = mult;
      q.shift = shift;
      if (msg) memset(msg, 'x', cap);
      status = mam_validate_requant(&q, m, d.input_type, msg, cap);
      if (!check_message(msg, cap, status, c)) ++bad_messages;
      if (status != MAM_OK) ++requant_rejected;
      { /* Prepare's own requantization from the scales: exactly count parameters. */
        const int32_t count = d.weight_scale_count > 1 ? m : 1;
        int32_t *pm = (int32_t *)xmalloc((size_t)count * sizeof(int32_t));
        int32_t *ps = (int32_t *)xmalloc((size_t)count * sizeof(int32_t));
        mam_requant pq;
        if (msg) memset(msg, 'x', cap);
        const int pstatus = mam_prepare_requant(&d, pm, ps, &pq, msg, cap);
        if (!check_message(msg, cap, pstatus, c)) ++bad_messages;
        if (pstatus == MAM_OK) ++prepared;
        free(pm);
        free(ps);
      }
    }
    by_status[status >= 0 && status < 16 ? status : 15]++;

    if (status == MAM_OK) {
      ++valid;
      /* Buffers at exactly the validated sizes. */
      const int32_t n = d.in_features, m = d.row_counts_len;
      const int32_t b = (int32_t)(d.input_elements / n);
      const size_t xs = (size_t)d.input_elements, ys = (size_t)d.output_elements;
      const int is8 = d.input_type == MAM_TYPE_INT8;
      const int with_bias = d.bias_type != MAM_TYPE_NONE;
      void *x = xmalloc(xs * (is8 ? 1 : 2));
      void *y1 = xmalloc(ys * (is8 ? 1 : 2));
      void *y2 = xmalloc(ys * (is8 ? 1 : 2));
      void *bias = with_bias ? xmalloc((size_t)m * (is8 ? 4 : 8)) : NULL;
      for (size_t i = 0; i < xs; ++i) {
        if (is8) ((int8_t *)x)[i] = (int8_t)rnd(INT8_MIN, INT8_MAX);
        else ((int16_t *)x)[i] = (int16_t)rnd(INT16_MIN, INT16_MAX);
      }
      for (int32_t j = 0; with_bias && j < m; ++j) {
        if (is8) ((int32_t *)bias)[j] = (int32_t)(chance(10) ? rnd(INT32_MIN, INT32_MAX) : rnd(-100000, 100000));
        else ((int64_t *)bias)[j] = chance(10) ? (int64_t)next_u64() : rnd(-10000000, 10000000);
      }
      /* Decode the validated layout into a dense matrix for the dense kernels. */
      int8_t *dense = (int8_t *)xmalloc((size_t)m * (size_t)n);
      memset(dense, 0, (size_t)m * (size_t)n);
      for (int32_t j = 0, k = 0; j < m; ++j) {
        int32_t col = -1;
        for (int32_t e = 0; e < l.row_counts[j]; ++e, ++k) {
          col += l.offsets[k] + 1;
          dense[(size_t)j * n + col] = l.values[k];
        }
      }
      const mam_csr w = {n, m, l.values, l.offsets, l.row_counts};
      for (int op = 0; op < 2; ++op) {
        if (is8) {
          (op ? mac_sparse_s8 : mam_sparse_s8)(&w, &q, (const int32_t *)bias, (const int8_t *)x, b, (int8_t *)y1);
          (op ? mac_dense_s8 : mam_dense_s8)(dense, m, n, &q, (const int32_t *)bias, (const int8_t *)x, b, (int8_t *)y2);
        } else {
          (op ? mac_sparse_s16 : mam_sparse_s16)(&w, &q, (const int64_t *)bias, (const int16_t *)x, b, (int16_t *)y1);
          (op ? mac_dense_s16 : mam_dense_s16)(dense, m, n, &q, (const int64_t *)bias, (const int16_t *)x, b, (int16_t *)y2);
        }
        kernel_runs += 2;
        if (memcmp(y1, y2, ys * (is8 ? 1 : 2)) != 0) {
          ++mismatches;
          fprintf(stderr, "case %lld: %s sparse != dense (m=%d n=%d b=%d)\n", c, op ? "MAC" : "MAM",
                  (int)m, (int)n, (int)b);
        }
        for (size_t i = 0; i < ys; ++i) { /* the clamp holds */
          const int32_t v = is8 ? ((int8_t *)y1)[i] : ((int16_t *)y1)[i];
          if (v < q.act_min || v > q.act_max) {
            ++mismatches;
            fprintf(stderr, "case %lld: output %d outside %d..%d\n", c, (int)v, (int)q.act_min, (int)q.act_max);
            break;
          }
        }
      }
      free(dense);
      free(x);
      free(y1);
      free(y2);
      free(bias);
    }
    free(msg);
    free(mult);
    free(shift);
    free(l.dense);
    free(wscales);
    free(l.values);
    free(l.offsets);
    free(l.row_counts);
  }

  printf("cases=%lld corrupted=%lld valid=%lld kernel_runs=%lld mismatches=%lld bad_messages=%lld",
         cases, corrupted, valid, kernel_runs, mismatches, bad_messages);
  for (int s = 1; s <= MAM_ERR_QUANT; ++s) printf(" %s=%lld", mam_status_name(s), by_status[s]);
  printf(" requant_rejected=%lld prepared=%lld\n", requant_rejected, prepared);
  return (mismatches == 0 && bad_messages == 0) ? 0 : 1;
}
