/*
 * locks.h - pvpatch's queued spinlocks (native, pv, hybrid) and the mode word that lets a
 * process switch between them while they are in use.  Plain C: no Python here, so that the
 * stress harness (tests/c/lockstress.c) builds these files alone.
 *
 * One 32-bit lock word, the qspinlock layout for fewer than 16K threads:
 *
 *    bits  0- 7  locked byte: 0 free, PVP_Q_LOCKED held, PVP_Q_SLOW held and the queue head
 *                sleeps on the lock word (the unlocker must wake it)
 *    bits  8-15  pending byte (only bit 8 used): one waiter owns it and takes the lock next
 *    bits 16-17  tail: index of the MCS node (nesting level) of the last queued thread
 *    bits 18-31  tail: thread id + 1 of the last queued thread (0: queue empty)
 *
 * Every flavour agrees that 0 is free and a non-zero locked byte is held, and every flavour
 * takes the lock only with an atomic read-modify-write that saw the locked byte 0; docs/locks.md
 * has the algorithms, the switching protocol and the safety argument.
 */
#ifndef PVPATCH_LOCKS_H
#define PVPATCH_LOCKS_H

#include <stdint.h>

typedef union pvp_lock {
    uint32_t val;
    struct {
        uint8_t locked;
        uint8_t pending;
        uint16_t tail;
    };
    struct {
        uint16_t locked_pending;
        uint16_t tail16;
    };
} pvp_lock_t;

#define PVP_LOCK_INIT {.val = 0}

#define PVP_Q_LOCKED 1u
#define PVP_Q_SLOW 3u
#define PVP_Q_LOCKED_MASK 0xffu
#define PVP_Q_PENDING 0x100u
#define PVP_Q_PENDING_MASK 0xff00u
#define PVP_Q_TAIL_OFFSET 16
#define PVP_Q_TAIL_IDX_BITS 2
#define PVP_Q_TAIL_MASK 0xffff0000u

#define PVP_MAX_NODES 4       /* per thread: a signal handler may lock while its thread waits */
#define PVP_MAX_THREADS 4096  /* thread ids; 14 tail bits would allow 16383 */

/* The lock functions.  native and hybrid share the lock function (waiters spin, never sleep,
 * and the MCS hand-off wakes a successor that sleeps); pv and hybrid share the unlock function
 * (it wakes the head if the locked byte says it sleeps).  Only the inline native unlock, one
 * byte store, can lose a wake-up; see docs/locks.md. */
void pvp_native_lock(pvp_lock_t *l);
void pvp_pv_lock(pvp_lock_t *l);
void pvp_kick_unlock(pvp_lock_t *l);
/* The native unlock as a function: the same one byte store as the inline template.  Safe only
 * where no pv waiter can exist (mode never PV); pvpatch's sites never call it, see lock_sites.c. */
void pvp_native_unlock(pvp_lock_t *l);
int pvp_trylock(pvp_lock_t *l); /* 1 taken, 0 not; never waits */

/* ---- the mode word and the grace period (docs/locks.md, "Switching") ------------------------ */

enum pvp_lock_mode { PVP_MODE_NATIVE = 0, PVP_MODE_HYBRID = 1, PVP_MODE_PV = 2 };

/* Sequentially consistent store: the Dekker partner of a queue head's "pv_active += 1; read
 * mode" before it may sleep on the lock word (see pvp_lock_grace). */
void pvp_lock_set_mode(uint32_t mode);
uint32_t pvp_lock_mode(void);
/* Threads registered as possible lock-word sleepers: queue heads that read (or are about to
 * read) mode == PV and may sleep until an unlock kicks them. */
long pvp_lock_pv_inflight(void);
/* Wait until pvp_lock_pv_inflight() == 0, at most timeout_ns.  Returns 1 when the grace period
 * completed, 0 on timeout, -1 with errno EBUSY when the mode is still PV (the period can never
 * end then).  Never blocks beyond the timeout; polls with short sleeps. */
int pvp_lock_grace(uint64_t timeout_ns);

/* pv waiters spin this many pause iterations before sleeping (default 512). */
void pvp_lock_set_pv_spin(uint32_t n);
uint32_t pvp_lock_pv_spin(void);

/* A sleeping waiter re-checks its condition every rescue_ns (default 2 s): finding it true
 * means that its wake-up was lost (or later than rescue_ns), which is counted in
 * PVP_STAT_LATE_WAKEUPS.  A correct protocol never increments it; it turns a lost wake-up
 * into a counted failure instead of a hang. */
void pvp_lock_set_rescue_ns(uint64_t ns);
uint64_t pvp_lock_rescue_ns(void);

/* ---- statistics, summed over every thread that ever locked ------------------------------------- */

enum pvp_lock_stat {
    PVP_STAT_SLOWPATH,      /* lock calls that missed the fast path */
    PVP_STAT_PENDING,       /* taken through the pending bit (native, hybrid) */
    PVP_STAT_STEAL,         /* taken ahead of the queue (pv) */
    PVP_STAT_QUEUED,        /* joined the MCS queue */
    PVP_STAT_NODE_SLEEP,    /* queued waiters that slept on their node */
    PVP_STAT_HEAD_SLEEP,    /* queue heads that slept on the lock word */
    PVP_STAT_KICK_NODE,     /* hand-offs that woke a sleeping successor */
    PVP_STAT_KICK_UNLOCK,   /* unlocks that woke a sleeping head */
    PVP_STAT_DEMOTED,       /* pv slow paths that saw mode != PV and went on as hybrid */
    PVP_STAT_FALLBACK,      /* no MCS node (nesting > PVP_MAX_NODES or no thread id) */
    PVP_STAT_LATE_WAKEUPS,  /* rescued sleepers whose wake-up never came: must stay 0 */
    PVP_STAT_FUTEX_ERRORS,  /* futex calls that failed unexpectedly (the waiter then spins) */
    PVP_STAT_GRACE_KICKS,   /* sleepers woken by a grace period so that they see the mode */
    PVP_STAT_N
};
extern const char *const pvp_lock_stat_names[PVP_STAT_N];
void pvp_lock_stats(uint64_t out[PVP_STAT_N]);
int pvp_lock_futex_errno(void); /* errno of the last unexpected futex failure, 0 if none */

/* What each thread with a thread id is doing, for state dumps. */
enum pvp_thread_where {
    PVP_AT_IDLE,
    PVP_AT_PENDING, /* owns the pending bit, waits for the owner */
    PVP_AT_NODE_SPIN,
    PVP_AT_NODE_SLEEP,
    PVP_AT_HEAD_SPIN,
    PVP_AT_HEAD_SLEEP,
    PVP_AT_LINK_WAIT, /* holds the lock, waits for its successor to link in */
    PVP_AT_FALLBACK,
};
extern const char *const pvp_thread_where_names[];
struct pvp_thread_state {
    uint32_t tid;
    uint32_t depth;     /* MCS nodes in use */
    uint32_t pv_active; /* registered as a possible lock-word sleeper */
    uint32_t where;     /* enum pvp_thread_where of the innermost slow path */
    uintptr_t lock;     /* the lock it waits for, 0 if none */
    uint32_t node_wait; /* the innermost node's futex word */
};
/* Fill out[] with the threads that are in a slow path (or all with ids when all != 0); returns
 * how many were written (at most max). */
int pvp_lock_thread_states(struct pvp_thread_state *out, int max, int all);
int pvp_lock_threads_high(void); /* 1 + the highest thread id handed out */

#endif
