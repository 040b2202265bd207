/* SPDX-License-Identifier: MIT */
/*
 * Stackful coroutines: stacks, creation and the switch to and from the
 * scheduler.
 *
 * Each stack is one mmap: a guard page (PROT_NONE, so an overflow faults
 * instead of corrupting a neighbour), the stack, and a small header at the
 * top. Stacks and coroutine structs go back to per-loop LIFO free lists, so
 * spawning is a pointer pop and a few stores in the common case. Pages are
 * touched lazily by the kernel, so an idle coroutine costs only what its
 * deepest call used.
 *
 * A coroutine takes its stack when it first runs, not when it is spawned:
 * a burst of spawns (one per request of a batch of HTTP/2 frames) then runs
 * one after the other on the same cache-hot stack instead of on as many cold
 * ones. The spawn still reserves a stack (mapping one if the free list has
 * none to spare), so running never fails for want of memory.
 *
 * Coroutines only ever switch to and from their loop's scheduler context
 * (asymmetric coroutines, as in lwan). That keeps the sanitizer protocol
 * simple: every switch is bracketed by ASan's start/finish_switch_fiber and
 * TSan's switch_to_fiber, and valgrind is told about each stack, so all
 * three tools follow the stack changes.
 */
#include <assert.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/alloc.h"
#include "runtime/internal.h"

#if defined(__SANITIZE_ADDRESS__)
#define MICA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MICA_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define MICA_TSAN_FIBERS 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MICA_TSAN_FIBERS 1
#endif
#endif

#ifdef MICA_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef MICA_TSAN_FIBERS
#include <sanitizer/tsan_interface.h>
#endif
/* MICA_VALGRIND comes from the build (cmake -DMICA_VALGRIND=ON), never from
 * whether the header happens to be installed. */
#if MICA_VALGRIND
#include <valgrind/valgrind.h>
#endif

#if !defined(__x86_64__)
#error "mica's context switch is written for x86-64; add src/runtime/switch_<arch>.S"
#endif

void mica__ctx_entry(void);

/* ---- stacks ------------------------------------------------------------- */

void mica__stack_pool_init(mica__loop_t *loop, size_t stack_bytes)
{
    loop->page = (size_t)sysconf(_SC_PAGESIZE);
    if (stack_bytes < 16384)
        stack_bytes = 16384;
    loop->stack_bytes = (stack_bytes + loop->page - 1) & ~(loop->page - 1);
    loop->max_free_stacks = 4096;
    loop->free_stacks = NULL;
    loop->nfree_stacks = 0;
}

static void stack_unmap(mica__loop_t *loop, mica__stack_t *st)
{
#if MICA_VALGRIND
    VALGRIND_STACK_DEREGISTER(st->valgrind_id);
#endif
    munmap((char *)st->base - loop->page, st->size + loop->page);
}

void mica__stack_pool_destroy(mica__loop_t *loop)
{
    while (loop->free_stacks) {
        mica__stack_t *st = loop->free_stacks;
        loop->free_stacks = st->next_free;
        stack_unmap(loop, st);
    }
    loop->nfree_stacks = 0;
    while (loop->free_coros) {
        mica__coro_t *co = loop->free_coros;
        loop->free_coros = co->next_ready;
        mica__free(co);
    }
    loop->nfree_coros = 0;
}

/* The stack header sits at the very top of the mapping, the coroutine below it. */
static mica__stack_t *stack_map(mica__loop_t *loop)
{
    size_t total = loop->stack_bytes + loop->page;
    char *map = mmap(NULL, total, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (map == MAP_FAILED)
        return NULL;
    if (mprotect(map, loop->page, PROT_NONE) != 0) {
        munmap(map, total);
        return NULL;
    }
    char *top = map + total;
    mica__stack_t *st = (mica__stack_t *)(top - sizeof(mica__stack_t));
    st->base = map + loop->page;
    st->size = loop->stack_bytes;
    st->next_free = NULL;
#if MICA_VALGRIND
    st->valgrind_id = VALGRIND_STACK_REGISTER(st->base, top);
#else
    st->valgrind_id = 0;
#endif
    return st;
}

static void stack_put(mica__loop_t *loop, mica__stack_t *st)
{
#ifdef MICA_ASAN
    /* A finished coroutine never returned from its first frames, so their
     * redzones are still poisoned; clear them before the stack is reused. */
    ASAN_UNPOISON_MEMORY_REGION(st->base, st->size);
#endif
    st->next_free = loop->free_stacks;
    loop->free_stacks = st;
    loop->nfree_stacks++;
    /* Over the cap (the stacks promised to coroutines that have not run yet
     * do not count), unmap the coldest-but-one: not this cache-hot one. */
    size_t keep = loop->stacks_reserved + (loop->stopping ? 0 : loop->max_free_stacks);
    if (loop->nfree_stacks > keep && keep > 0) {
        mica__stack_t *victim = st->next_free;
        st->next_free = victim->next_free;
        loop->nfree_stacks--;
        stack_unmap(loop, victim);
    } else if (loop->nfree_stacks > keep) {
        loop->free_stacks = st->next_free;
        loop->nfree_stacks--;
        stack_unmap(loop, st);
    }
}

/* ---- coroutines ------------------------------------------------------------ */

static void coro_main(mica__coro_t *co)
{
    mica__loop_t *loop = co->loop;
#ifdef MICA_ASAN
    /* First entry: learn the scheduler's (thread) stack bounds for the way
     * back. The very first coroutine is entered from the scheduler; later
     * ones may be entered from another coroutine (direct hand-off). */
    const void *from_bottom;
    size_t from_size;
    __sanitizer_finish_switch_fiber(NULL, &from_bottom, &from_size);
    if (!loop->sched_stack_bottom) {
        loop->sched_stack_bottom = from_bottom;
        loop->sched_stack_size = from_size;
    }
#endif
    co->fn(co->arg);
    co->done = true;
    mica__coro_suspend(loop); /* never returns: the scheduler frees us */
    abort();
}

int mica__coro_new(mica__loop_t *loop, mica_coro_fn fn, void *arg, mica__coro_t **out)
{
    if (mica__loop_reserve_timers(loop, loop->ncoros + 1) != 0) {
        loop->stat_spawn_failed++;
        return MICA_ENOMEM;
    }
    if (loop->nfree_stacks <= loop->stacks_reserved) {
        mica__stack_t *st = stack_map(loop);
        if (!st) {
            loop->stat_spawn_failed++;
            return MICA_ENOMEM;
        }
        st->next_free = loop->free_stacks;
        loop->free_stacks = st;
        loop->nfree_stacks++;
    }
    mica__coro_t *co = loop->free_coros;
    if (co) {
        loop->free_coros = co->next_ready;
        loop->nfree_coros--;
    } else if (!(co = mica__malloc(sizeof(*co)))) {
        loop->stat_spawn_failed++;
        return MICA_ENOMEM;
    }
    memset(co, 0, offsetof(mica__coro_t, wake_posted));
    atomic_store_explicit(&co->wake_posted, false, memory_order_relaxed);
    co->fn = fn;
    co->arg = arg;
    co->loop = loop;
    co->deadline_ms = MICA_NO_DEADLINE;
    loop->stacks_reserved++;
#ifdef MICA_TSAN_FIBERS
    co->tsan_fiber = __tsan_create_fiber(0);
#endif
    /* Link into the loop's list of live coroutines (drain, cancel-all). */
    co->all_next = loop->all;
    if (loop->all)
        loop->all->all_prev = co;
    loop->all = co;
    loop->ncoros++;
    loop->stat_spawned++;
    *out = co;
    return 0;
}

/* Gives a coroutine that is about to run for the first time the most
 * recently freed stack (reserved for it at spawn) and its first frame. */
static inline void coro_attach(mica__loop_t *loop, mica__coro_t *co)
{
    if (co->stack)
        return;
    mica__stack_t *st = loop->free_stacks;
    assert(st && loop->stacks_reserved > 0);
    loop->free_stacks = st->next_free;
    loop->nfree_stacks--;
    loop->stacks_reserved--;
    co->stack = st;

    /* Initial frame popped by mica__ctx_switch: r15 r14 r13 r12 rbx rbp, then
     * the return address. See switch_x86_64.S for the alignment argument. */
    uintptr_t sp = ((uintptr_t)st & ~(uintptr_t)15) - 72;
    uint64_t *frame = (uint64_t *)sp;
    frame[0] = 0;                              /* r15 */
    frame[1] = 0;                              /* r14 */
    frame[2] = (uint64_t)(uintptr_t)coro_main; /* r13 */
    frame[3] = (uint64_t)(uintptr_t)co;        /* r12 */
    frame[4] = 0;                              /* rbx */
    frame[5] = 0;                              /* rbp */
    frame[6] = (uint64_t)(uintptr_t)mica__ctx_entry;
    frame[7] = 0;
    frame[8] = 0;
    co->sp = (void *)sp;
}

void mica__coro_free(mica__loop_t *loop, mica__coro_t *co)
{
    if (co->all_prev)
        co->all_prev->all_next = co->all_next;
    else
        loop->all = co->all_next;
    if (co->all_next)
        co->all_next->all_prev = co->all_prev;
    loop->ncoros--;
#ifdef MICA_TSAN_FIBERS
    __tsan_destroy_fiber(co->tsan_fiber);
#endif
    if (co->stack)
        stack_put(loop, co->stack);
    else
        loop->stacks_reserved--; /* never ran */
    if (loop->nfree_coros < loop->max_free_stacks && !loop->stopping) {
        co->next_ready = loop->free_coros;
        loop->free_coros = co;
        loop->nfree_coros++;
    } else {
        mica__free(co);
    }
}

void mica__coro_resume(mica__loop_t *loop, mica__coro_t *co)
{
    assert(loop->current == NULL);
    coro_attach(loop, co);
    loop->current = co;
    loop->runs++;
    loop->handoff_budget = MICA__HANDOFF_BUDGET;
#ifdef MICA_TSAN_FIBERS
    if (!loop->sched_tsan_fiber)
        loop->sched_tsan_fiber = __tsan_get_current_fiber();
    __tsan_switch_to_fiber(co->tsan_fiber, 0);
#endif
#ifdef MICA_ASAN
    __sanitizer_start_switch_fiber(&loop->sched_asan_fake_stack, co->stack->base, co->stack->size);
#endif
    mica__ctx_switch(&loop->sched_sp, co->sp);
#ifdef MICA_ASAN
    __sanitizer_finish_switch_fiber(loop->sched_asan_fake_stack, NULL, NULL);
#endif
    co = loop->current; /* the one that switched back: `co` may have handed off */
    loop->current = NULL;
    if (co->done) {
        if (!atomic_load_explicit(&co->wake_posted, memory_order_acquire)) {
            mica__coro_free(loop, co);
        } else {
            /* Another thread posted a wake-up that is still queued (no more
             * can come: nothing waits for a finished coroutine); the loop
             * frees us when it has delivered (dropped) it. */
            co->zombie = true;
            co->next_ready = loop->zombies;
            loop->zombies = co;
        }
    }
}

/* Takes the next ready coroutine for a direct hand-off, or NULL: only when
 * the caller waits (not finished: the scheduler frees those; not yielding)
 * and has budget left. */
static mica__coro_t *take_handoff(mica__loop_t *loop, mica__coro_t *co)
{
    mica__coro_t *next = loop->ready_head;
    if (!next || co->done || co->queued || loop->handoff_budget == 0)
        return NULL; /* queued: a yield, which goes behind the whole round */
    loop->handoff_budget--;
    loop->runs++;
    loop->ready_head = next->next_ready;
    if (!loop->ready_head)
        loop->ready_tail = NULL;
    next->queued = false;
    loop->nrunnable--;
    return next;
}

void mica__coro_suspend(mica__loop_t *loop)
{
    mica__coro_t *co = loop->current;
    assert(co != NULL);
    /* A coroutine that waits hands the CPU straight to the next runnable one
     * (one switch instead of two through the scheduler), as Go's runnext;
     * the budget returns to the scheduler for I/O and timers now and then. */
    mica__coro_t *next = take_handoff(loop, co);
    if (next)
        coro_attach(loop, next);
    void *to_sp = next ? next->sp : loop->sched_sp;
#ifdef MICA_TSAN_FIBERS
    __tsan_switch_to_fiber(next ? next->tsan_fiber : loop->sched_tsan_fiber, 0);
#endif
#ifdef MICA_ASAN
    /* A finished coroutine passes NULL so ASan frees its fake stack. */
    __sanitizer_start_switch_fiber(co->done ? NULL : &co->asan_fake_stack,
                                   next ? next->stack->base : loop->sched_stack_bottom,
                                   next ? next->stack->size : loop->sched_stack_size);
#endif
    if (next)
        loop->current = next;
    mica__ctx_switch(&co->sp, to_sp);
#ifdef MICA_ASAN
    __sanitizer_finish_switch_fiber(co->asan_fake_stack, NULL, NULL);
#endif
}
