/* A QEMU TCG plugin that counts the guest instructions executed between two marker
 * instructions, exactly.
 *
 *   qemu-system-arm ... -plugin ./libmam_insn_count.so,begin=0x10c,end=0x10e,out=counts.txt
 *
 * Every translated block adds its instruction count to one 64-bit counter when it starts
 * (an inline add: no call per block). The instructions at `begin` and `end` (the first
 * instructions of mcu_mark_begin / mcu_mark_end, each a lone `bx lr` in its own block) get a
 * callback that snapshots the counter; at every `end` the plugin writes one line to `out`:
 * the instructions executed after the begin marker's block up to and including the end
 * marker's. A block is counted whole when it starts, which is exact as long as no exception
 * leaves a block midway between the markers (the firmware takes none there).
 *
 * Written for QEMU's plugin API version 1 (QEMU 6.x-8.0; Debian bookworm's 7.2). Debian ships
 * no qemu-plugin.h, so the few declarations used are written out below, as QEMU declares them.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- from QEMU's include/qemu/qemu-plugin.h (API version 1) ---- */
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* only passed through */
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn,
                                            qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb,
                                    void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))
QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv);
/* ---- end of QEMU's declarations ---- */

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;

static uint64_t counter;      /* instructions of every block started so far */
static uint64_t at_begin;     /* counter when the begin marker last ran */
static uint64_t begin_addr, end_addr;
static int in_window;
static uint64_t windows;
static FILE *out;

static void on_begin(unsigned int vcpu, void *udata) {
  (void)vcpu;
  (void)udata;
  at_begin = counter;
  in_window = 1;
}

static void on_end(unsigned int vcpu, void *udata) {
  (void)vcpu;
  (void)udata;
  if (!in_window) {
    fprintf(out, "error: end marker without begin\n");
  } else {
    fprintf(out, "%" PRIu64 "\n", counter - at_begin);
  }
  fflush(out);
  in_window = 0;
  ++windows;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  (void)id;
  const size_t n = qemu_plugin_tb_n_insns(tb);
  qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &counter, n);
  for (size_t i = 0; i < n; ++i) {
    struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
    const uint64_t pc = qemu_plugin_insn_vaddr(insn);
    if (pc == begin_addr) {
      qemu_plugin_register_vcpu_insn_exec_cb(insn, on_begin, QEMU_PLUGIN_CB_NO_REGS, NULL);
    } else if (pc == end_addr) {
      qemu_plugin_register_vcpu_insn_exec_cb(insn, on_end, QEMU_PLUGIN_CB_NO_REGS, NULL);
    }
  }
}

static void on_qemu_exit(qemu_plugin_id_t id, void *udata) {
  (void)id;
  (void)udata;
  fprintf(out, "total %" PRIu64 " windows %" PRIu64 "\n", counter, windows);
  fclose(out);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv) {
  (void)info;
  const char *path = NULL;
  int have_begin = 0, have_end = 0;
  for (int i = 0; i < argc; ++i) {
    if (strncmp(argv[i], "begin=", 6) == 0) {
      begin_addr = strtoull(argv[i] + 6, NULL, 0) & ~1ull; /* drop the Thumb bit */
      have_begin = 1;
    } else if (strncmp(argv[i], "end=", 4) == 0) {
      end_addr = strtoull(argv[i] + 4, NULL, 0) & ~1ull;
      have_end = 1;
    } else if (strncmp(argv[i], "out=", 4) == 0) {
      path = argv[i] + 4;
    } else {
      fprintf(stderr, "mam_insn_count: unknown argument '%s' (begin=, end=, out=)\n", argv[i]);
      return -1;
    }
  }
  if (!have_begin || !have_end || path == NULL) {
    fprintf(stderr, "mam_insn_count: needs begin=ADDR,end=ADDR,out=FILE\n");
    return -1;
  }
  out = fopen(path, "w");
  if (out == NULL) {
    fprintf(stderr, "mam_insn_count: cannot write '%s'\n", path);
    return -1;
  }
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_atexit_cb(id, on_qemu_exit, NULL);
  return 0;
}
