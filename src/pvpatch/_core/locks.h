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

#include <stddef.h>
#include <stdint.h>

#include "rt_error.h" /* struct pvrt_error: one definition for the whole runtime */

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
    PVP_STAT_ACQUIRED,      /* lock calls that returned holding the lock (fast path included) */
    PVP_STAT_HANDOVER,      /* MCS grants: a queued waiter was made the head by its predecessor */
    PVP_STAT_HANDOVER_NS,   /* sum over those grants of grant -> the waiter saw it (ns) */
    PVP_STAT_STEAL_FAST,    /* pv fast path: taken past a non-empty queue (contended) */
    PVP_STAT_N
};
extern const char *const pvp_lock_stat_names[PVP_STAT_N];
void pvp_lock_stats(uint64_t out[PVP_STAT_N]);
int pvp_lock_futex_errno(void);

/* The contract's view of the statistics (cumulative, process-wide).  Cheap to keep: the fast
 * path adds one increment of a per-thread counter; everything else is counted on slow paths.
 *   acquisitions  lock calls that returned holding the lock (trylock successes included)
 *   contended     of those, the ones that missed the fast path or (pv) stole past a queue
 *   sleeps        FUTEX_WAITs entered by waiters (on their MCS node or, as head, on the word)
 *   wakes         FUTEX_WAKEs made for a sleeper (hand-offs, kicking unlocks, grace periods)
 *   handovers     MCS grants, predecessor -> queued successor
 *   handover_ns   sum over them of the time from the grant to the successor seeing it: a
 *                 spinning successor sees it in a cache-line transfer; a preempted or sleeping
 *                 one only when it runs again, so the mean tells whether waiters run. */
struct pvlock_stats {
    uint64_t acquisitions, contended, sleeps, wakes, handovers, handover_ns;
};
void pvlock_stats_read(struct pvlock_stats *out);

/* Local judge, a policy input for the agent: from the statistics since its previous call,
 * -1 no opinion (too few acquisitions to say), 0 prefer the safe variant (pv), 1 the fast one
 * (native) is fine.  why (if n > 0) receives the figures and the rule that decided.  arg: a
 * struct pvlock_judge to keep the previous snapshot in, or NULL for a process-wide one.  The
 * rule and its evidence: docs/locks.md, "The local judge".  No hysteresis here (the caller's). */
struct pvlock_judge {
    struct pvlock_stats prev;
    int primed;
};
int pvlock_local_judge(void *arg, char *why, size_t n);
/* The rule itself, on a delta of statistics and the mode that was in force; pure. */
int pvlock_judge_delta(const struct pvlock_stats *d, uint32_t mode, char *why, size_t n);
#define PVLOCK_JUDGE_MIN_ACQ 1000     /* fewer acquisitions in an interval: no opinion */
#define PVLOCK_JUDGE_NATIVE_MAX_PERMILLE 20 /* contended acquisitions, per mille, native fine */
#define PVLOCK_JUDGE_HANDOVER_MAX_NS 20000  /* mean hand-over above this: waiters do not run */

/* ---- the transition: native <-> pv while the locks are in use (docs/locks.md, "Switching") -- */

/* Apply one plain batch moving every site of the lock group to `variant` ("native", "pv",
 * "hybrid"); return 0, or -1 with e filled.  The batch must end with its final sync. */
typedef int (*pvlock_apply_fn)(const char *variant, void *arg, struct pvrt_error *e);
/* Read every unlock site's bytes: 1 when all of them kick (pv's or hybrid's rendering), 0 when
 * one does not (e->msg names it), -1 when they could not be read (e). */
typedef int (*pvlock_check_fn)(void *arg, struct pvrt_error *e);

#define PVLOCK_NOT_KICKING (-2) /* mode would become PV over a non-kicking unlock site */
#define PVLOCK_INCOMPLETE (-3)  /* grace period timed out: the group stays at hybrid */

/* The protocol (steps in locks.c).  current: the variant the sites hold (read from the bytes
 * by the caller); current == target still finishes a switch an error interrupted (mode word
 * behind the code).  Returns 0, -1 (apply or check failed, or bad input: e), PVLOCK_NOT_KICKING
 * (nothing stored in the mode word; e->msg), PVLOCK_INCOMPLETE (e->msg).  The unlock-sites
 * check is the runtime's pvrt_group_site_bytes_match("lock", "unlock", ...) when it is linked
 * in; without it pvlock_transition refuses to store mode PV (use pvlock_transition_checked). */
int pvlock_transition(const char *current, const char *target, pvlock_apply_fn apply, void *arg,
                      double grace_timeout_s, struct pvrt_error *e);
int pvlock_transition_checked(const char *current, const char *target, pvlock_apply_fn apply,
                              void *arg, pvlock_check_fn check, void *check_arg,
                              double grace_timeout_s, struct pvrt_error *e);
/* Transitions that completed / stopped at hybrid, since the process started. */
void pvlock_switch_counts(uint64_t *completed, uint64_t *incomplete); /* errno of the last unexpected futex failure, 0 if none */

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
