/* Fixed-point arithmetic and the quantization parameters of Prepare, with TFLite's and
 * gemmlowp's semantics (quantization_util, kernel_util): the kernels' requantization and the
 * multipliers, shifts and clamps it uses. */
#include <math.h>

#include "internal.h"

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
  if (!mam_type_range(type_code, &qmin, &qmax)) return MAM_ERR_TYPE;
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
