/*
 * mutex.c - pthread_mutex_* and pthread_spin_* on pvpatch's switchable lock.
 *
 * A mutex runs on the lock when glibc's kind says default/normal or adaptive, private, not
 * robust, no priority protocol; the lock word is the mutex's first 32-bit word (__lock), which
 * is 0 in PTHREAD_MUTEX_INITIALIZER, in PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP and after
 * pthread_mutex_init, and 0 is "free" in the lock word too.  Every other mutex (recursive,
 * error-checking, robust, PI, PP, process-shared, destroyed: kind -1) goes to glibc untouched.
 * The kind is read at every call: it is written only by init and destroy, and a mutex in use
 * is neither initialised nor destroyed (POSIX), so every call on one mutex takes one path.
 *
 * A spinlock is one int, all of it the lock word: there is no room for a flag, so the
 * process-shared ones (pthread_spin_init with PTHREAD_PROCESS_SHARED) are remembered by address
 * in a small table and go to glibc; every other spinlock runs on the lock.  pthread_spin_init
 * is required before use (glibc's x86-64 free value is 1, so a zeroed spinlock is a held one
 * there); this init stores pvpatch's free value, 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <time.h>

#include "preload.h"

_Static_assert(sizeof(((pthread_mutex_t *)0)->__data.__lock) == sizeof(pvp_lock_t),
               "the lock word is the mutex's __lock");
_Static_assert(sizeof(pthread_spinlock_t) == sizeof(pvp_lock_t), "a spinlock is one word");

/* glibc's kind bits (nptl/pthreadP.h): elision hints (256, 512) say nothing about semantics;
 * robust 16, PI 32, PP 64, process-shared 128 pass through, as do the types recursive (1) and
 * error-checking (2). */
#define KIND_ELISION_BITS 0x300
#define KIND_TIMED 0
#define KIND_ADAPTIVE 3

int pl_mutex_ours(const pthread_mutex_t *m)
{
    int k = __atomic_load_n(&m->__data.__kind, __ATOMIC_RELAXED) & ~KIND_ELISION_BITS;
    return k == KIND_TIMED || k == KIND_ADAPTIVE;
}

int pl_valid_clock(clockid_t c) { return c == CLOCK_REALTIME || c == CLOCK_MONOTONIC; }

PL_EXPORT int pthread_mutex_init(pthread_mutex_t *m, const pthread_mutexattr_t *a)
{
    /* glibc validates the attributes, zeroes the mutex (our lock word included) and records
     * the kind that every later call reads. */
    return pl_real()->mutex_init(m, a);
}

PL_EXPORT int pthread_mutex_destroy(pthread_mutex_t *m)
{
    /* glibc refuses a locked default mutex with EBUSY (it counts users; the lock word is the
     * count here), then marks the mutex destroyed (kind -1: later calls pass through and get
     * glibc's EINVAL). */
    if (pl_mutex_ours(m) && __atomic_load_n(&pl_mutex_word(m)->val, __ATOMIC_ACQUIRE) != 0)
        return EBUSY;
    return pl_real()->mutex_destroy(m);
}

PL_EXPORT int pthread_mutex_lock(pthread_mutex_t *m)
{
    if (__builtin_expect(pl_mutex_ours(m), 1)) {
        PL_LOCK(pl_mutex_word(m));
        return 0;
    }
    return pl_real()->mutex_lock(m);
}

PL_EXPORT int pthread_mutex_trylock(pthread_mutex_t *m)
{
    if (__builtin_expect(pl_mutex_ours(m), 1)) {
        /* The same in every variant: one CAS of the whole word (locks.h). */
        if (!pvp_trylock(pl_mutex_word(m)))
            return EBUSY;
        return 0;
    }
    return pl_real()->mutex_trylock(m);
}

PL_EXPORT int pthread_mutex_unlock(pthread_mutex_t *m)
{
    if (__builtin_expect(pl_mutex_ours(m), 1)) {
        PL_UNLOCK(pl_mutex_word(m));
        return 0;
    }
    return pl_real()->mutex_unlock(m);
}

static uint64_t ts_ns(const struct timespec *t)
{
    return (uint64_t)t->tv_sec * 1000000000ull + (uint64_t)t->tv_nsec;
}

/*
 * A timed acquisition.  The queued lock has no way to leave its MCS queue, so a timed waiter
 * does not queue: it retries the whole-word trylock, first spinning, then yielding, then
 * sleeping in steps that double from 1 us to 1 ms (bounded by the deadline), and gives up with
 * ETIMEDOUT once the deadline has passed on `clk`.  It is correct with any variant running
 * (trylock is one CAS in all of them) but not fair: queued waiters go first.  The error order
 * is glibc's: a bad clock is EINVAL at once; a bad tv_nsec is EINVAL only when the lock is not
 * free (glibc looks at the timeout only when it would wait); a deadline before 1970 is
 * ETIMEDOUT.
 */
static int timed_lock_(pvp_lock_t *w, clockid_t clk, const struct timespec *abs);

static int timed_lock(pvp_lock_t *w, clockid_t clk, const struct timespec *abs)
{
    int saved = errno; /* a signal may interrupt the sleeps (EINTR): not the program's errno */
    int r = timed_lock_(w, clk, abs);
    errno = saved;
    return r;
}

static int timed_lock_(pvp_lock_t *w, clockid_t clk, const struct timespec *abs)
{
    if (!pl_valid_clock(clk))
        return EINVAL;
    if (pvp_trylock(w))
        return 0;
    if (abs->tv_nsec < 0 || abs->tv_nsec >= 1000000000L)
        return EINVAL;
    if (abs->tv_sec < 0)
        return ETIMEDOUT;
    uint64_t deadline = ts_ns(abs);
    for (int i = 0; i < 1024; i++) {
        __builtin_ia32_pause();
        if (__atomic_load_n(&w->val, __ATOMIC_RELAXED) == 0 && pvp_trylock(w))
            return 0;
    }
    long step_ns = 1000;
    for (int round = 0;; round++) {
        if (pvp_trylock(w))
            return 0;
        struct timespec now;
        clock_gettime(clk, &now);
        uint64_t t = ts_ns(&now);
        if (t >= deadline)
            return ETIMEDOUT;
        if (round < 16) {
            sched_yield();
            continue;
        }
        uint64_t left = deadline - t;
        struct timespec d = {0, (long)(left < (uint64_t)step_ns ? left : (uint64_t)step_ns)};
        nanosleep(&d, NULL);
        if (step_ns < 1000000)
            step_ns *= 2;
    }
}

PL_EXPORT int pthread_mutex_clocklock(pthread_mutex_t *m, clockid_t clk,
                                      const struct timespec *abs)
{
    if (!pl_mutex_ours(m))
        return pl_real()->mutex_clocklock(m, clk, abs);
    int r = timed_lock(pl_mutex_word(m), clk, abs);
    return r;
}

PL_EXPORT int pthread_mutex_timedlock(pthread_mutex_t *m, const struct timespec *abs)
{
    if (!pl_mutex_ours(m))
        return pl_real()->mutex_timedlock(m, abs);
    int r = timed_lock(pl_mutex_word(m), CLOCK_REALTIME, abs);
    return r;
}

/* ---- spinlocks -------------------------------------------------------------------------- */

/* Addresses of process-shared spinlocks: inserted by init, removed by destroy, looked up only
 * while the table is not empty (one relaxed load otherwise).  Open addressing would need
 * tombstones; a linear table of 256 is enough for the programs that use such locks at all.
 * Full: the lock is not remembered and runs on pvpatch's lock, which is then only correct
 * within this process (docs/run.md, limits). */
#define PSHARED_MAX 256
static uintptr_t pshared_spin[PSHARED_MAX];
static int pshared_n; /* high-water mark of used slots */

static int spin_pshared(const pthread_spinlock_t *s)
{
    int n = __atomic_load_n(&pshared_n, __ATOMIC_ACQUIRE);
    for (int i = 0; i < n; i++)
        if (__atomic_load_n(&pshared_spin[i], __ATOMIC_RELAXED) == (uintptr_t)s)
            return 1;
    return 0;
}

static void spin_forget(const pthread_spinlock_t *s)
{
    int n = __atomic_load_n(&pshared_n, __ATOMIC_ACQUIRE);
    for (int i = 0; i < n; i++) {
        uintptr_t v = (uintptr_t)s;
        __atomic_compare_exchange_n(&pshared_spin[i], &v, 0, 0, __ATOMIC_RELEASE,
                                    __ATOMIC_RELAXED);
    }
}

static void spin_remember(const pthread_spinlock_t *s)
{
    if (spin_pshared(s))
        return;
    for (int i = 0; i < PSHARED_MAX; i++) {
        uintptr_t z = 0;
        if (__atomic_compare_exchange_n(&pshared_spin[i], &z, (uintptr_t)s, 0, __ATOMIC_RELEASE,
                                        __ATOMIC_RELAXED)) {
            int n = __atomic_load_n(&pshared_n, __ATOMIC_RELAXED);
            while (n < i + 1 && !__atomic_compare_exchange_n(&pshared_n, &n, i + 1, 0,
                                                             __ATOMIC_RELEASE, __ATOMIC_RELAXED))
                ;
            return;
        }
    }
}

static inline int spin_ours(const pthread_spinlock_t *s)
{
    return __builtin_expect(__atomic_load_n(&pshared_n, __ATOMIC_RELAXED) == 0, 1) ||
           !spin_pshared(s);
}

PL_EXPORT int pthread_spin_init(pthread_spinlock_t *s, int pshared)
{
    if (pshared == PTHREAD_PROCESS_SHARED) {
        spin_remember(s);
        return pl_real()->spin_init(s, pshared);
    }
    spin_forget(s);
    /* Not glibc's init: on x86-64 its free value is 1 (lock is `lock decl`), ours is 0. */
    __atomic_store_n(&((pvp_lock_t *)(void *)s)->val, 0, __ATOMIC_RELEASE);
    return 0;
}

PL_EXPORT int pthread_spin_destroy(pthread_spinlock_t *s)
{
    spin_forget(s);
    return pl_real()->spin_destroy(s);
}

PL_EXPORT int pthread_spin_lock(pthread_spinlock_t *s)
{
    if (spin_ours(s)) {
        PL_LOCK((pvp_lock_t *)(void *)s);
        return 0;
    }
    return pl_real()->spin_lock(s);
}

PL_EXPORT int pthread_spin_trylock(pthread_spinlock_t *s)
{
    if (spin_ours(s)) {
        if (!pvp_trylock((pvp_lock_t *)(void *)s))
            return EBUSY;
        return 0;
    }
    return pl_real()->spin_trylock(s);
}

PL_EXPORT int pthread_spin_unlock(pthread_spinlock_t *s)
{
    if (spin_ours(s)) {
        PL_UNLOCK((pvp_lock_t *)(void *)s);
        return 0;
    }
    return pl_real()->spin_unlock(s);
}
