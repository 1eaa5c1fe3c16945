/* Startup for QEMU's mps2-an500 (Cortex-M7): the vector table, the reset handler and the few
 * pieces newlib (librdimon, semihosting) needs when linked with -nostartfiles.
 *
 * At reset an M-profile core loads SP and PC from the vector table at 0x0; newlib's crt0 has
 * none, so this file provides it. The reset handler zeroes .bss (.data is linked where it
 * runs: QEMU loads it there), enables the FPU (the code is built for hard float), opens the
 * semihosting handles (stdio through the host) and calls main; main's status ends QEMU
 * through semihosting's exit. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

extern int main(void);
extern void initialise_monitor_handles(void);
extern void __libc_init_array(void);

extern uint32_t __bss_start__, __bss_end__, __stack_top;
extern char __heap_start, __heap_limit_addr;

void Reset_Handler(void);
void Fault_Handler(void);
void _init(void);
void _fini(void);
void *_sbrk(ptrdiff_t incr);

/* Semihosting from a fault handler: SYS_WRITE0 then SYS_EXIT (reason: run-time error). */
static void semihost(uint32_t op, const void *arg) {
  register uint32_t r0 __asm__("r0") = op;
  register const void *r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
}

void Fault_Handler(void) {
  uint32_t ipsr;
  __asm__ volatile("mrs %0, ipsr" : "=r"(ipsr));
  static char msg[] = "mcu firmware: fault, exception 00\n";
  msg[31] = (char)('0' + (ipsr / 10) % 10);
  msg[32] = (char)('0' + ipsr % 10);
  semihost(0x04, msg);                    /* SYS_WRITE0 */
  semihost(0x18, (const void *)0x20023u); /* SYS_EXIT, ADP_Stopped_RunTimeErrorUnknown */
  for (;;) {
  }
}

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))(&__stack_top), /* initial SP */
    Reset_Handler,                  /* reset */
    Fault_Handler,                  /* NMI */
    Fault_Handler,                  /* HardFault */
    Fault_Handler,                  /* MemManage */
    Fault_Handler,                  /* BusFault */
    Fault_Handler,                  /* UsageFault */
    0, 0, 0, 0,
    Fault_Handler, /* SVCall */
    Fault_Handler, /* DebugMon */
    0,
    Fault_Handler, /* PendSV */
    Fault_Handler, /* SysTick */
};

void Reset_Handler(void) {
  for (uint32_t *p = &__bss_start__; p < &__bss_end__; ++p) *p = 0;
  /* CPACR: full access to CP10 and CP11 (the FPU). */
  volatile uint32_t *cpacr = (volatile uint32_t *)0xE000ED88u;
  *cpacr |= 0xFu << 20;
  __asm__ volatile("dsb\n\tisb" ::: "memory");
  initialise_monitor_handles();
  __libc_init_array();
  exit(main());
}

void _init(void) {}
void _fini(void) {}

/* The heap for newlib (stdio buffers): from the end of .bss up to 64 KiB below the stack.
 * librdimon's own _sbrk refuses any heap above the stack pointer; this one has fixed ends. */
void *_sbrk(ptrdiff_t incr) {
  static char *brk = &__heap_start;
  if (incr < 0 || (size_t)incr > (size_t)(&__heap_limit_addr - brk)) {
    errno = ENOMEM;
    return (void *)-1;
  }
  char *prev = brk;
  brk += incr;
  return prev;
}
