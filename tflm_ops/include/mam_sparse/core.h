/* The portable core of MAM_SPARSE / MAC_SPARSE (contract: docs/operator-contract.md).
 *
 * C99, no TFLM, no allocation, no stdio. Every caller (the TFLM glue, the host runtime via
 * ctypes, the Cortex-M benchmark) runs these same functions, so there is one algorithm.
 *
 * Split of work, as in a TFLM kernel: Prepare calls mam_validate() once (O(E)), computes
 * the multipliers (mam_effective_scale + mam_quantize_multiplier) and the clamp
 * (mam_activation_range), then mam_validate_requant(); Eval calls a kernel, which trusts
 * what was validated and checks nothing.
 */
#ifndef MAM_SPARSE_CORE_H_
#define MAM_SPARSE_CORE_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MAM_SPARSE_CORE_ABI_VERSION 2

/* Status codes (0 is success). */
#define MAM_OK 0
#define MAM_ERR_ARGUMENT 1     /* a null pointer where data is required */
#define MAM_ERR_TENSOR_COUNT 2 /* wrong number of inputs or outputs */
#define MAM_ERR_TYPE 3         /* a tensor of the wrong type */
#define MAM_ERR_SHAPE 4        /* dimensions that do not fit together */
#define MAM_ERR_LENGTH 5       /* E differs between values, offsets, sum(row_counts) */
#define MAM_ERR_ROW_COUNT 6    /* a negative row count */
#define MAM_ERR_COLUMN 7       /* an entry decodes to a column >= N */
#define MAM_ERR_ACTIVATION 8   /* unknown fused activation */
#define MAM_ERR_OPTIONS 9      /* custom options out of range (version, in_features) */
#define MAM_ERR_QUANT 10       /* scales, zero points, multipliers, shifts, clamp */

/* Tensor type codes: the numeric values of TfLiteType, so the glue passes tensor->type. */
#define MAM_TYPE_NONE 0 /* kTfLiteNoType: an absent optional tensor */
#define MAM_TYPE_INT32 2
#define MAM_TYPE_UINT8 3
#define MAM_TYPE_INT64 4
#define MAM_TYPE_INT16 7
#define MAM_TYPE_INT8 9

/* Fused activations: TFLite's ActivationFunctionType values. */
#define MAM_ACT_NONE 0
#define MAM_ACT_RELU 1
#define MAM_ACT_RELU_N1_TO_1 2
#define MAM_ACT_RELU6 3

/* Shift limits of the requantization (MultiplyByQuantizedMultiplier's own contract). */
#define MAM_SHIFT_MIN (-31)
#define MAM_SHIFT_MAX_S8 30
#define MAM_SHIFT_MAX_S16 7

/* A pruned int8 weight matrix W [m rows = outputs][n columns = inputs] in offset-CSR. */
typedef struct {
  int32_t n;                 /* in_features */
  int32_t m;                 /* out_features: number of rows */
  const int8_t *values;      /* [E] */
  const uint8_t *offsets;    /* [E] columns skipped before each entry */
  const int16_t *row_counts; /* [m] */
} mam_csr;

/* Requantization and clamp of one layer. */
typedef struct {
  const int32_t *multiplier; /* [1] or [m], q31 in [0, 2^31) */
  const int32_t *shift;      /* [1] or [m], > 0 shifts left */
  int32_t per_row;           /* 0: entry 0 serves every row; else entry j serves row j */
  int32_t input_zero_point;  /* int8 mode; 0 in int16 mode */
  int32_t output_zero_point; /* int8 mode; 0 in int16 mode */
  int32_t act_min;           /* clamp, inside the output type */
  int32_t act_max;
} mam_requant;

/* Everything Prepare knows about one node, for mam_validate(). Lengths and types come
 * straight from the tensors; in_features/activation/version from the custom options. */
typedef struct {
  int32_t num_inputs;  /* 4, or 5 with the optional bias (which may be absent: type NONE) */
  int32_t num_outputs; /* 1 */
  int32_t input_type, values_type, offsets_type, row_counts_type, bias_type, output_type;
  int64_t input_elements;  /* flat size of the input: B * N */
  int64_t output_elements; /* flat size of the output: B * M */
  int32_t input_last_dim;
  int32_t output_last_dim;
  int32_t values_len;     /* E as the values tensor says */
  int32_t offsets_len;    /* E as the offsets tensor says */
  int32_t row_counts_len; /* M */
  int32_t bias_len;       /* M when a bias is present */
  const uint8_t *offsets;     /* [offsets_len] */
  const int16_t *row_counts;  /* [row_counts_len] */
  int32_t in_features; /* custom option "in_features" */
  int32_t activation;  /* custom option "fused_activation_function" */
  int32_t version;     /* custom option "version": 1 */
  int32_t weight_scale_count;       /* 1 (per tensor) or M (per row) */
  int32_t weight_zero_point;        /* must be 0 (weights are symmetric) */
  int32_t input_zero_point;
  int32_t output_zero_point;
  /* Since ABI 2. The byte size of each constant's data as the caller sees it (the glue:
   * TfLiteTensor::bytes; the host: the model buffer's length); checked against the shape
   * before anything is read. */
  int64_t values_bytes, offsets_bytes, row_counts_bytes, bias_bytes;
  /* Quantization: 1 when the input / output tensor has an affine (per-tensor) scale. */
  int32_t input_quantized, output_quantized;
  float input_scale, output_scale;
  const float *weight_scales; /* [weight_scale_count] */
} mam_layer_desc;

/* Checks every rule of docs/operator-contract.md section 4 in O(E + M); touches
 * offsets[0..offsets_len) and row_counts[0..row_counts_len) only. On failure writes a
 * one-line, NUL-terminated message (truncated to msg_len - 1 chars; msg may be NULL when
 * msg_len is 0). */
int mam_validate(const mam_layer_desc *desc, char *msg, size_t msg_len);

/* Prepare's requantization of a node mam_validate() accepted: for each of count rows
 * (count = M when weight_scale_count > 1, else 1) the multiplier and shift of
 * input_scale * weight_scale / output_scale, as TFLM's FULLY_CONNECTED forms them
 * (mam_effective_scale + mam_quantize_multiplier), then the clamp of the fused activation
 * (mam_activation_range) and mam_validate_requant(). multiplier and shift have room for
 * count entries; q is filled and points into them. The glue and the host runtime both call
 * it, so their refusals are one implementation. */
int mam_prepare_requant(const mam_layer_desc *desc, int32_t *multiplier, int32_t *shift,
                        mam_requant *q, char *msg, size_t msg_len);

/* Checks what the kernels assume of q for m rows and activations of input_type
 * (MAM_TYPE_INT8 or MAM_TYPE_INT16): multipliers >= 0, shifts in
 * [MAM_SHIFT_MIN, MAM_SHIFT_MAX_S8 or _S16], zero points inside the type (0 in int16 mode),
 * act_min <= act_max inside the type. Reads m parameters when q->per_row, else 1. */
int mam_validate_requant(const mam_requant *q, int32_t m, int32_t input_type, char *msg,
                         size_t msg_len);

/* TFLite's QuantizeMultiplier: real ~= multiplier * 2^(shift - 31). Fails (MAM_ERR_QUANT)
 * for a negative, infinite or NaN real. */
int mam_quantize_multiplier(double real, int32_t *multiplier, int32_t *shift);

/* The real multiplier input_scale * weight_scale / output_scale as TFLM's FULLY_CONNECTED
 * forms it: per tensor (per_row == 0) the scale product in float32, then double division
 * (GetQuantizedConvolutionMultipler); per row the product in double. Pass per_row != 0
 * exactly when the weight tensor has more than one scale (TFLM: scale->size > 1). */
double mam_effective_scale(float input_scale, float weight_scale, float output_scale,
                           int32_t per_row);

/* TFLite's CalculateActivationRangeQuantized for an output of type_code (INT8/INT16). */
int mam_activation_range(int32_t activation, float output_scale, int32_t output_zero_point,
                         int32_t type_code, int32_t *act_min, int32_t *act_max);

/* Fixed-point pieces, exposed for tests. */
int32_t mam_saturating_rounding_doubling_high_mul(int32_t a, int32_t b);
int32_t mam_rounding_divide_by_pot(int32_t x, int32_t exponent); /* exponent 0..31 */
/* 32-bit double rounding (int8 mode) and 64-bit (int16 mode) MultiplyByQuantizedMultiplier. */
int32_t mam_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int32_t shift);
int32_t mam_multiply_by_quantized_multiplier_64(int64_t x, int32_t multiplier, int32_t shift);

/* The kernels. input [batches][n], output [batches][m]; bias may be NULL. */
void mam_sparse_s8(const mam_csr *w, const mam_requant *q, const int32_t *bias,
                   const int8_t *input, int32_t batches, int8_t *output);
void mam_sparse_s16(const mam_csr *w, const mam_requant *q, const int64_t *bias,
                    const int16_t *input, int32_t batches, int16_t *output);
void mac_sparse_s8(const mam_csr *w, const mam_requant *q, const int32_t *bias,
                   const int8_t *input, int32_t batches, int8_t *output);
void mac_sparse_s16(const mam_csr *w, const mam_requant *q, const int64_t *bias,
                    const int16_t *input, int32_t batches, int16_t *output);

/* The same kernels, each variant by name. The entry points above call the ARMv7E-M ones
 * (src/cortex_m/sparse_kernels.c, Cortex-M4/M7/M33, little-endian) where the compiler sets
 * __ARM_FEATURE_DSP (MAM_SPARSE_HAVE_ARMV7EM below) and MAM_SPARSE_PORTABLE_ONLY is not
 * defined, else the portable ones. All variants give identical output bytes. */
void mam_sparse_s8_portable(const mam_csr *w, const mam_requant *q, const int32_t *bias,
                            const int8_t *input, int32_t batches, int8_t *output);
void mam_sparse_s16_portable(const mam_csr *w, const mam_requant *q, const int64_t *bias,
                             const int16_t *input, int32_t batches, int16_t *output);
void mac_sparse_s8_portable(const mam_csr *w, const mam_requant *q, const int32_t *bias,
                            const int8_t *input, int32_t batches, int8_t *output);
void mac_sparse_s16_portable(const mam_csr *w, const mam_requant *q, const int64_t *bias,
                             const int16_t *input, int32_t batches, int16_t *output);
#if defined(__ARM_FEATURE_DSP) && !defined(__ARM_BIG_ENDIAN)
#define MAM_SPARSE_HAVE_ARMV7EM 1
#endif
#if defined(MAM_SPARSE_HAVE_ARMV7EM)
void mam_sparse_s8_armv7em(const mam_csr *w, const mam_requant *q, const int32_t *bias,
                           const int8_t *input, int32_t batches, int8_t *output);
void mam_sparse_s16_armv7em(const mam_csr *w, const mam_requant *q, const int64_t *bias,
                            const int16_t *input, int32_t batches, int16_t *output);
void mac_sparse_s8_armv7em(const mam_csr *w, const mam_requant *q, const int32_t *bias,
                           const int8_t *input, int32_t batches, int8_t *output);
void mac_sparse_s16_armv7em(const mam_csr *w, const mam_requant *q, const int64_t *bias,
                            const int16_t *input, int32_t batches, int16_t *output);
#endif

/* Dense baselines over W [m][n] (row-major, zeros stored): MAC is TFLM's FULLY_CONNECTED
 * reference arithmetic; MAM takes max and min over all n products. */
void mac_dense_s8(const int8_t *weights, int32_t m, int32_t n, const mam_requant *q,
                  const int32_t *bias, const int8_t *input, int32_t batches, int8_t *output);
void mac_dense_s16(const int8_t *weights, int32_t m, int32_t n, const mam_requant *q,
                   const int64_t *bias, const int16_t *input, int32_t batches,
                   int16_t *output);
void mam_dense_s8(const int8_t *weights, int32_t m, int32_t n, const mam_requant *q,
                  const int32_t *bias, const int8_t *input, int32_t batches, int8_t *output);
void mam_dense_s16(const int8_t *weights, int32_t m, int32_t n, const mam_requant *q,
                   const int64_t *bias, const int16_t *input, int32_t batches,
                   int16_t *output);

/* Name of a status code, e.g. "MAM_ERR_COLUMN". */
const char *mam_status_name(int status);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MAM_SPARSE_CORE_H_ */
