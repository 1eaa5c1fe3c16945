/* The case file the bench firmware reads (mcu_in.bin) and the output it writes (mcu_out.bin),
 * both in the working directory of QEMU, through semihosting file I/O.
 * mam_tf/device/mcu.py writes and reads the same layout; keep the two in step.
 *
 * Little-endian throughout.
 *   file    := "MCU1" u32 job_count job*
 *   job     := u32 header[16] array[8]
 *   header  := kernel m n batches per_row has_bias input_zp output_zp act_min act_max
 *              values_skew offsets_skew (then 4 words, 0)   (zero points and clamp as int32;
 *              a skew 0..7 places that array so many bytes past an 8-byte boundary)
 *   array   := u32 nbytes, nbytes of data, zero padding to a multiple of 4
 *   arrays, in order: values (int8 [E]), offsets (uint8 [E]), row_counts (int16 [m]),
 *              weights (int8 [m][n], dense kernels), multiplier (int32 [1 or m]),
 *              shift (int32 [1 or m]), bias (int32 [m] for s8, int64 [m] for s16; 0 bytes: none),
 *              input (int8 or int16 [batches][n])
 * For each job the firmware appends the output (int8 or int16 [batches][m]) to mcu_out.bin and
 * calls the kernel between mcu_mark_begin() and mcu_mark_end(), where the counting plugin
 * snapshots its instruction count. An empty array is passed as NULL. */
#ifndef MAM_MCU_CASE_H_
#define MAM_MCU_CASE_H_

#define MCU_MAGIC "MCU1"
#define MCU_HEADER_WORDS 16
#define MCU_ARRAYS 8

enum mcu_kernel {
  MCU_EMPTY = 0, /* calls an empty function: the marker overhead */
  MCU_LOOP = 1,  /* a loop of n iterations of 2 instructions (2n + 1 in all): a known count */
  MCU_MAM_SPARSE_S8_PORTABLE = 10,
  MCU_MAM_SPARSE_S16_PORTABLE = 11,
  MCU_MAC_SPARSE_S8_PORTABLE = 12,
  MCU_MAC_SPARSE_S16_PORTABLE = 13,
  MCU_MAM_SPARSE_S8_OPTIMIZED = 20,
  MCU_MAM_SPARSE_S16_OPTIMIZED = 21,
  MCU_MAC_SPARSE_S8_OPTIMIZED = 22,
  MCU_MAC_SPARSE_S16_OPTIMIZED = 23,
  MCU_MAC_DENSE_S8 = 30,
  MCU_MAC_DENSE_S16 = 31,
  MCU_MAM_DENSE_S8 = 32,
  MCU_MAM_DENSE_S16 = 33,
  MCU_CMSIS_FC_S8 = 40,
  MCU_CMSIS_FC_S16 = 41
};

/* Exit statuses of the firmware (besides 0). */
#define MCU_EXIT_IO 2          /* a file could not be opened, read or written */
#define MCU_EXIT_FORMAT 3      /* a malformed case file */
#define MCU_EXIT_UNAVAILABLE 4 /* a kernel this build does not have */
#define MCU_EXIT_NOMEM 5       /* the arrays do not fit the 16 MiB pool */
#define MCU_EXIT_KERNEL 6      /* a kernel reported an error (CMSIS-NN's status) */

#endif /* MAM_MCU_CASE_H_ */
