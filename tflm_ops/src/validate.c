/* Validation (Prepare): what a MAM_SPARSE / MAC_SPARSE node must be before a kernel may run
 * on it (MAM_SPARSE.md section 4), and the requantization it will use. Called once per node,
 * O(E); the kernels then trust it. */
#include <math.h>

#include "internal.h"

static int check_type(char *msg, size_t len, const char *what, int32_t got, int32_t want) {
  if (got == want) return MAM_OK;
  return mam_fail(msg, len, MAM_ERR_TYPE, "%s tensor is %s (type %d); it must be %s", what,
                  mam_type_name(got), LL(got), mam_type_name(want));
}

int mam_validate(const mam_layer_desc *d, char *msg, size_t msg_len) {
  int status;
  int32_t zmin = 0, zmax = 0;
  if (d == NULL) return mam_fail(msg, msg_len, MAM_ERR_ARGUMENT, "no layer description");

  if (d->num_outputs != 1) {
    return mam_fail(msg, msg_len, MAM_ERR_TENSOR_COUNT, "node has %d outputs; it must have 1",
                    LL(d->num_outputs));
  }
  if (d->num_inputs != 4 && d->num_inputs != 5) {
    return mam_fail(msg, msg_len, MAM_ERR_TENSOR_COUNT,
                    "node has %d inputs; it must have 4, or 5 with a bias", LL(d->num_inputs));
  }

  /* Custom options. */
  if (d->version != 1) {
    return mam_fail(msg, msg_len, MAM_ERR_OPTIONS,
                    "custom option version is %d; this kernel reads 1",
                    LL(d->version));
  }
  if (d->in_features < 1) {
    return mam_fail(msg, msg_len, MAM_ERR_OPTIONS,
                    "custom option in_features is %d; it must be >= 1",
                    LL(d->in_features));
  }
  if (d->activation < MAM_ACT_NONE || d->activation > MAM_ACT_RELU6) {
    return mam_fail(msg, msg_len, MAM_ERR_ACTIVATION,
                    "fused_activation_function is %d; known: 0 NONE, 1 RELU, 2 RELU_N1_TO_1, 3 RELU6",
                    LL(d->activation));
  }

  /* Types. */
  if (d->input_type != MAM_TYPE_INT8 && d->input_type != MAM_TYPE_INT16) {
    return mam_fail(msg, msg_len, MAM_ERR_TYPE,
                    "input tensor is %s (type %d); it must be int8 or int16",
                    mam_type_name(d->input_type), LL(d->input_type));
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
    return mam_fail(msg, msg_len, MAM_ERR_TENSOR_COUNT,
                    "a bias is given but the node has %d inputs",
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
    return mam_fail(msg, msg_len, MAM_ERR_SHAPE, "input last dimension is %d but in_features is %d",
                    LL(d->input_last_dim), LL(d->in_features));
  }
  if (d->input_elements < 0 || d->input_elements % n != 0) {
    return mam_fail(msg, msg_len, MAM_ERR_SHAPE,
                    "input holds %d elements, not a multiple of N = %d",
                    LL(d->input_elements), LL(n));
  }
  const int64_t batches = d->input_elements / n;
  if (batches > INT32_MAX) {
    return mam_fail(msg, msg_len, MAM_ERR_SHAPE, "input has %d rows; at most %d are supported",
                    LL(batches), LL(INT32_MAX));
  }
  if (m < 1) {
    return mam_fail(msg, msg_len, MAM_ERR_SHAPE,
                    "row_counts has %d entries; M must be >= 1", LL(m));
  }
  if (d->output_last_dim != m) {
    return mam_fail(msg, msg_len, MAM_ERR_SHAPE,
                    "output last dimension is %d but row_counts says M = %d",
                    LL(d->output_last_dim), LL(m));
  }
  if (d->output_elements != batches * (int64_t)m) {
    return mam_fail(msg, msg_len, MAM_ERR_SHAPE,
                    "output holds %d elements; B * M = %d * %d = %d", LL(d->output_elements),
                    LL(batches), LL(m), LL(batches * (int64_t)m));
  }
  if (has_bias && d->bias_len != m) {
    return mam_fail(msg, msg_len, MAM_ERR_SHAPE,
                    "bias has %d entries; M = %d", LL(d->bias_len), LL(m));
  }

  /* The offset-CSR arrays. */
  if (d->values_len < 0 || d->offsets_len < 0) {
    return mam_fail(msg, msg_len, MAM_ERR_LENGTH, "negative tensor length (values %d, offsets %d)",
                    LL(d->values_len), LL(d->offsets_len));
  }
  if (d->values_len != d->offsets_len) {
    return mam_fail(msg, msg_len, MAM_ERR_LENGTH, "values has %d entries but offsets has %d",
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
        return mam_fail(msg, msg_len, MAM_ERR_LENGTH, "%s holds %d bytes; its shape needs %d",
                        sizes[i].name, LL(sizes[i].bytes), LL(sizes[i].need));
      }
    }
  }
  if (d->row_counts == NULL || (d->offsets == NULL && d->offsets_len > 0)) {
    return mam_fail(msg, msg_len, MAM_ERR_ARGUMENT, "row_counts or offsets data is missing");
  }
  int64_t total = 0;
  for (int32_t j = 0; j < m; ++j) {
    if (d->row_counts[j] < 0) {
      return mam_fail(msg, msg_len, MAM_ERR_ROW_COUNT, "row %d has a negative row count %d", LL(j),
                      LL(d->row_counts[j]));
    }
    total += d->row_counts[j];
  }
  if (total != d->values_len) {
    return mam_fail(msg, msg_len, MAM_ERR_LENGTH, "row_counts sum to %d but values has %d entries",
                    LL(total), LL(d->values_len));
  }
  int64_t k = 0; /* < E: every read below is in bounds */
  for (int32_t j = 0; j < m; ++j) {
    int64_t col = -1;
    for (int32_t e = 0; e < d->row_counts[j]; ++e, ++k) {
      col += (int64_t)d->offsets[k] + 1;
      if (col >= n) {
        return mam_fail(msg, msg_len, MAM_ERR_COLUMN,
                        "row %d entry %d decodes column %d >= in_features %d", LL(j), LL(e),
                        LL(col), LL(n));
      }
    }
  }

  /* Quantization parameters that Prepare reads from the tensors. */
  if (d->weight_scale_count != 1 && d->weight_scale_count != m) {
    return mam_fail(msg, msg_len, MAM_ERR_QUANT,
                    "values has %d scales; it must have 1 (per tensor) or M = %d (per row)",
                    LL(d->weight_scale_count), LL(m));
  }
  if (d->weight_zero_point != 0) {
    return mam_fail(msg, msg_len, MAM_ERR_QUANT,
                    "values zero point is %d; weights must be symmetric (0)",
                    LL(d->weight_zero_point));
  }
  mam_type_range(d->input_type, &zmin, &zmax);
  if (!is_s8) zmin = zmax = 0;
  if (d->input_zero_point < zmin || d->input_zero_point > zmax ||
      d->output_zero_point < zmin || d->output_zero_point > zmax) {
    return mam_fail(msg, msg_len, MAM_ERR_QUANT,
                    "zero points (input %d, output %d) must lie in %d..%d for %s activations",
                    LL(d->input_zero_point), LL(d->output_zero_point), LL(zmin), LL(zmax),
                    mam_type_name(d->input_type));
  }
  /* !(s > 0) is also true for NaN. */
  if (!d->input_quantized || !d->output_quantized || !(d->input_scale > 0.0f) ||
      !(d->output_scale > 0.0f) || !isfinite(d->input_scale) || !isfinite(d->output_scale)) {
    return mam_fail(msg, msg_len, MAM_ERR_QUANT,
                    "input and output need a per-tensor quantization scale > 0");
  }
  if (d->weight_scales == NULL) {
    return mam_fail(msg, msg_len, MAM_ERR_ARGUMENT, "the weight scales are missing");
  }
  for (int32_t j = 0; j < d->weight_scale_count; ++j) {
    /* TFLite gives a row whose weights are all zero the scale 0 (as FULLY_CONNECTED takes
     * it: multiplier 0); such a row stores no entry. Per tensor: no entry at all. */
    const int empty = d->weight_scale_count > 1 ? d->row_counts[j] == 0 : d->values_len == 0;
    const float s = d->weight_scales[j];
    if (!isfinite(s) || !(s > 0.0f || (s == 0.0f && empty))) {
      return mam_fail(msg, msg_len, MAM_ERR_QUANT, "weight scale %d is not a finite value > 0",
                      LL(j));
    }
  }
  mam_clear_message(msg, msg_len);
  return MAM_OK;
}

int mam_prepare_requant(const mam_layer_desc *d, int32_t *multiplier, int32_t *shift,
                        mam_requant *q, char *msg, size_t msg_len) {
  if (d == NULL || multiplier == NULL || shift == NULL || q == NULL || d->weight_scales == NULL) {
    return mam_fail(msg, msg_len, MAM_ERR_ARGUMENT, "requantization arguments are missing");
  }
  const int32_t m = d->row_counts_len;
  const int32_t per_row = d->weight_scale_count > 1 ? 1 : 0;
  const int32_t count = per_row ? m : 1;
  for (int32_t j = 0; j < count; ++j) {
    const double real = mam_effective_scale(d->input_scale, d->weight_scales[j],
                                            d->output_scale, per_row);
    if (mam_quantize_multiplier(real, &multiplier[j], &shift[j]) != MAM_OK) {
      return mam_fail(msg, msg_len, MAM_ERR_QUANT, "row %d has no valid requantization multiplier",
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
    return mam_fail(msg, msg_len, MAM_ERR_QUANT,
                    "the fused activation's range does not fit the output type");
  }
  return mam_validate_requant(q, m, d->input_type, msg, msg_len);
}

int mam_validate_requant(const mam_requant *q, int32_t m, int32_t input_type, char *msg,
                         size_t msg_len) {
  int32_t lo, hi, zmin, zmax;
  if (q == NULL || q->multiplier == NULL || q->shift == NULL) {
    return mam_fail(msg, msg_len, MAM_ERR_ARGUMENT, "requantization parameters are missing");
  }
  if (!mam_type_range(input_type, &lo, &hi)) {
    return mam_fail(msg, msg_len, MAM_ERR_TYPE,
                    "activation type %d must be int8 or int16", LL(input_type));
  }
  if (m < 1) return mam_fail(msg, msg_len, MAM_ERR_SHAPE, "M is %d; it must be >= 1", LL(m));
  const int is_s8 = input_type == MAM_TYPE_INT8;
  const int32_t shift_max = is_s8 ? MAM_SHIFT_MAX_S8 : MAM_SHIFT_MAX_S16;
  const int32_t count = q->per_row ? m : 1;
  for (int32_t j = 0; j < count; ++j) {
    if (q->multiplier[j] < 0) {
      return mam_fail(msg, msg_len, MAM_ERR_QUANT, "multiplier %d of row %d is negative",
                      LL(q->multiplier[j]), LL(j));
    }
    if (q->shift[j] < MAM_SHIFT_MIN || q->shift[j] > shift_max) {
      return mam_fail(msg, msg_len, MAM_ERR_QUANT, "shift %d of row %d is outside %d..%d for %s",
                      LL(q->shift[j]), LL(j), LL(MAM_SHIFT_MIN), LL(shift_max),
                      mam_type_name(input_type));
    }
  }
  zmin = is_s8 ? lo : 0;
  zmax = is_s8 ? hi : 0;
  if (q->input_zero_point < zmin || q->input_zero_point > zmax ||
      q->output_zero_point < zmin || q->output_zero_point > zmax) {
    return mam_fail(msg, msg_len, MAM_ERR_QUANT,
                    "zero points (input %d, output %d) must lie in %d..%d for %s activations",
                    LL(q->input_zero_point), LL(q->output_zero_point), LL(zmin), LL(zmax),
                    mam_type_name(input_type));
  }
  if (q->act_min < lo || q->act_max > hi || q->act_min > q->act_max) {
    return mam_fail(msg, msg_len, MAM_ERR_QUANT, "activation clamp %d..%d is not inside %d..%d",
                    LL(q->act_min), LL(q->act_max), LL(lo), LL(hi));
  }
  mam_clear_message(msg, msg_len);
  return MAM_OK;
}
