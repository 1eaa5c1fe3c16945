/* Private to the core's own sources (src/): never installed, never included by the glue.
 *
 * Integer overflow: where TFLite's C++ leaves overflow undefined (int32 accumulators, the
 * left shift of the 32-bit requantization, the int64 product of the 64-bit one), the core
 * computes what a two's complement machine computes, with unsigned arithmetic, so that it
 * stays defined under -fsanitize=undefined and matches mam_tf.deploy.reference exactly.
 */
#ifndef MAM_SPARSE_INTERNAL_H_
#define MAM_SPARSE_INTERNAL_H_

#include "mam_sparse/core.h"

/* Functions shared between the core's files but not part of its API: hidden from the host
 * shared library's exports, so the ABI stays the list in core.h. */
#if defined(__GNUC__) && !defined(_WIN32)
#define MAM_INTERNAL __attribute__((visibility("hidden")))
#else
#define MAM_INTERNAL
#endif

/* Two's complement helpers, defined behaviour only. */
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

static inline int32_t clamp_i32(int32_t v, int32_t lo, int32_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

/* The value range of an int8 or int16 tensor type code; 0 for any other type. */
static inline int mam_type_range(int32_t type_code, int32_t *lo, int32_t *hi) {
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

/* Messages (src/format.c): one line "MAM_SPARSE: <fmt>" into msg (NULL or msg_len 0 writes
 * nothing), where %s takes a const char * and %d a long long (LL() below); returns status. */
MAM_INTERNAL int mam_fail(char *msg, size_t msg_len, int status, const char *fmt, ...);
/* Empties msg (success). */
MAM_INTERNAL void mam_clear_message(char *msg, size_t msg_len);
/* "int8", "int16", ... for a type code. */
MAM_INTERNAL const char *mam_type_name(int32_t type_code);

#define LL(x) ((long long)(x))

#endif /* MAM_SPARSE_INTERNAL_H_ */
