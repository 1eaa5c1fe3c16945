/* The bench / test firmware: runs every job of mcu_in.bin (see mcu_case.h) on the emulated
 * Cortex-M7 and writes the outputs to mcu_out.bin, one binary for every test vector and
 * benchmark point. Each kernel call sits between mcu_mark_begin() and mcu_mark_end(), two
 * one-instruction functions at which the counting plugin (plugin/insn_count.c) snapshots the
 * number of instructions executed. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mam_sparse/core.h"
#include "mcu_case.h"
#include "mcu_markers.h"

/* core.h declares both variants of each sparse kernel (*_portable, *_armv7em): the firmware
 * calls them by name to compare them (the public mam_sparse_s8 & co dispatch to one). */
#if MAM_FW_CMSIS_NN
#include "arm_nnfunctions.h"
#endif

/* ---- the pool for large arrays in the 16 MiB at 0x60000000, reset per job ---- */
extern char __big_start, __big_end;
static char *pool_top;

static void *pool_alloc(uint32_t nbytes) {
  uintptr_t p = ((uintptr_t)pool_top + 7u) & ~(uintptr_t)7u;
  if (nbytes > (uintptr_t)&__big_end - p) {
    printf("mcu firmware: arrays need more than the 16 MiB pool (%lu bytes more)\n",
           (unsigned long)nbytes);
    fflush(stdout);
    exit(MCU_EXIT_NOMEM);
  }
  pool_top = (char *)(p + nbytes);
  return (void *)p;
}

static void fail(int status, const char *what) {
  printf("mcu firmware: %s\n", what);
  fflush(stdout);
  exit(status);
}

static void read_exact(FILE *f, void *dst, uint32_t nbytes, const char *what) {
  if (nbytes && fread(dst, 1, nbytes, f) != nbytes) fail(MCU_EXIT_FORMAT, what);
}

typedef struct {
  uint32_t nbytes;
  void *data; /* NULL when empty */
} array;

/* skew: bytes added to the array's 8-aligned address (0..7), so kernels meet every alignment. */
static void read_array(FILE *f, array *a, uint32_t skew) {
  read_exact(f, &a->nbytes, 4, "truncated case file (array size)");
  a->data = NULL;
  if (a->nbytes) {
    a->data = (char *)pool_alloc(a->nbytes + skew) + skew;
    read_exact(f, a->data, a->nbytes, "truncated case file (array data)");
  }
  uint32_t pad = (4u - (a->nbytes & 3u)) & 3u, zero;
  read_exact(f, &zero, pad, "truncated case file (padding)");
}

static int is_s16(uint32_t kernel) {
  switch (kernel) {
    case MCU_MAM_SPARSE_S16_PORTABLE: case MCU_MAC_SPARSE_S16_PORTABLE:
    case MCU_MAM_SPARSE_S16_OPTIMIZED: case MCU_MAC_SPARSE_S16_OPTIMIZED:
    case MCU_MAC_DENSE_S16: case MCU_MAM_DENSE_S16: case MCU_CMSIS_FC_S16:
      return 1;
    default:
      return 0;
  }
}

static void run_job(const uint32_t *h, array *a, void *out) {
  const uint32_t kernel = h[0];
  const int32_t m = (int32_t)h[1], n = (int32_t)h[2], batches = (int32_t)h[3];
  const mam_csr w = {n, m, (const int8_t *)a[0].data, (const uint8_t *)a[1].data,
                     (const int16_t *)a[2].data};
  const mam_requant q = {(const int32_t *)a[4].data, (const int32_t *)a[5].data,
                         (int32_t)h[4], (int32_t)h[6], (int32_t)h[7], (int32_t)h[8],
                         (int32_t)h[9]};
  const int8_t *wd = (const int8_t *)a[3].data;
  const void *bias = a[6].data;
  const void *x = a[7].data;
#define S8 (const int32_t *)bias, (const int8_t *)x, batches, (int8_t *)out
#define S16 (const int64_t *)bias, (const int16_t *)x, batches, (int16_t *)out
  switch (kernel) {
    case MCU_EMPTY:
      mcu_mark_begin(); mcu_empty(); mcu_mark_end();
      return;
    case MCU_LOOP:
      mcu_mark_begin(); mcu_count_loop((uint32_t)n); mcu_mark_end();
      return;
    case MCU_MAM_SPARSE_S8_PORTABLE:
      mcu_mark_begin(); mam_sparse_s8_portable(&w, &q, S8); mcu_mark_end();
      return;
    case MCU_MAM_SPARSE_S16_PORTABLE:
      mcu_mark_begin(); mam_sparse_s16_portable(&w, &q, S16); mcu_mark_end();
      return;
    case MCU_MAC_SPARSE_S8_PORTABLE:
      mcu_mark_begin(); mac_sparse_s8_portable(&w, &q, S8); mcu_mark_end();
      return;
    case MCU_MAC_SPARSE_S16_PORTABLE:
      mcu_mark_begin(); mac_sparse_s16_portable(&w, &q, S16); mcu_mark_end();
      return;
#if MAM_FW_OPTIMIZED
    case MCU_MAM_SPARSE_S8_OPTIMIZED:
      mcu_mark_begin(); mam_sparse_s8_armv7em(&w, &q, S8); mcu_mark_end();
      return;
    case MCU_MAM_SPARSE_S16_OPTIMIZED:
      mcu_mark_begin(); mam_sparse_s16_armv7em(&w, &q, S16); mcu_mark_end();
      return;
    case MCU_MAC_SPARSE_S8_OPTIMIZED:
      mcu_mark_begin(); mac_sparse_s8_armv7em(&w, &q, S8); mcu_mark_end();
      return;
    case MCU_MAC_SPARSE_S16_OPTIMIZED:
      mcu_mark_begin(); mac_sparse_s16_armv7em(&w, &q, S16); mcu_mark_end();
      return;
#endif
    case MCU_MAC_DENSE_S8:
      mcu_mark_begin(); mac_dense_s8(wd, m, n, &q, S8); mcu_mark_end();
      return;
    case MCU_MAC_DENSE_S16:
      mcu_mark_begin(); mac_dense_s16(wd, m, n, &q, S16); mcu_mark_end();
      return;
    case MCU_MAM_DENSE_S8:
      mcu_mark_begin(); mam_dense_s8(wd, m, n, &q, S8); mcu_mark_end();
      return;
    case MCU_MAM_DENSE_S16:
      mcu_mark_begin(); mam_dense_s16(wd, m, n, &q, S16); mcu_mark_end();
      return;
#if MAM_FW_CMSIS_NN
    case MCU_CMSIS_FC_S8:
    case MCU_CMSIS_FC_S16: {
      /* As TFLM's CMSIS-NN FULLY_CONNECTED calls it: input_offset = -input zero point,
       * output_offset = output zero point, filter_offset = 0. */
      const cmsis_nn_dims in_dims = {batches, 1, 1, n}, f_dims = {n, 1, 1, m},
                          b_dims = {1, 1, 1, m}, o_dims = {batches, 1, 1, m};
      const cmsis_nn_fc_params fc = {-q.input_zero_point, 0, q.output_zero_point,
                                     {q.act_min, q.act_max}};
      arm_cmsis_nn_status st;
      if (kernel == MCU_CMSIS_FC_S8) {
        const int32_t size = arm_fully_connected_s8_get_buffer_size(&f_dims);
        cmsis_nn_context ctx = {size > 0 ? pool_alloc((uint32_t)size) : NULL, size};
        if (size > 0) memset(ctx.buf, 0, (size_t)size);
        if (q.per_row) {
          const cmsis_nn_per_channel_quant_params pq = {(int32_t *)q.multiplier,
                                                        (int32_t *)q.shift};
          mcu_mark_begin();
          st = arm_fully_connected_per_channel_s8(&ctx, &fc, &pq, &in_dims, (const int8_t *)x,
                                                  &f_dims, wd, &b_dims,
                                                  (const int32_t *)bias, &o_dims, (int8_t *)out);
          mcu_mark_end();
        } else {
          const cmsis_nn_per_tensor_quant_params tq = {q.multiplier[0], q.shift[0]};
          mcu_mark_begin();
          st = arm_fully_connected_s8(&ctx, &fc, &tq, &in_dims, (const int8_t *)x, &f_dims, wd,
                                      &b_dims, (const int32_t *)bias, &o_dims, (int8_t *)out);
          mcu_mark_end();
        }
      } else {
        if (q.per_row) fail(MCU_EXIT_UNAVAILABLE, "CMSIS-NN has no per-channel s16 FC");
        const int32_t size = arm_fully_connected_s16_get_buffer_size(&f_dims);
        cmsis_nn_context ctx = {size > 0 ? pool_alloc((uint32_t)size) : NULL, size};
        const cmsis_nn_per_tensor_quant_params tq = {q.multiplier[0], q.shift[0]};
        mcu_mark_begin();
        st = arm_fully_connected_s16(&ctx, &fc, &tq, &in_dims, (const int16_t *)x, &f_dims, wd,
                                     &b_dims, (const int64_t *)bias, &o_dims, (int16_t *)out);
        mcu_mark_end();
      }
      if (st != ARM_CMSIS_NN_SUCCESS) fail(MCU_EXIT_KERNEL, "CMSIS-NN returned an error");
      return;
    }
#endif
    default:
      printf("mcu firmware: kernel %lu is not in this build\n", (unsigned long)kernel);
      fflush(stdout);
      exit(MCU_EXIT_UNAVAILABLE);
  }
#undef S8
#undef S16
}

int main(void) {
  FILE *in = fopen("mcu_in.bin", "rb");
  if (in == NULL) fail(MCU_EXIT_IO, "cannot open mcu_in.bin");
  FILE *outf = fopen("mcu_out.bin", "wb");
  if (outf == NULL) fail(MCU_EXIT_IO, "cannot open mcu_out.bin");
  char magic[4];
  uint32_t jobs;
  read_exact(in, magic, 4, "empty case file");
  if (memcmp(magic, MCU_MAGIC, 4) != 0) fail(MCU_EXIT_FORMAT, "mcu_in.bin is not an MCU1 file");
  read_exact(in, &jobs, 4, "truncated case file (job count)");
  for (uint32_t k = 0; k < jobs; ++k) {
    uint32_t h[MCU_HEADER_WORDS];
    array a[MCU_ARRAYS];
    pool_top = &__big_start;
    read_exact(in, h, sizeof h, "truncated case file (job header)");
    if (h[10] > 7u || h[11] > 7u) fail(MCU_EXIT_FORMAT, "array skew beyond 7 bytes");
    for (int i = 0; i < MCU_ARRAYS; ++i) read_array(in, &a[i], i == 0 ? h[10] : i == 1 ? h[11] : 0u);
    const uint32_t elem = is_s16(h[0]) ? 2u : 1u;
    const uint32_t out_bytes = h[0] <= MCU_LOOP ? 0u : h[1] * h[3] * elem;
    void *out = out_bytes ? pool_alloc(out_bytes) : NULL;
    if (out_bytes) memset(out, 0x5A, out_bytes); /* a pattern no kernel leaves by chance */
    run_job(h, a, out);
    if (out_bytes && fwrite(out, 1, out_bytes, outf) != out_bytes)
      fail(MCU_EXIT_IO, "cannot write mcu_out.bin");
  }
  fclose(outf);
  fclose(in);
  return 0;
}
