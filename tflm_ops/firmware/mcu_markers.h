/* The two marker functions the counting plugin (plugin/insn_count.c) watches, and two helpers
 * with a known instruction count. Defined in assembly (mcu_markers.c) so the compiler can
 * neither merge nor inline them: each marker is the single instruction `bx lr`. */
#ifndef MAM_MCU_MARKERS_H_
#define MAM_MCU_MARKERS_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void mcu_mark_begin(void);
void mcu_mark_end(void);
void mcu_empty(void);               /* bx lr: 1 instruction */
void mcu_count_loop(uint32_t n);    /* n >= 1 iterations of subs + bne, then bx lr: 2n + 1 */

#ifdef __cplusplus
}
#endif

#endif /* MAM_MCU_MARKERS_H_ */
