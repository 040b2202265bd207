/* SPDX-License-Identifier: MIT */
/*
 * Context switch for x86-64 System V. Only the callee-saved registers need
 * saving (rbx, rbp, r12-r15): the switch is an ordinary call, so the compiler
 * already treats every other register as clobbered. MXCSR and the x87
 * control word are not saved: mica never changes them per coroutine.
 */
#if defined(__x86_64__)
    .text

/* void mica__ctx_switch(void **from_sp, void *to_sp) */
    .globl mica__ctx_switch
    .hidden mica__ctx_switch
    .type mica__ctx_switch, @function
    .p2align 4
mica__ctx_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size mica__ctx_switch, .-mica__ctx_switch

/*
 * First frame of a new coroutine: mica__coro_new() lays out the stack so
 * that mica__ctx_switch "returns" here with r12 = the coroutine and r13 = the
 * C entry point; rsp is then 16-byte aligned, as a call requires.
 */
    .globl mica__ctx_entry
    .hidden mica__ctx_entry
    .type mica__ctx_entry, @function
    .p2align 4
mica__ctx_entry:
    movq %r12, %rdi
    xorl %ebp, %ebp
    callq *%r13
    ud2
    .size mica__ctx_entry, .-mica__ctx_entry
#endif

    .section .note.GNU-stack, "", @progbits
