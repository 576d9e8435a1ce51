/*
 * preload.h - what the files of libpvpatch-preload.so share (nothing here is public).
 *
 * The library interposes glibc's pthread mutexes, spinlocks and condition variables in an
 * unmodified program (LD_PRELOAD) and runs the default, normal and adaptive ones on pvpatch's
 * switchable queued spinlock (docs/locks.md), through the patchable sites of its own `lock`
 * group (sites.c), a module built against the public pvpatch.h like any third-party one.
 * Everything else passes through to glibc.  docs/run.md has the rules and the limits.
 */
#ifndef PVPATCH_PRELOAD_H
#define PVPATCH_PRELOAD_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "locks.h"
#include "pvpatch.h"

#define PL_EXPORT __attribute__((visibility("default")))

/* ---- sites.c: the module and its `lock` group -------------------------------------------- */

enum { PVPATCH_GROUP_ID(lock) = 0 };
enum { PVPATCH_OP_ID(lock, lock), PVPATCH_OP_ID(lock, unlock), PVPATCH_NOPS(lock) };
PVPATCH_DECLARE_SLOTS(lock);

/* The two sites every interposed lock goes through: 6 bytes, the native unlock's 3-byte
 * template fits.  Inline in each caller (a site costs what its instruction costs). */
#define PL_LOCK(w) ((void)PVPATCH_CALL1(lock, lock, 6, 0, (w)))
#define PL_UNLOCK(w) ((void)PVPATCH_CALL1(lock, unlock, 6, 0, (w)))

extern const struct pvpatch_module pvpatch_module; /* hidden, from PVPATCH_MODULE */

/* ---- real.c: glibc's functions, found with dlsym(RTLD_NEXT) on first use ----------------- */

struct pl_real {
    int (*mutex_init)(pthread_mutex_t *, const pthread_mutexattr_t *);
    int (*mutex_destroy)(pthread_mutex_t *);
    int (*mutex_lock)(pthread_mutex_t *);
    int (*mutex_trylock)(pthread_mutex_t *);
    int (*mutex_timedlock)(pthread_mutex_t *, const struct timespec *);
    int (*mutex_clocklock)(pthread_mutex_t *, clockid_t, const struct timespec *);
    int (*mutex_unlock)(pthread_mutex_t *);
    int (*spin_init)(pthread_spinlock_t *, int);
    int (*spin_destroy)(pthread_spinlock_t *);
    int (*spin_lock)(pthread_spinlock_t *);
    int (*spin_trylock)(pthread_spinlock_t *);
    int (*spin_unlock)(pthread_spinlock_t *);
    int (*cond_init)(pthread_cond_t *, const pthread_condattr_t *);
    int (*cond_destroy)(pthread_cond_t *);
    int (*cond_wait)(pthread_cond_t *, pthread_mutex_t *);
    int (*cond_timedwait)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *);
    int (*cond_clockwait)(pthread_cond_t *, pthread_mutex_t *, clockid_t,
                          const struct timespec *);
    int (*cond_signal)(pthread_cond_t *);
    int (*cond_broadcast)(pthread_cond_t *);
};
/* The table, every entry resolved (aborts with a message naming the symbol if glibc lacks
 * one: the program could not run correctly without it). */
const struct pl_real *pl_real(void);

/* ---- mutex.c ----------------------------------------------------------------------------- */

/* 1 when the mutex runs on pvpatch's lock: kind normal/default or adaptive, private, not
 * robust, no priority protocol (glibc's __kind, elision hint bits ignored). */
int pl_mutex_ours(const pthread_mutex_t *m);
static inline pvp_lock_t *pl_mutex_word(pthread_mutex_t *m)
{
    return (pvp_lock_t *)(void *)&m->__data.__lock;
}
int pl_valid_clock(clockid_t c);

/* ---- control.c ---------------------------------------------------------------------------- */

uint64_t pl_now_ns(void);

#endif
