/* The public entry points of the sparse kernels: the ARMv7E-M kernels
 * (src/cortex_m/sparse_kernels.c) where the compiler targets the DSP extension, the portable
 * ones (src/reference_kernels.c) elsewhere. A compile-time choice: each wrapper is a single
 * tail call. */
#include "mam_sparse/core.h"

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
