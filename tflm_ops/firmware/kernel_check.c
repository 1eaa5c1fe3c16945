/* Differential check of the ARMv7E-M sparse kernels on the Cortex-M7 (QEMU mps2-an500):
 * random layers through mam_sparse_s8/_s16 and mac_sparse_s8/_s16, *_armv7em against
 * *_portable, output bytes compared. Built and run by tests/test_cortex_m_kernels.py (with
 * startup.c and mps2_an500.ld); prints one line "kernel_check: C cases, F mismatches" and
 * exits with F != 0.
 *
 * What the bench firmware's case files cannot vary, this does: the values array at every
 * address modulo 4 relative to the offsets array (the ARMv7E-M MAM int8 kernel loads both
 * with LDRD only when they are co-aligned), besides rows of every length and alignment,
 * empty and full rows, dummy entries, extreme values, zero points, batches and clamps.
 *
 *   -DKERNEL_CHECK_CASES=n (default 600), -DKERNEL_CHECK_SEED=s (default 12345)
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "mam_sparse/core.h"

#ifndef KERNEL_CHECK_CASES
#define KERNEL_CHECK_CASES 600
#endif
#ifndef KERNEL_CHECK_SEED
#define KERNEL_CHECK_SEED 12345u
#endif

#if !defined(MAM_SPARSE_HAVE_ARMV7EM)
#error "kernel_check needs the ARMv7E-M kernels: build for a DSP core (-mcpu=cortex-m7)"
#endif

#define MAX_M 40
#define MAX_N 1200
#define MAX_B 3
#define MAX_E (MAX_M * MAX_N + MAX_M * (MAX_N / 256 + 1))

static int8_t dense[MAX_M * MAX_N];
static int8_t values[MAX_E];
static int8_t values_skewed[MAX_E + 8];
static uint8_t offsets[MAX_E];
static int16_t row_counts[MAX_M];
static int8_t in8[MAX_B * MAX_N];
static int16_t in16[MAX_B * MAX_N];
static int8_t out8_p[MAX_B * MAX_M], out8_o[MAX_B * MAX_M];
static int16_t out16_p[MAX_B * MAX_M], out16_o[MAX_B * MAX_M];
static int32_t bias32[MAX_M], mult[MAX_M], shft[MAX_M];
static int64_t bias64[MAX_M];

static uint32_t rng_state = KERNEL_CHECK_SEED;
static uint32_t rnd(void) { /* xorshift32 */
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 17;
  rng_state ^= rng_state << 5;
  return rng_state;
}
static int32_t rrange(int32_t lo, int32_t hi) {
  return lo + (int32_t)(rnd() % (uint32_t)(hi - lo + 1));
}
static int8_t nonzero_weight(int extreme) {
  if (extreme && (rnd() & 1)) return (rnd() & 1) ? -128 : 127;
  int8_t v;
  do {
    v = (int8_t)rnd();
  } while (v == 0);
  return v;
}

/* The offset-CSR encoder of docs/operator-contract.md section 2; returns E. */
static int32_t encode(int32_t m, int32_t n) {
  int32_t k = 0;
  for (int32_t j = 0; j < m; ++j) {
    int32_t prev = -1, count = 0;
    for (int32_t c = 0; c < n; ++c) {
      const int8_t v = dense[j * n + c];
      if (v == 0) continue;
      int32_t gap = c - prev - 1;
      while (gap > 255) {
        values[k] = 0;
        offsets[k++] = 255;
        ++count;
        prev += 256;
        gap -= 256;
      }
      values[k] = v;
      offsets[k++] = (uint8_t)gap;
      ++count;
      prev = c;
    }
    row_counts[j] = (int16_t)count;
  }
  return k;
}

static void requant(mam_requant *q, int32_t m, int s8, int per_row) {
  for (int32_t j = 0; j < m; ++j) {
    mult[j] = (int32_t)(0x40000000u + (rnd() & 0x3FFFFFFFu));
    shft[j] = s8 ? rrange(-12, 2) : rrange(-14, 2);
    if ((rnd() & 31) == 0) shft[j] = s8 ? rrange(-31, 30) : rrange(-31, 7);
    if ((rnd() & 31) == 0) mult[j] = (int32_t)(rnd() & 0x7FFFFFFFu);
    if ((rnd() & 31) == 0) mult[j] = (int32_t)(0x7FFF0000u + (rnd() & 0xFFFFu)); /* int16: 0x7FFF */
  }
  q->multiplier = mult;
  q->shift = shft;
  q->per_row = per_row;
  q->input_zero_point = s8 ? rrange(-128, 127) : 0;
  q->output_zero_point = s8 ? rrange(-128, 127) : 0;
  const int32_t lo = s8 ? -128 : -32768, hi = s8 ? 127 : 32767;
  const int32_t a = rrange(lo, hi), b = rrange(lo, hi);
  switch (rnd() % 3) {
    case 0: q->act_min = lo; q->act_max = hi; break;
    case 1: q->act_min = rrange(lo, 0); q->act_max = hi; break;
    default: q->act_min = a < b ? a : b; q->act_max = a < b ? b : a; break;
  }
}

static int one_case(int index) {
  const int32_t n = (rnd() & 3) == 0 ? rrange(1, 8) : rrange(1, MAX_N);
  const int32_t m = rrange(1, MAX_M), batches = rrange(1, MAX_B);
  const int extreme = (rnd() % 3) == 0;
  for (int32_t j = 0; j < m; ++j) {
    const uint32_t kind = rnd() % 10; /* empty, full, few, exactly 0..7 entries, random */
    const uint32_t permille = kind == 0 ? 0 : kind == 1 ? 1000 : kind == 2 ? 3 : rnd() % 1001;
    for (int32_t c = 0; c < n; ++c) {
      dense[j * n + c] = (rnd() % 1000 < permille) ? nonzero_weight(extreme) : 0;
    }
    if (kind == 3) {
      memset(&dense[j * n], 0, (size_t)n);
      const int32_t want = (int32_t)(rnd() % 8);
      for (int32_t e = 0; e < want; ++e) dense[j * n + rrange(0, n - 1)] = nonzero_weight(extreme);
    }
  }
  const int32_t e_total = encode(m, n);
  const uint32_t skew = rnd() & 3u; /* values' address relative to offsets', modulo 4 */
  memcpy(values_skewed + skew, values, (size_t)e_total);
  const mam_csr w = {n, m, values_skewed + skew, offsets, row_counts};
  for (int32_t i = 0; i < batches * n; ++i) {
    in8[i] = (int8_t)rnd();
    in16[i] = (int16_t)rnd();
    if (extreme && (rnd() & 1)) {
      in8[i] = (rnd() & 1) ? -128 : 127;
      in16[i] = (rnd() & 1) ? -32768 : 32767;
    }
  }
  for (int32_t j = 0; j < m; ++j) {
    bias32[j] = (int32_t)rnd() >> rrange(0, 30);
    bias64[j] = (int64_t)(int32_t)rnd() * (int64_t)rrange(1, 1 << 20);
  }
  const int use_bias = (int)(rnd() & 1), per_row = (int)(rnd() & 1);
  int bad = 0;
  mam_requant q;
  requant(&q, m, 1, per_row);
  const int32_t *b32 = use_bias ? bias32 : NULL;
  mam_sparse_s8_portable(&w, &q, b32, in8, batches, out8_p);
  mam_sparse_s8_armv7em(&w, &q, b32, in8, batches, out8_o);
  if (memcmp(out8_p, out8_o, (size_t)(batches * m))) bad |= 1;
  mac_sparse_s8_portable(&w, &q, b32, in8, batches, out8_p);
  mac_sparse_s8_armv7em(&w, &q, b32, in8, batches, out8_o);
  if (memcmp(out8_p, out8_o, (size_t)(batches * m))) bad |= 2;
  requant(&q, m, 0, per_row);
  const int64_t *b64 = use_bias ? bias64 : NULL;
  mam_sparse_s16_portable(&w, &q, b64, in16, batches, out16_p);
  mam_sparse_s16_armv7em(&w, &q, b64, in16, batches, out16_o);
  if (memcmp(out16_p, out16_o, (size_t)(batches * m) * 2)) bad |= 4;
  mac_sparse_s16_portable(&w, &q, b64, in16, batches, out16_p);
  mac_sparse_s16_armv7em(&w, &q, b64, in16, batches, out16_o);
  if (memcmp(out16_p, out16_o, (size_t)(batches * m) * 2)) bad |= 8;
  if (bad) {
    printf("kernel_check: case %d (n %ld, m %ld, batches %ld, E %ld, skew %lu) differs:%s%s%s%s\n",
           index, (long)n, (long)m, (long)batches, (long)e_total, (unsigned long)skew,
           bad & 1 ? " mam_sparse_s8" : "", bad & 2 ? " mac_sparse_s8" : "",
           bad & 4 ? " mam_sparse_s16" : "", bad & 8 ? " mac_sparse_s16" : "");
  }
  return bad != 0;
}

int main(void) {
  int mismatches = 0;
  for (int i = 0; i < KERNEL_CHECK_CASES; ++i) mismatches += one_case(i);
  printf("kernel_check: %d cases, %d mismatches\n", KERNEL_CHECK_CASES, mismatches);
  return mismatches != 0;
}
