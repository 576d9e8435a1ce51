/*
 * cond.c - pthread_cond_* for every process-private condition variable.
 *
 * glibc's condvar re-acquires the mutex through its internal lock functions, which know
 * nothing of a mutex running on pvpatch's lock; so the private condvars are implemented here,
 * on a futex, and re-acquire through the interposed path (the lock site for a mutex that runs
 * on pvpatch's lock, glibc's lock for one that passes through: a recursive, error-checking or
 * robust mutex works with a condvar too, with glibc's return values: EPERM from an
 * error-checking mutex not held, EOWNERDEAD from a robust one).  Process-shared condvars go to
 * glibc untouched.
 *
 * State, in the bytes of pthread_cond_t that glibc leaves alone once a private condvar is
 * initialised (it writes only __wrefs, offset 36, at init: bit 0 process-shared, bit 1
 * CLOCK_MONOTONIC), zero in PTHREAD_COND_INITIALIZER:
 *
 *   seq      (offset 0)  incremented by every signal and broadcast that finds a waiter; the
 *                        futex word waiters sleep on
 *   waiters  (offset 4)  threads between "registered" and their last touch of the condvar
 *                        (bits 0-30), and DESTROYING (bit 31)
 *
 * wait                                         signal
 *   1. waiters += 1            (seq_cst RMW)     a. read waiters     (seq_cst)   0: return
 *   2. s = seq                 (seq_cst)         b. seq += 1         (seq_cst RMW)
 *   3. unlock the mutex                          c. FUTEX_WAKE(seq, 1)
 *   4. FUTEX_WAIT(seq, s)      returns at once if seq != s
 *   5. waiters -= 1; last touch (wakes a destroy)
 *   6. lock the mutex
 *
 * No wake-up is lost: a waiter blocked when signal runs (it did 1-3 under the mutex, before
 * the signaller could take it, or anyway before a) is seen by a, and its step 4 either
 * compares against the seq that b changed (no sleep) or sleeps before b and is woken by c.
 * Spurious wake-ups (a signal may wake a waiter that came after it, and EINTR returns) are
 * allowed by POSIX; every caller waits in a loop.  Waking one futex waiter per signal: the
 * kernel wakes equal-priority waiters in FIFO order.
 *
 * Cancellation: wait is a cancellation point; the futex sleep runs with asynchronous
 * cancellation enabled, and the cleanup handler does steps 5 and 6 (the mutex is held again
 * when the cleanup handlers of the program run, as POSIX requires).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "preload.h"

struct pl_cond {
    uint32_t seq;
    uint32_t waiters;
};
#define DESTROYING 0x80000000u
#define COUNT_MASK 0x7fffffffu

_Static_assert(offsetof(pthread_cond_t, __data.__wrefs) >= sizeof(struct pl_cond),
               "the condvar state is clear of glibc's __wrefs");

#define WREFS_SHARED 1u
#define WREFS_MONOTONIC 2u

static inline struct pl_cond *state(pthread_cond_t *c) { return (struct pl_cond *)(void *)c; }

static inline unsigned wrefs(const pthread_cond_t *c)
{
    return __atomic_load_n(&c->__data.__wrefs, __ATOMIC_RELAXED);
}

static inline int shared(const pthread_cond_t *c) { return (wrefs(c) & WREFS_SHARED) != 0; }

static void leave(struct pl_cond *s)
{
    uint32_t old = __atomic_fetch_sub(&s->waiters, 1, __ATOMIC_RELEASE);
    if ((old & DESTROYING) && (old & COUNT_MASK) == 1) {
        int saved = errno;
        syscall(SYS_futex, &s->waiters, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
        errno = saved;
    }
}

static int relock(pthread_mutex_t *m, int ours)
{
    if (ours) {
        PL_LOCK(pl_mutex_word(m));
        return 0;
    }
    return pl_real()->mutex_lock(m);
}

struct wait_ctx {
    struct pl_cond *s;
    pthread_mutex_t *m;
    int ours;
};

static void cancel_cleanup(void *arg)
{
    struct wait_ctx *w = arg;
    /* The cancellation may have arrived after a signal's FUTEX_WAKE woke this waiter: that
     * wake-up belongs to another waiter now (POSIX: a cancelled waiter does not consume a
     * signal that others could take).  Pass one on, before leave() (after it, destroy may
     * free the condvar); at worst it is a spurious wake-up.  Partner: wake()'s c. */
    int saved = errno;
    syscall(SYS_futex, &w->s->seq, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    errno = saved;
    leave(w->s);
    relock(w->m, w->ours);
}

/* Step 4: one futex sleep, a cancellation point.  Returns errno of the sleep (ETIMEDOUT, or
 * EAGAIN/EINTR/0 for a wake-up, possibly spurious).  Its own function: the cleanup buffer is a
 * setjmp, which must not share a frame with values the caller needs after it. */
static __attribute__((noinline)) int sleep_on(struct wait_ctx *w, uint32_t seq, int op,
                                              const struct timespec *abs)
{
    int oldtype, err = 0, saved = errno; /* the program's errno: pthread calls return theirs */
    long r;
    pthread_cleanup_push(cancel_cleanup, w);
    pthread_setcanceltype(PTHREAD_CANCEL_ASYNCHRONOUS, &oldtype);
    r = syscall(SYS_futex, &w->s->seq, op, seq, abs, NULL, FUTEX_BITSET_MATCH_ANY);
    err = r < 0 ? errno : 0;
    pthread_setcanceltype(oldtype, NULL);
    pthread_cleanup_pop(0);
    errno = saved;
    return err;
}

/* clk < 0: no timeout. */
static int wait_common(pthread_cond_t *c, pthread_mutex_t *m, clockid_t clk,
                       const struct timespec *abs)
{
    if (abs != NULL) {
        if (abs->tv_nsec < 0 || abs->tv_nsec >= 1000000000L || !pl_valid_clock(clk))
            return EINVAL;
        if (abs->tv_sec < 0)
            return ETIMEDOUT; /* before the epoch of either clock: glibc does not wait */
    }
    struct wait_ctx w = {state(c), m, pl_mutex_ours(m)};
    __atomic_fetch_add(&w.s->waiters, 1, __ATOMIC_SEQ_CST);      /* 1 */
    uint32_t seq = __atomic_load_n(&w.s->seq, __ATOMIC_SEQ_CST); /* 2, partner: signal's a-b */
    if (w.ours) {                                                /* 3 */
        PL_UNLOCK(pl_mutex_word(m));
    } else {
        int r = pl_real()->mutex_unlock(m); /* EPERM: an error-checking mutex not held */
        if (r != 0) {
            leave(w.s);
            return r;
        }
    }
    int op = FUTEX_WAIT_BITSET_PRIVATE | (clk == CLOCK_REALTIME ? FUTEX_CLOCK_REALTIME : 0);
    int result = sleep_on(&w, seq, op, abs) == ETIMEDOUT ? ETIMEDOUT : 0;
    /* 0, EAGAIN (seq moved), EINTR: a wake-up, possibly spurious. */
    leave(w.s); /* 5 */
    int lr = relock(m, w.ours); /* 6: EOWNERDEAD from a robust mutex wins, as in glibc */
    return lr != 0 ? lr : result;
}

PL_EXPORT int pthread_cond_init(pthread_cond_t *c, const pthread_condattr_t *a)
{
    return pl_real()->cond_init(c, a); /* zeroes the state, records clock and sharing */
}

PL_EXPORT int pthread_cond_destroy(pthread_cond_t *c)
{
    if (shared(c))
        return pl_real()->cond_destroy(c);
    /* Waiters woken by a broadcast may still be on their way out (step 5): wait for them, as
     * glibc does, so that the memory can be freed when destroy returns.  A waiter that was
     * never woken would make this wait for ever; POSIX makes destroying it undefined. */
    struct pl_cond *s = state(c);
    uint32_t v = __atomic_or_fetch(&s->waiters, DESTROYING, __ATOMIC_ACQ_REL);
    int saved = errno;
    while (v & COUNT_MASK) {
        syscall(SYS_futex, &s->waiters, FUTEX_WAIT_PRIVATE, v, NULL, NULL, 0);
        v = __atomic_load_n(&s->waiters, __ATOMIC_ACQUIRE);
    }
    errno = saved;
    return pl_real()->cond_destroy(c);
}

PL_EXPORT int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
{
    if (shared(c))
        return pl_real()->cond_wait(c, m);
    return wait_common(c, m, -1, NULL);
}

PL_EXPORT int pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m,
                                     const struct timespec *abs)
{
    if (shared(c))
        return pl_real()->cond_timedwait(c, m, abs);
    return wait_common(c, m, (wrefs(c) & WREFS_MONOTONIC) ? CLOCK_MONOTONIC : CLOCK_REALTIME,
                       abs);
}

PL_EXPORT int pthread_cond_clockwait(pthread_cond_t *c, pthread_mutex_t *m, clockid_t clk,
                                     const struct timespec *abs)
{
    if (shared(c))
        return pl_real()->cond_clockwait(c, m, clk, abs);
    return wait_common(c, m, clk, abs);
}

static int wake(pthread_cond_t *c, int n)
{
    struct pl_cond *s = state(c);
    if ((__atomic_load_n(&s->waiters, __ATOMIC_SEQ_CST) & COUNT_MASK) == 0) /* a */
        return 0;
    __atomic_fetch_add(&s->seq, 1, __ATOMIC_SEQ_CST);                        /* b */
    int saved = errno;
    syscall(SYS_futex, &s->seq, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);        /* c */
    errno = saved;
    return 0;
}

PL_EXPORT int pthread_cond_signal(pthread_cond_t *c)
{
    if (shared(c))
        return pl_real()->cond_signal(c);
    return wake(c, 1);
}

PL_EXPORT int pthread_cond_broadcast(pthread_cond_t *c)
{
    if (shared(c))
        return pl_real()->cond_broadcast(c);
    return wake(c, INT_MAX);
}
