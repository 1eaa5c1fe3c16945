/* See mcu_markers.h. */
#include "mcu_markers.h"

__asm__(
    "  .text\n  .syntax unified\n  .thumb\n"
    "  .global mcu_mark_begin\n  .type mcu_mark_begin, %function\n  .thumb_func\n"
    "mcu_mark_begin:\n  bx lr\n"
    "  .global mcu_mark_end\n  .type mcu_mark_end, %function\n  .thumb_func\n"
    "mcu_mark_end:\n  bx lr\n"
    "  .global mcu_empty\n  .type mcu_empty, %function\n  .thumb_func\n"
    "mcu_empty:\n  bx lr\n"
    "  .global mcu_count_loop\n  .type mcu_count_loop, %function\n  .thumb_func\n"
    "mcu_count_loop:\n"
    "1: subs r0, r0, #1\n  bne 1b\n  bx lr\n");
