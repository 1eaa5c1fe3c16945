/* The portable core of MAM_SPARSE / MAC_SPARSE: see include/mam_sparse/core.h.
 *
 * Integer overflow: where TFLite's C++ leaves overflow undefined (int32 accumulators, the
 * left shift of the 32-bit requantization, the int64 product of the 64-bit one), this core
 * computes what a two's complement machine computes, with unsigned arithmetic, so that it
 * stays defined under -fsanitize=undefined and matches mam_tf.deploy.reference exactly.
 */
#include "mam_sparse/core.h"

#include <math.h>
#include <stdarg.h>

/* ---------------------------------------------------------------------------------------
 * Two's complement helpers, defined behaviour only
 * ------------------------------------------------------------------------------------- */
static inline int32_t wrap_i32(uint32_t u) {
  return (u <= 0x7FFFFFFFu) ? (int32_t)u : (int32_t)(u - 0x80000000u) + INT32_MIN;
}

static inline int64_t wrap_i64(uint64_t u) {
  return (u <= (uint64_t)INT64_MAX) ? (int64_t)u
                                    : (int64_t)(u - ((uint64_t)1 << 63)) + INT64_MIN;
}

/* Arithmetic shift right (C99 leaves >> of a negative value implementation-defined). */
static inline int32_t asr_i32(int32_t x, int s) { return x >= 0 ? x >> s : ~((~x) >> s); }
static inline int64_t asr_i64(int64_t x, int s) { return x >= 0 ? x >> s : ~((~x) >> s); }

/* ---------------------------------------------------------------------------------------
 * Fixed point (TFLite / gemmlowp semantics)
 * ------------------------------------------------------------------------------------- */
int32_t mam_saturating_rounding_doubling_high_mul(int32_t a, int32_t b) {
  if (a == INT32_MIN && b == INT32_MIN) return INT32_MAX;
  const int64_t ab = (int64_t)a * (int64_t)b;
  const int64_t nudge = ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
  /* C99 division truncates toward zero, as gemmlowp's does. */
  return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}

int32_t mam_rounding_divide_by_pot(int32_t x, int32_t exponent) {
  const int32_t mask = (int32_t)(((int64_t)1 << exponent) - 1);
  const int32_t remainder = x & mask;
  const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return asr_i32(x, exponent) + (remainder > threshold ? 1 : 0);
}

int32_t mam_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int32_t shift) {
  const int left = shift > 0 ? shift : 0;
  const int right = shift > 0 ? 0 : -shift;
  const int32_t shifted = wrap_i32((uint32_t)x << left);
  return mam_rounding_divide_by_pot(
      mam_saturating_rounding_doubling_high_mul(shifted, multiplier), right);
}

int32_t mam_multiply_by_quantized_multiplier_64(int64_t x, int32_t multiplier, int32_t shift) {
  const int32_t reduced =
      (multiplier < 0x7FFF0000) ? ((multiplier + (1 << 15)) >> 16) : 0x7FFF;
  const int total_shift = 15 - shift;
  const uint64_t round = (uint64_t)1 << (total_shift - 1);
  const int64_t r = wrap_i64((uint64_t)x * (uint64_t)(int64_t)reduced + round);
  return wrap_i32((uint32_t)(uint64_t)asr_i64(r, total_shift));
}

int mam_quantize_multiplier(double real, int32_t *multiplier, int32_t *shift) {
  if (multiplier == NULL || shift == NULL) return MAM_ERR_ARGUMENT;
  *multiplier = 0;
  *shift = 0;
  if (!isfinite(real) || real < 0.0) return MAM_ERR_QUANT;
  if (real == 0.0) return MAM_OK;
  int exponent = 0;
  const double q = frexp(real, &exponent);
  int64_t q_fixed = (int64_t)round(q * 2147483648.0);
  if (q_fixed == ((int64_t)1 << 31)) { /* rounding carried into bit 31 */
    q_fixed /= 2;
    ++exponent;
  }
  if (exponent < -31) return MAM_OK; /* flushed to zero, as TFLite does */
  *multiplier = (int32_t)q_fixed;
  *shift = exponent;
  return MAM_OK;
}

double mam_effective_scale(float input_scale, float weight_scale, float output_scale,
                           int32_t per_row) {
  if (per_row) {
    return (double)input_scale * (double)weight_scale / (double)output_scale;
  }
  /* Assigning to a float drops any extra precision (C99 5.1.2.3), as TFLite's float
   * product does before it is widened. */
  const float product = input_scale * weight_scale;
  return (double)product / (double)output_scale;
}

static int type_range(int32_t type_code, int32_t *lo, int32_t *hi) {
  if (type_code == MAM_TYPE_INT8) {
    *lo = INT8_MIN;
    *hi = INT8_MAX;
    return 1;
  }
  if (type_code == MAM_TYPE_INT16) {
    *lo = INT16_MIN;
    *hi = INT16_MAX;
    return 1;
  }
  return 0;
}

/* TFLite's Quantize() inside CalculateActivationRangeQuantized: float math, std::round. */
static int quantize_bound(float f, float scale, int32_t zero_point, int32_t *q) {
  const float t = roundf(f / scale);
  if (!(t >= -2147483648.0f && t < 2147483648.0f)) return 0;
  const int64_t v = (int64_t)zero_point + (int64_t)t;
  *q = (v < INT32_MIN) ? INT32_MIN : (v > INT32_MAX) ? INT32_MAX : (int32_t)v;
  return 1;
}

int mam_activation_range(int32_t activation, float output_scale, int32_t output_zero_point,
                         int32_t type_code, int32_t *act_min, int32_t *act_max) {
  int32_t qmin, qmax, lo, hi;
  if (act_min == NULL || act_max == NULL) return MAM_ERR_ARGUMENT;
  if (!type_range(type_code, &qmin, &qmax)) return MAM_ERR_TYPE;
  switch (activation) {
    case MAM_ACT_NONE:
      *act_min = qmin;
      *act_max = qmax;
      return MAM_OK;
    case MAM_ACT_RELU:
      if (!quantize_bound(0.0f, output_scale, output_zero_point, &lo)) return MAM_ERR_QUANT;
      *act_min = lo > qmin ? lo : qmin;
      *act_max = qmax;
      return MAM_OK;
    case MAM_ACT_RELU_N1_TO_1:
      if (!quantize_bound(-1.0f, output_scale, output_zero_point, &lo) ||
          !quantize_bound(1.0f, output_scale, output_zero_point, &hi)) {
        return MAM_ERR_QUANT;
      }
      *act_min = lo > qmin ? lo : qmin;
      *act_max = hi < qmax ? hi : qmax;
      return MAM_OK;
    case MAM_ACT_RELU6:
      if (!quantize_bound(0.0f, output_scale, output_zero_point, &lo) ||
          !quantize_bound(6.0f, output_scale, output_zero_point, &hi)) {
        return MAM_ERR_QUANT;
      }
      *act_min = lo > qmin ? lo : qmin;
      *act_max = hi < qmax ? hi : qmax;
      return MAM_OK;
    default:
      return MAM_ERR_ACTIVATION;
  }
}

/* ---------------------------------------------------------------------------------------
 * Messages: a tiny formatter (%s and %d taking long long), so the core needs no stdio
 * ------------------------------------------------------------------------------------- */
typedef struct {
  char *buf;
  size_t cap;
  size_t len;
} msgbuf;

static void put_char(msgbuf *mb, char c) {
  if (c == '\n' || c == '\r') c = ' '; /* one line, whatever the strings hold */
  if (mb->cap > 0 && mb->len + 1 < mb->cap) mb->buf[mb->len++] = c;
}

static void put_str(msgbuf *mb, const char *s) {
  while (s != NULL && *s != '\0') put_char(mb, *s++);
}

static void put_ll(msgbuf *mb, long long v) {
  char digits[24];
  int n = 0;
  unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
  do {
    digits[n++] = (char)('0' + (int)(u % 10u));
    u /= 10u;
  } while (u != 0u);
  if (v < 0) put_char(mb, '-');
  while (n > 0) put_char(mb, digits[--n]);
}

static int fail(char *msg, size_t msg_len, int status, const char *fmt, ...) {
  msgbuf mb;
  va_list ap;
  mb.buf = msg;
  mb.cap = msg == NULL ? 0 : msg_len;
  mb.len = 0;
  put_str(&mb, "MAM_SPARSE: ");
  va_start(ap, fmt);
  for (; *fmt != '\0'; ++fmt) {
    if (fmt[0] == '%' && fmt[1] == 's') {
      put_str(&mb, va_arg(ap, const char *));
      ++fmt;
    } else if (fmt[0] == '%' && fmt[1] == 'd') {
      put_ll(&mb, va_arg(ap, long long));
      ++fmt;
    } else {
      put_char(&mb, *fmt);
    }
  }
  va_end(ap);
  if (mb.cap > 0) mb.buf[mb.len] = '\0';
  return status;
}

static void succeed(char *msg, size_t msg_len) {
  if (msg != NULL && msg_len > 0) msg[0] = '\0';
}

#define LL(x) ((long long)(x))

const char *mam_status_name(int status) {
  switch (status) {
    case MAM_OK: return "MAM_OK";
    case MAM_ERR_ARGUMENT: return "MAM_ERR_ARGUMENT";
    case MAM_ERR_TENSOR_COUNT: return "MAM_ERR_TENSOR_COUNT";
    case MAM_ERR_TYPE: return "MAM_ERR_TYPE";
    case MAM_ERR_SHAPE: return "MAM_ERR_SHAPE";
    case MAM_ERR_LENGTH: return "MAM_ERR_LENGTH";
    case MAM_ERR_ROW_COUNT: return "MAM_ERR_ROW_COUNT";
    case MAM_ERR_COLUMN: return "MAM_ERR_COLUMN";
    case MAM_ERR_ACTIVATION: return "MAM_ERR_ACTIVATION";
    case MAM_ERR_OPTIONS: return "MAM_ERR_OPTIONS";
    case MAM_ERR_QUANT: return "MAM_ERR_QUANT";
    default: return "MAM_ERR_UNKNOWN";
  }
}

static const char *type_name(int32_t t) {
  switch (t) {
    case MAM_TYPE_NONE: return "none";
    case MAM_TYPE_INT32: return "int32";
    case MAM_TYPE_UINT8: return "uint8";
    case MAM_TYPE_INT64: return "int64";
    case MAM_TYPE_INT16: return "int16";
    case MAM_TYPE_INT8: return "int8";
    default: return "an unsupported type";
  }
}

/* ---------------------------------------------------------------------------------------
 * Validation (Prepare)
 * ------------------------------------------------------------------------------------- */
static int check_type(char *msg, size_t len, const char *what, int32_t got, int32_t want) {
  if (got == want) return MAM_OK;
  return fail(msg, len, MAM_ERR_TYPE, "%s tensor is %s (type %d); it must be %s", what,
              type_name(got), LL(got), type_name(want));
}

int mam_validate(const mam_layer_desc *d, char *msg, size_t msg_len) {
  int status;
  int32_t zmin = 0, zmax = 0;
  if (d == NULL) return fail(msg, msg_len, MAM_ERR_ARGUMENT, "no layer description");

  if (d->num_outputs != 1) {
    return fail(msg, msg_len, MAM_ERR_TENSOR_COUNT, "node has %d outputs; it must have 1",
                LL(d->num_outputs));
  }
  if (d->num_inputs != 4 && d->num_inputs != 5) {
    return fail(msg, msg_len, MAM_ERR_TENSOR_COUNT,
                "node has %d inputs; it must have 4, or 5 with a bias", LL(d->num_inputs));
  }

  /* Custom options. */
  if (d->version != 1) {
    return fail(msg, msg_len, MAM_ERR_OPTIONS, "custom option version is %d; this kernel reads 1",
                LL(d->version));
  }
  if (d->in_features < 1) {
    return fail(msg, msg_len, MAM_ERR_OPTIONS, "custom option in_features is %d; it must be >= 1",
                LL(d->in_features));
  }
  if (d->activation < MAM_ACT_NONE || d->activation > MAM_ACT_RELU6) {
    return fail(msg, msg_len, MAM_ERR_ACTIVATION,
                "fused_activation_function is %d; known: 0 NONE, 1 RELU, 2 RELU_N1_TO_1, 3 RELU6",
                LL(d->activation));
  }

  /* Types. */
  if (d->input_type != MAM_TYPE_INT8 && d->input_type != MAM_TYPE_INT16) {
    return fail(msg, msg_len, MAM_ERR_TYPE, "input tensor is %s (type %d); it must be int8 or int16",
                type_name(d->input_type), LL(d->input_type));
  }
  const int is_s8 = d->input_type == MAM_TYPE_INT8;
  if ((status = check_type(msg, msg_len, "output", d->output_type, d->input_type)) != MAM_OK ||
      (status = check_type(msg, msg_len, "values", d->values_type, MAM_TYPE_INT8)) != MAM_OK ||
      (status = check_type(msg, msg_len, "offsets", d->offsets_type, MAM_TYPE_UINT8)) != MAM_OK ||
      (status = check_type(msg, msg_len, "row_counts", d->row_counts_type, MAM_TYPE_INT16)) !=
          MAM_OK) {
    return status;
  }
  const int has_bias = d->bias_type != MAM_TYPE_NONE;
  if (has_bias && d->num_inputs != 5) {
    return fail(msg, msg_len, MAM_ERR_TENSOR_COUNT, "a bias is given but the node has %d inputs",
                LL(d->num_inputs));
  }
  if (has_bias &&
      (status = check_type(msg, msg_len, "bias", d->bias_type,
                           is_s8 ? MAM_TYPE_INT32 : MAM_TYPE_INT64)) != MAM_OK) {
    return status;
  }

  /* Shapes. */
  const int64_t n = d->in_features;
  const int32_t m = d->row_counts_len;
  if (d->input_last_dim != d->in_features) {
    return fail(msg, msg_len, MAM_ERR_SHAPE, "input last dimension is %d but in_features is %d",
                LL(d->input_last_dim), LL(d->in_features));
  }
  if (d->input_elements < 0 || d->input_elements % n != 0) {
    return fail(msg, msg_len, MAM_ERR_SHAPE, "input holds %d elements, not a multiple of N = %d",
                LL(d->input_elements), LL(n));
  }
  const int64_t batches = d->input_elements / n;
  if (batches > INT32_MAX) {
    return fail(msg, msg_len, MAM_ERR_SHAPE, "input has %d rows; at most %d are supported",
                LL(batches), LL(INT32_MAX));
  }
  if (m < 1) {
    return fail(msg, msg_len, MAM_ERR_SHAPE, "row_counts has %d entries; M must be >= 1", LL(m));
  }
  if (d->output_last_dim != m) {
    return fail(msg, msg_len, MAM_ERR_SHAPE, "output last dimension is %d but row_counts says M = %d",
                LL(d->output_last_dim), LL(m));
  }
  if (d->output_elements != batches * (int64_t)m) {
    return fail(msg, msg_len, MAM_ERR_SHAPE,
                "output holds %d elements; B * M = %d * %d = %d", LL(d->output_elements),
                LL(batches), LL(m), LL(batches * (int64_t)m));
  }
  if (has_bias && d->bias_len != m) {
    return fail(msg, msg_len, MAM_ERR_SHAPE, "bias has %d entries; M = %d", LL(d->bias_len), LL(m));
  }

  /* The offset-CSR arrays. */
  if (d->values_len < 0 || d->offsets_len < 0) {
    return fail(msg, msg_len, MAM_ERR_LENGTH, "negative tensor length (values %d, offsets %d)",
                LL(d->values_len), LL(d->offsets_len));
  }
  if (d->values_len != d->offsets_len) {
    return fail(msg, msg_len, MAM_ERR_LENGTH, "values has %d entries but offsets has %d",
                LL(d->values_len), LL(d->offsets_len));
  }
  {
    /* The data behind each constant must be as long as its shape says: read nothing yet. */
    const int64_t bias_elem = is_s8 ? 4 : 8;
    const struct {
      const char *name;
      int64_t bytes, need;
      int present;
    } sizes[] = {
        {"values", d->values_bytes, (int64_t)d->values_len, 1},
        {"offsets", d->offsets_bytes, (int64_t)d->offsets_len, 1},
        {"row_counts", d->row_counts_bytes, 2 * (int64_t)m, 1},
        {"bias", d->bias_bytes, bias_elem * (int64_t)d->bias_len, has_bias},
    };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); ++i) {
      if (sizes[i].present && sizes[i].bytes != sizes[i].need) {
        return fail(msg, msg_len, MAM_ERR_LENGTH, "%s holds %d bytes; its shape needs %d",
                    sizes[i].name, LL(sizes[i].bytes), LL(sizes[i].need));
      }
    }
  }
  if (d->row_counts == NULL || (d->offsets == NULL && d->offsets_len > 0)) {
    return fail(msg, msg_len, MAM_ERR_ARGUMENT, "row_counts or offsets data is missing");
  }
  int64_t total = 0;
  for (int32_t j = 0; j < m; ++j) {
    if (d->row_counts[j] < 0) {
      return fail(msg, msg_len, MAM_ERR_ROW_COUNT, "row %d has a negative row count %d", LL(j),
                  LL(d->row_counts[j]));
    }
    total += d->row_counts[j];
  }
  if (total != d->values_len) {
    return fail(msg, msg_len, MAM_ERR_LENGTH, "row_counts sum to %d but values has %d entries",
                LL(total), LL(d->values_len));
  }
  int64_t k = 0; /* < E: every read below is in bounds */
  for (int32_t j = 0; j < m; ++j) {
    int64_t col = -1;
    for (int32_t e = 0; e < d->row_counts[j]; ++e, ++k) {
      col += (int64_t)d->offsets[k] + 1;
      if (col >= n) {
        return fail(msg, msg_len, MAM_ERR_COLUMN,
                    "row %d entry %d decodes column %d >= in_features %d", LL(j), LL(e),
                    LL(col), LL(n));
      }
    }
  }

  /* Quantization parameters that Prepare reads from the tensors. */
  if (d->weight_scale_count != 1 && d->weight_scale_count != m) {
    return fail(msg, msg_len, MAM_ERR_QUANT,
                "values has %d scales; it must have 1 (per tensor) or M = %d (per row)",
                LL(d->weight_scale_count), LL(m));
  }
  if (d->weight_zero_point != 0) {
    return fail(msg, msg_len, MAM_ERR_QUANT, "values zero point is %d; weights must be symmetric (0)",
                LL(d->weight_zero_point));
  }
  type_range(d->input_type, &zmin, &zmax);
  if (!is_s8) zmin = zmax = 0;
  if (d->input_zero_point < zmin || d->input_zero_point > zmax ||
      d->output_zero_point < zmin || d->output_zero_point > zmax) {
    return fail(msg, msg_len, MAM_ERR_QUANT,
                "zero points (input %d, output %d) must lie in %d..%d for %s activations",
                LL(d->input_zero_point), LL(d->output_zero_point), LL(zmin), LL(zmax),
                type_name(d->input_type));
  }
  /* !(s > 0) is also true for NaN. */
  if (!d->input_quantized || !d->output_quantized || !(d->input_scale > 0.0f) ||
      !(d->output_scale > 0.0f) || !isfinite(d->input_scale) || !isfinite(d->output_scale)) {
    return fail(msg, msg_len, MAM_ERR_QUANT,
                "input and output need a per-tensor quantization scale > 0");
  }
  if (d->weight_scales == NULL) {
    return fail(msg, msg_len, MAM_ERR_ARGUMENT, "the weight scales are missing");
  }
  for (int32_t j = 0; j < d->weight_scale_count; ++j) {
    /* TFLite gives a row whose weights are all zero the scale 0 (as FULLY_CONNECTED takes
     * it: multiplier 0); such a row stores no entry. Per tensor: no entry at all. */
    const int empty = d->weight_scale_count > 1 ? d->row_counts[j] == 0 : d->values_len == 0;
    const float s = d->weight_scales[j];
    if (!isfinite(s) || !(s > 0.0f || (s == 0.0f && empty))) {
      return fail(msg, msg_len, MAM_ERR_QUANT, "weight scale %d is not a finite value > 0",
                  LL(j));
    }
  }
  succeed(msg, msg_len);
  return MAM_OK;
}

int mam_prepare_requant(const mam_layer_desc *d, int32_t *multiplier, int32_t *shift,
                        mam_requant *q, char *msg, size_t msg_len) {
  if (d == NULL || multiplier == NULL || shift == NULL || q == NULL || d->weight_scales == NULL) {
    return fail(msg, msg_len, MAM_ERR_ARGUMENT, "requantization arguments are missing");
  }
  const int32_t m = d->row_counts_len;
  const int32_t per_row = d->weight_scale_count > 1 ? 1 : 0;
  const int32_t count = per_row ? m : 1;
  for (int32_t j = 0; j < count; ++j) {
    const double real = mam_effective_scale(d->input_scale, d->weight_scales[j],
                                            d->output_scale, per_row);
    if (mam_quantize_multiplier(real, &multiplier[j], &shift[j]) != MAM_OK) {
      return fail(msg, msg_len, MAM_ERR_QUANT, "row %d has no valid requantization multiplier",
                  LL(j));
    }
  }
  q->multiplier = multiplier;
  q->shift = shift;
  q->per_row = per_row;
  q->input_zero_point = d->input_zero_point;
  q->output_zero_point = d->output_zero_point;
  if (mam_activation_range(d->activation, d->output_scale, d->output_zero_point,
                           d->output_type, &q->act_min, &q->act_max) != MAM_OK) {
    return fail(msg, msg_len, MAM_ERR_QUANT,
                "the fused activation's range does not fit the output type");
  }
  return mam_validate_requant(q, m, d->input_type, msg, msg_len);
}

int mam_validate_requant(const mam_requant *q, int32_t m, int32_t input_type, char *msg,
                         size_t msg_len) {
  int32_t lo, hi, zmin, zmax;
  if (q == NULL || q->multiplier == NULL || q->shift == NULL) {
    return fail(msg, msg_len, MAM_ERR_ARGUMENT, "requantization parameters are missing");
  }
  if (!type_range(input_type, &lo, &hi)) {
    return fail(msg, msg_len, MAM_ERR_TYPE, "activation type %d must be int8 or int16", LL(input_type));
  }
  if (m < 1) return fail(msg, msg_len, MAM_ERR_SHAPE, "M is %d; it must be >= 1", LL(m));
  const int is_s8 = input_type == MAM_TYPE_INT8;
  const int32_t shift_max = is_s8 ? MAM_SHIFT_MAX_S8 : MAM_SHIFT_MAX_S16;
  const int32_t count = q->per_row ? m : 1;
  for (int32_t j = 0; j < count; ++j) {
    if (q->multiplier[j] < 0) {
      return fail(msg, msg_len, MAM_ERR_QUANT, "multiplier %d of row %d is negative",
                  LL(q->multiplier[j]), LL(j));
    }
    if (q->shift[j] < MAM_SHIFT_MIN || q->shift[j] > shift_max) {
      return fail(msg, msg_len, MAM_ERR_QUANT, "shift %d of row %d is outside %d..%d for %s",
                  LL(q->shift[j]), LL(j), LL(MAM_SHIFT_MIN), LL(shift_max), type_name(input_type));
    }
  }
  zmin = is_s8 ? lo : 0;
  zmax = is_s8 ? hi : 0;
  if (q->input_zero_point < zmin || q->input_zero_point > zmax ||
      q->output_zero_point < zmin || q->output_zero_point > zmax) {
    return fail(msg, msg_len, MAM_ERR_QUANT,
                "zero points (input %d, output %d) must lie in %d..%d for %s activations",
                LL(q->input_zero_point), LL(q->output_zero_point), LL(zmin), LL(zmax),
                type_name(input_type));
  }
  if (q->act_min < lo || q->act_max > hi || q->act_min > q->act_max) {
    return fail(msg, msg_len, MAM_ERR_QUANT, "activation clamp %d..%d is not inside %d..%d",
                LL(q->act_min), LL(q->act_max), LL(lo), LL(hi));
  }
  succeed(msg, msg_len);
  return MAM_OK;
}

/* ---------------------------------------------------------------------------------------
 * Requantization shared by all kernels
 * ------------------------------------------------------------------------------------- */
static inline int32_t clamp_i32(int32_t v, int32_t lo, int32_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

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

/* ---------------------------------------------------------------------------------------
 * Sparse kernels (Eval): trust what mam_validate / mam_validate_requant accepted
 * ------------------------------------------------------------------------------------- */
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

/* The public entry points: the ARMv7E-M kernels (src/cortex_m/sparse_kernels.c) where the
 * compiler targets the DSP extension, the portable ones elsewhere. A compile-time choice: each
 * wrapper is a single tail call. */
#if defined(MAM_SPARSE_HAVE_ARMV7EM) && !defined(MAM_SPARSE_PORTABLE_ONLY)
#define MAM_SPARSE_KERNEL(name) name##_armv7em
#else
#define MAM_SPARSE_KERNEL(name) name##_portable
#endif

void mam_sparse_s8(const mam_csr *w, const mam_requant *q, const int32_t *bias,
                   const int8_t *input, int32_t batches, int8_t *output) {
  MAM_SPARSE_KERNEL(mam_sparse_s8)(w, q, bias, input, batches, output);
}

void mam_sparse_s16(const mam_csr *w, const mam_requant *q, const int64_t *bias,
                    const int16_t *input, int32_t batches, int16_t *output) {
  MAM_SPARSE_KERNEL(mam_sparse_s16)(w, q, bias, input, batches, output);
}

void mac_sparse_s8(const mam_csr *w, const mam_requant *q, const int32_t *bias,
                   const int8_t *input, int32_t batches, int8_t *output) {
  MAM_SPARSE_KERNEL(mac_sparse_s8)(w, q, bias, input, batches, output);
}

void mac_sparse_s16(const mam_csr *w, const mam_requant *q, const int64_t *bias,
                    const int16_t *input, int32_t batches, int16_t *output) {
  MAM_SPARSE_KERNEL(mac_sparse_s16)(w, q, bias, input, batches, output);
}

/* ---------------------------------------------------------------------------------------
 * Dense baselines
 * ------------------------------------------------------------------------------------- */
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
