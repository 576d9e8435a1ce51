/*
 * locks.c - queued spinlocks of the qspinlock family on one 32-bit word (see locks.h), in two
 * flavours that may run on the same lock at the same time:
 *
 *   native  waiters spin and never sleep: a pending bit for the first waiter, then an MCS queue
 *           of per-thread nodes; unlock is one byte store (inline at pvpatch's unlock sites).
 *   pv      a free lock may be stolen ahead of the queue (unless the head is spinning for it);
 *           queued waiters spin a bounded time, then sleep on a futex in their node; the queue
 *           head spins, then marks the locked byte SLOW and sleeps on the lock word.  The
 *           unlock (pvp_kick_unlock) wakes the head when the byte is SLOW.
 *   hybrid  = native lock + pv unlock: waits like native, wakes like pv.
 *
 * Two rules make mixed flavours safe for mutual exclusion (docs/locks.md, "Mutual exclusion"):
 *   R1. The locked byte goes from 0 to non-zero only by an atomic read-modify-write that saw it
 *       0 (every path, even native's head and pending hand-over, which Linux does with plain
 *       stores: here a pv stealer may be racing them).
 *   R2. Non-zero goes to 0 only by the owner's unlock; LOCKED -> SLOW only by the queue head,
 *       with a compare-and-swap, while someone else holds the lock.
 * and one rule makes sleeping on an MCS node safe in every mode:
 *   R3. Every MCS hand-off, native's included, is an exchange that wakes a successor found
 *       asleep.  (An xchg where Linux stores; see docs/locks.md for why and what it costs.)
 * What is left, an inline native unlock clearing SLOW without a wake-up, is the switching
 * protocol's job: a head registers in pv_active before it may sleep on the lock word and reads
 * the mode after (Dekker), and pvp_lock_grace() waits until no head is registered.
 *
 * Mixed-size atomics (byte, halfword and word RMWs on one lock word) are what x86 provides and
 * what Linux's qspinlock relies on; the compiler emits one locked instruction for each.
 */
#define _GNU_SOURCE
#include "locks.h"

#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

_Static_assert(PVP_MAX_THREADS + 1 < (1 << (16 - PVP_Q_TAIL_IDX_BITS)), "tail cannot hold tid");
_Static_assert(PVP_MAX_NODES <= (1 << PVP_Q_TAIL_IDX_BITS), "tail cannot hold node index");
_Static_assert(sizeof(pvp_lock_t) == 4, "the lock is one 32-bit word");

/* Spin bounds, in pause iterations (a pause is ~10-140 cycles depending on the CPU; 27 ns on
 * the 2-CPU EPYC guest the figures in docs/locks.md come from). */
#define PENDING_LOOPS (1 << 9) /* native: wait for a pending hand-over in progress */
#define PV_STEAL_TRIES 16      /* pv: attempts to take a free lock before queueing */
#define PV_LINK_SPIN (1 << 10) /* pv: owner waits for its successor to link, then yields */
#define FALLBACK_SPIN (1 << 10) /* no node: spin this long between yields */
/* pv: a queued waiter, and the queue head, spin this long before sleeping: about twice a futex
 * wake-up's latency, so a short hold never sleeps and a preempted owner always does.  Tunable
 * (pvp_lock_set_pv_spin) so that tests can make pv sleep at nearly every wait. */
static uint32_t pv_spin = 512;

enum { NODE_WAITING = 0, NODE_GRANTED = 1, NODE_SLEEPING = 2 };

/* ---- per-thread state ------------------------------------------------------------------- */

struct pvp_node {
    struct pvp_node *next; /* successor in the queue, set by the successor */
    uint32_t wait;         /* futex word: NODE_WAITING -> (NODE_SLEEPING ->) NODE_GRANTED */
    uint64_t granted_ns;   /* when the predecessor granted it (statistics only) */
} __attribute__((aligned(64)));

/* Everything here is written only by its own thread (nodes: also by the neighbours in the
 * queue, as MCS does) and read by anyone: the grace period reads pv_active, dumps read the
 * rest.  Slots are static and never freed, so a late reader or waker of a recycled slot
 * touches valid memory; it can cause a spurious wake-up, which every waiter tolerates. */
struct pvp_thread {
    struct pvp_node nodes[PVP_MAX_NODES];
    uint32_t depth;     /* nodes in use; a signal handler nests above its thread */
    uint32_t pv_active; /* registered as a possible lock-word sleeper (grace counter) */
    uint32_t where;     /* enum pvp_thread_where, innermost slow path */
    uint32_t pad_;
    pvp_lock_t *waiting_on;
    uint64_t stat[PVP_STAT_N];
} __attribute__((aligned(64)));

static struct pvp_thread threads[PVP_MAX_THREADS];

static uint32_t lock_mode = PVP_MODE_NATIVE;
static uint64_t rescue_ns = 2000000000ull;
static uint64_t global_stat[PVP_STAT_N]; /* stats of threads without an id */
static int futex_errno;

const char *const pvp_lock_stat_names[PVP_STAT_N] = {
    [PVP_STAT_SLOWPATH] = "slowpath",       [PVP_STAT_PENDING] = "pending",
    [PVP_STAT_STEAL] = "steal",             [PVP_STAT_QUEUED] = "queued",
    [PVP_STAT_NODE_SLEEP] = "node_sleep",   [PVP_STAT_HEAD_SLEEP] = "head_sleep",
    [PVP_STAT_KICK_NODE] = "kick_node",     [PVP_STAT_KICK_UNLOCK] = "kick_unlock",
    [PVP_STAT_DEMOTED] = "demoted",         [PVP_STAT_FALLBACK] = "fallback",
    [PVP_STAT_LATE_WAKEUPS] = "late_wakeups", [PVP_STAT_FUTEX_ERRORS] = "futex_errors",
    [PVP_STAT_GRACE_KICKS] = "grace_kicks", [PVP_STAT_ACQUIRED] = "acquired",
    [PVP_STAT_HANDOVER] = "handover",       [PVP_STAT_HANDOVER_NS] = "handover_ns",
    [PVP_STAT_STEAL_FAST] = "steal_fast",
};

const char *const pvp_thread_where_names[] = {
    [PVP_AT_IDLE] = "idle",           [PVP_AT_PENDING] = "pending",
    [PVP_AT_NODE_SPIN] = "node-spin", [PVP_AT_NODE_SLEEP] = "node-sleep",
    [PVP_AT_HEAD_SPIN] = "head-spin", [PVP_AT_HEAD_SLEEP] = "head-sleep",
    [PVP_AT_LINK_WAIT] = "link-wait", [PVP_AT_FALLBACK] = "fallback",
};

#define LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

static inline void cpu_relax(void) { __builtin_ia32_pause(); }

static inline void stat_inc(struct pvp_thread *me, int s)
{
    if (me != NULL) /* owner-only writer: a plain store is enough, readers load relaxed */
        STORE(&me->stat[s], LOAD(&me->stat[s]) + 1);
    else
        __atomic_fetch_add(&global_stat[s], 1, __ATOMIC_RELAXED);
}

static inline void set_where(struct pvp_thread *me, uint32_t w) { STORE(&me->where, w); }

static inline void stat_add(struct pvp_thread *me, int s, uint64_t v)
{
    if (me != NULL)
        STORE(&me->stat[s], LOAD(&me->stat[s]) + v);
    else
        __atomic_fetch_add(&global_stat[s], v, __ATOMIC_RELAXED);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- thread ids ------------------------------------------------------------------------- */

/* Allocated lock-free from a bitmap (so that a signal handler can get one), released by a
 * pthread key destructor when the thread exits.  A thread never exits inside a slow path, and
 * once out of it no other thread writes its nodes (the MCS successor writes prev->next before
 * the predecessor may leave), so the slot is quiescent when its id is recycled. */
static uint64_t tid_bitmap[PVP_MAX_THREADS / 64];
static uint32_t tid_high;
static pthread_key_t tid_key;
static int tid_key_ok;
/* id + 1; 0: none yet.  initial-exec: a dlopen'ed object's general-dynamic TLS is reached
 * through __tls_get_addr, which allocates the thread's block with malloc on first use; a first
 * use inside a signal handler that interrupted malloc (a lock site run from a handler) would
 * deadlock on the arena lock.  initial-exec TLS sits in the static TLS block, allocated with
 * the thread: one %fs-relative access, no call. */
static __thread uint32_t my_tid1 __attribute__((tls_model("initial-exec")));

static void tid_release(void *v)
{
    uint32_t id = (uint32_t)(uintptr_t)v - 1;
    my_tid1 = 0;
    STORE(&threads[id].where, PVP_AT_IDLE);
    __atomic_fetch_and(&tid_bitmap[id / 64], ~(1ull << (id % 64)), __ATOMIC_RELEASE);
}

static void tid_atfork_child(void)
{
    /* The child has one thread: every other id, and whatever those threads were doing in slow
     * paths (pv_active would stall every grace period), is gone. */
    for (uint32_t i = 0; i < PVP_MAX_THREADS / 64; i++)
        tid_bitmap[i] = 0;
    for (uint32_t i = 0; i < tid_high; i++)
        if (i + 1 != my_tid1) {
            /* A thread that was queued (or owned pending) on a lock left its node in that
             * lock's tail: in the child nobody would ever take the lock from that phantom
             * queue, and every later waiter would queue behind it for ever.  Every queued
             * thread is a phantom here (the forking thread is in fork, not in a slow path), so
             * the queue and the pending bit are emptied; the locked byte stays as it is (a lock
             * held by a thread the child does not have stays held, as with any lock). */
            pvp_lock_t *l = threads[i].waiting_on;
            if (l != NULL)
                __atomic_fetch_and(&l->val, PVP_Q_LOCKED_MASK, __ATOMIC_RELAXED);
            threads[i].depth = threads[i].pv_active = 0;
            threads[i].where = PVP_AT_IDLE;
            threads[i].waiting_on = NULL;
        }
    if (my_tid1 != 0)
        tid_bitmap[(my_tid1 - 1) / 64] |= 1ull << ((my_tid1 - 1) % 64);
}

__attribute__((constructor)) static void tid_init(void)
{
    tid_key_ok = pthread_key_create(&tid_key, tid_release) == 0;
    pthread_atfork(NULL, NULL, tid_atfork_child);
}

static __attribute__((noinline)) struct pvp_thread *tid_alloc(void)
{
    for (uint32_t w = 0; w < PVP_MAX_THREADS / 64; w++) {
        uint64_t cur = __atomic_load_n(&tid_bitmap[w], __ATOMIC_RELAXED);
        while (~cur != 0) {
            uint32_t bit = (uint32_t)__builtin_ctzll(~cur);
            if (!__atomic_compare_exchange_n(&tid_bitmap[w], &cur, cur | (1ull << bit), 0,
                                             __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
                continue;
            uint32_t id = w * 64 + bit;
            /* seq_cst, as the load in pvp_lock_pv_inflight(): a grace period that does not
             * see this id yet is ordered before our first registration, which then reads the
             * new mode (docs/locks.md, step 3). */
            uint32_t hi = __atomic_load_n(&tid_high, __ATOMIC_RELAXED);
            while (hi < id + 1 && !__atomic_compare_exchange_n(&tid_high, &hi, id + 1, 0,
                                                               __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
                ;
            /* Without the key the id is never recycled: a leak, bounded by the table. */
            if (tid_key_ok)
                pthread_setspecific(tid_key, (void *)(uintptr_t)(id + 1));
            my_tid1 = id + 1;
            return &threads[id];
        }
    }
    return NULL; /* table full: the caller falls back to unqueued spinning */
}

static inline struct pvp_thread *me_get(void)
{
    uint32_t t = my_tid1;
    return t ? &threads[t - 1] : tid_alloc();
}

/* One acquisition, counted by the fast path of every lock function: an increment of a counter
 * only this thread writes (no shared line, no locked instruction).  A thread's first lock takes
 * its id here rather than on its first slow path. */
static __thread uint8_t tid_table_was_full __attribute__((tls_model("initial-exec")));

static __attribute__((noinline)) struct pvp_thread *tid_alloc_fast(void)
{
    /* With the table full, do not scan it at every lock: the fast path counts in the shared
     * counter from then on, and the slow path (me_get) keeps trying for an id. */
    if (tid_table_was_full)
        return NULL;
    struct pvp_thread *me = tid_alloc();
    tid_table_was_full = me == NULL;
    return me;
}

static inline struct pvp_thread *count_acquired(void)
{
    uint32_t t = my_tid1;
    struct pvp_thread *me = __builtin_expect(t != 0, 1) ? &threads[t - 1] : tid_alloc_fast();
    stat_inc(me, PVP_STAT_ACQUIRED);
    return me; /* NULL with the id table full */
}

static inline uint32_t encode_tail(const struct pvp_thread *me, uint32_t idx)
{
    uint32_t tid = (uint32_t)(me - threads);
    return ((tid + 1) << (PVP_Q_TAIL_OFFSET + PVP_Q_TAIL_IDX_BITS)) | (idx << PVP_Q_TAIL_OFFSET);
}

static inline struct pvp_node *decode_tail(uint32_t tail)
{
    uint32_t tid = (tail >> (PVP_Q_TAIL_OFFSET + PVP_Q_TAIL_IDX_BITS)) - 1;
    uint32_t idx = (tail >> PVP_Q_TAIL_OFFSET) & ((1u << PVP_Q_TAIL_IDX_BITS) - 1);
    return &threads[tid].nodes[idx];
}

/* ---- futex ------------------------------------------------------------------------------ */

/* Sleep while *word == val, at most rescue_ns.  Returns 1 on timeout, 0 otherwise (woken,
 * value changed, signal); the caller re-checks its condition in every case.  The caller's errno
 * is left as it was (here and in futex_wake): a lock is called where the program may be about
 * to read errno (pthread_mutex_lock under the preload library must not change it, as glibc's
 * does not). */
static int futex_sleep(uint32_t *word, uint32_t val, struct pvp_thread *me)
{
    int saved = errno, r = 0;
    uint64_t ns = __atomic_load_n(&rescue_ns, __ATOMIC_RELAXED);
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    if (syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, val, &ts, NULL, 0) == 0)
        r = 0;
    else if (errno == ETIMEDOUT)
        r = 1;
    else if (errno != EAGAIN && errno != EINTR) {
        /* Cannot happen with a valid word; the waiter stays correct by spinning instead. */
        __atomic_store_n(&futex_errno, errno, __ATOMIC_RELAXED);
        stat_inc(me, PVP_STAT_FUTEX_ERRORS);
        sched_yield();
    }
    errno = saved;
    return r;
}

static void futex_wake(uint32_t *word, struct pvp_thread *me)
{
    int saved = errno;
    if (syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0) < 0) {
        __atomic_store_n(&futex_errno, errno, __ATOMIC_RELAXED);
        stat_inc(me, PVP_STAT_FUTEX_ERRORS);
    }
    errno = saved;
}

/* ---- lock word operations --------------------------------------------------------------- */

static inline uint32_t lock_load(pvp_lock_t *l) { return __atomic_load_n(&l->val, __ATOMIC_ACQUIRE); }

/* R1: the only ways to take the lock. */
static inline int cas_word(pvp_lock_t *l, uint32_t *expect, uint32_t val)
{
    return __atomic_compare_exchange_n(&l->val, expect, val, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}
static inline int cas_locked_pending(pvp_lock_t *l, uint16_t expect, uint16_t val)
{
    return __atomic_compare_exchange_n(&l->locked_pending, &expect, val, 0, __ATOMIC_ACQUIRE,
                                       __ATOMIC_RELAXED);
}
static inline int steal(pvp_lock_t *l)
{
    uint8_t zero = 0;
    return __atomic_compare_exchange_n(&l->locked, &zero, PVP_Q_LOCKED, 0, __ATOMIC_ACQUIRE,
                                       __ATOMIC_RELAXED);
}

/* The pending bit has one owner: the thread whose set found it clear. */
static inline uint32_t fetch_set_pending(pvp_lock_t *l)
{
    return __atomic_fetch_or(&l->val, PVP_Q_PENDING, __ATOMIC_ACQUIRE);
}
static inline int try_own_pending(pvp_lock_t *l)
{
    return !(__atomic_fetch_or(&l->val, PVP_Q_PENDING, __ATOMIC_ACQUIRE) & PVP_Q_PENDING);
}
/* Owner only; a plain byte store, as nobody else writes a pending byte that is owned. */
static inline void clear_pending(pvp_lock_t *l) { __atomic_store_n(&l->pending, 0, __ATOMIC_RELAXED); }

/* Publish our node as the tail; returns the previous tail (in word position). */
static inline uint32_t xchg_tail(pvp_lock_t *l, uint32_t tail)
{
    /* Full barrier: the node's initialisation is visible before anyone can find it. */
    return (uint32_t)__atomic_exchange_n(&l->tail16, (uint16_t)(tail >> PVP_Q_TAIL_OFFSET),
                                         __ATOMIC_ACQ_REL)
           << PVP_Q_TAIL_OFFSET;
}

/* The pending owner takes the lock: (pending, 0) -> (0, LOCKED).  A stealer may take the
 * locked byte between our read and our CAS, so the CAS, not the read, decides (R1). */
static inline void pending_to_locked(pvp_lock_t *l)
{
    for (;;) {
        while (__atomic_load_n(&l->locked, __ATOMIC_ACQUIRE) != 0)
            cpu_relax();
        if (cas_locked_pending(l, PVP_Q_PENDING, PVP_Q_LOCKED))
            return;
    }
}

/* R3: the MCS hand-off, the same in every flavour. */
static inline void handoff(struct pvp_node *next, struct pvp_thread *me)
{
    /* Ordered before the grant by the release exchange; the successor reads it after seeing
     * GRANTED (acquire). */
    STORE(&next->granted_ns, now_ns());
    uint32_t old = __atomic_exchange_n(&next->wait, NODE_GRANTED, __ATOMIC_RELEASE);
    if (old == NODE_SLEEPING) {
        futex_wake(&next->wait, me);
        stat_inc(me, PVP_STAT_KICK_NODE);
    }
}

/* ---- unlock ----------------------------------------------------------------------------- */

void pvp_native_unlock(pvp_lock_t *l) { __atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE); }

void pvp_kick_unlock(pvp_lock_t *l)
{
    /* xchg, not a store: it must see SLOW if the head's CAS LOCKED -> SLOW came first (and if
     * ours comes first, that CAS fails and the head takes the lock instead of sleeping). */
    uint8_t old = __atomic_exchange_n(&l->locked, 0, __ATOMIC_RELEASE);
    if (old == PVP_Q_SLOW) {
        struct pvp_thread *me = my_tid1 ? &threads[my_tid1 - 1] : NULL;
        futex_wake(&l->val, me);
        stat_inc(me, PVP_STAT_KICK_UNLOCK);
    }
}

int pvp_trylock(pvp_lock_t *l)
{
    uint32_t val = lock_load(l);
    if (val == 0 && cas_word(l, &val, PVP_Q_LOCKED)) {
        count_acquired();
        return 1;
    }
    return 0;
}

/* ---- the slow path ---------------------------------------------------------------------- */

static inline int mode_is_pv(void)
{
    return __atomic_load_n(&lock_mode, __ATOMIC_RELAXED) == PVP_MODE_PV;
}

/* A waiter is "sleepy" (waits like pv: spins a bounded time, then sleeps) while the mode is PV.
 * Queued waiters may decide this with plain reads of the mode: a node sleeper is woken by its
 * predecessor's hand-off, which kicks in every flavour (R3), so sleeping on a node is safe in
 * any mode.  Only the head's sleep on the lock word depends on who unlocks; that one is guarded
 * by pv_active and the grace period (head_lock, step 3). */
static inline void demote(int *sleepy, struct pvp_thread *me)
{
    *sleepy = 0;
    stat_inc(me, PVP_STAT_DEMOTED);
}

/* A spinner re-reads the mode every UPGRADE_CHECK spins (a load of a line that is written only
 * at switches), so that waiters queued under native become pv waiters soon after a switch to
 * pv, which is when the machine is oversubscribed and spinning hurts. */
#define UPGRADE_CHECK 64

static inline void maybe_upgrade(int *sleepy, uint32_t i)
{
    if (i % UPGRADE_CHECK == 0 && mode_is_pv())
        *sleepy = 1;
}

/* No MCS node: spin on the locked byte, yielding now and then.  Unfair and never sleeps, so it
 * is correct in every mode; it only happens when signal handlers nest locks deeper than
 * PVP_MAX_NODES or more than PVP_MAX_THREADS threads lock at once. */
static void fallback_lock(pvp_lock_t *l, struct pvp_thread *me)
{
    stat_inc(me, PVP_STAT_FALLBACK);
    for (unsigned n = 1;; n++) {
        if (__atomic_load_n(&l->locked, __ATOMIC_RELAXED) == 0 && steal(l))
            return;
        cpu_relax();
        if (n % FALLBACK_SPIN == 0)
            sched_yield();
    }
}

/* Wait for our node's grant (we are queued, not the head).  Spinners spin; sleepy waiters spin
 * pv_spin times, then sleep on the node until the hand-off wakes them. */
static inline void wait_node(struct pvp_node *node, struct pvp_thread *me, int *sleepy)
{
    set_where(me, PVP_AT_NODE_SPIN);
    for (uint32_t i = 1;; i++) {
        if (__atomic_load_n(&node->wait, __ATOMIC_ACQUIRE) == NODE_GRANTED)
            return;
        cpu_relax();
        if (!*sleepy) {
            maybe_upgrade(sleepy, i);
            if (*sleepy)
                i = 0;
            continue;
        }
        if (i < LOAD(&pv_spin))
            continue;
        if (!mode_is_pv()) { /* switched away from pv while we spun */
            demote(sleepy, me);
            continue;
        }
        /* Sleep.  The CAS fails if the grant came first, or if the node is SLEEPING already
         * (we slept, demoted and upgraded again): sleep on. */
        uint32_t w = NODE_WAITING;
        if (!__atomic_compare_exchange_n(&node->wait, &w, NODE_SLEEPING, 0, __ATOMIC_ACQUIRE,
                                         __ATOMIC_ACQUIRE) &&
            w == NODE_GRANTED)
            return;
        stat_inc(me, PVP_STAT_NODE_SLEEP);
        set_where(me, PVP_AT_NODE_SLEEP);
        /* Partner: the exchange in handoff(), which wakes us when it finds NODE_SLEEPING. */
        while (__atomic_load_n(&node->wait, __ATOMIC_ACQUIRE) == NODE_SLEEPING) {
            if (futex_sleep(&node->wait, NODE_SLEEPING, me) &&
                __atomic_load_n(&node->wait, __ATOMIC_ACQUIRE) != NODE_SLEEPING)
                stat_inc(me, PVP_STAT_LATE_WAKEUPS);
            /* Woken spuriously with the mode no longer PV: wait for the grant spinning.  The
             * node may stay SLEEPING; the hand-off then wakes nobody, which is harmless. */
            if (!mode_is_pv()) {
                demote(sleepy, me);
                set_where(me, PVP_AT_NODE_SPIN);
                break;
            }
        }
    }
}

/* Take the lock word for the head: the queue empties in the same CAS when we are its only
 * node (returns 1), else we take just the locked byte (returns 0: hand off afterwards).  R1:
 * a CAS that sees the locked byte 0, never a store (a pv stealer may be racing us). */
static inline int head_take(pvp_lock_t *l, uint32_t val, uint32_t tail, uint16_t pending)
{
    if ((val & PVP_Q_TAIL_MASK) == tail)
        return cas_word(l, &val, PVP_Q_LOCKED) ? 1 : -1; /* clears our pending bit too */
    return cas_locked_pending(l, pending, PVP_Q_LOCKED) ? 0 : -1;
}

/* As the queue head, take the lock.  Returns 1 if the queue became empty, 0 if we must hand
 * off to a successor. */
static inline int head_lock(pvp_lock_t *l, uint32_t tail, struct pvp_thread *me, int *sleepy)
{
    uint32_t val;
    int r;
    set_where(me, PVP_AT_HEAD_SPIN);
    for (;;) {
        if (!*sleepy) {
            /* Spinner: wait until neither an owner nor a pending waiter is there. */
            for (uint32_t i = 1;; i++) {
                val = lock_load(l);
                if (!(val & (PVP_Q_LOCKED_MASK | PVP_Q_PENDING_MASK))) {
                    if ((r = head_take(l, val, tail, 0)) >= 0)
                        return r;
                    continue;
                }
                cpu_relax();
                maybe_upgrade(sleepy, i);
                if (*sleepy)
                    break;
            }
        }
        /* Sleepy head.
         * 1. Spin with the pending bit owned if we can get it: stealers stay off while the
         *    head is awake, so the head is not starved.  At least one look at the word even
         *    with pv_spin 0: step 4 goes round without sleeping when the lock is free, so a
         *    head that never tried to take a free lock here would go round for ever while
         *    its successors sleep on their nodes. */
        int own = try_own_pending(l);
        for (uint32_t i = 0, n = LOAD(&pv_spin);; i++) {
            val = lock_load(l);
            if (!(val & PVP_Q_LOCKED_MASK) && (own || !(val & PVP_Q_PENDING_MASK))) {
                if ((r = head_take(l, val, tail, own ? PVP_Q_PENDING : 0)) >= 0)
                    return r;
                continue;
            }
            if (i >= n)
                break;
            if (!own && !(val & PVP_Q_PENDING_MASK))
                own = try_own_pending(l);
            cpu_relax();
        }
        /* 2. Give the pending bit back: while we sleep, stealers keep the lock busy. */
        if (own)
            clear_pending(l);
        /* 3. Register as a possible lock-word sleeper, then read the mode: Dekker with the
         *    grace period's "mode = HYBRID (seq_cst); read every pv_active (seq_cst)" in
         *    pvp_lock_set_mode() + pvp_lock_pv_inflight().  Either the grace period sees us
         *    and waits until we deregister, or we see the new mode and do not sleep here.  The
         *    locked RMW is the full fence between our increment and our read. */
        __atomic_fetch_add(&me->pv_active, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&lock_mode, __ATOMIC_SEQ_CST) != PVP_MODE_PV) {
            __atomic_fetch_sub(&me->pv_active, 1, __ATOMIC_RELEASE);
            demote(sleepy, me);
            continue;
        }
        /* 4. Mark the lock SLOW, unless it is free (go round) or SLOW already (we marked it
         *    before a spurious wake-up).  Partner: the xchg in pvp_kick_unlock. */
        uint8_t lk = PVP_Q_LOCKED;
        if (__atomic_compare_exchange_n(&l->locked, &lk, PVP_Q_SLOW, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE) ||
            lk == PVP_Q_SLOW) {
            /* 5. Sleep while the word is what we saw; any change of it (tail, pending)
             *    returns at once and we go round again. */
            val = lock_load(l);
            if ((val & PVP_Q_LOCKED_MASK) == PVP_Q_SLOW) {
                stat_inc(me, PVP_STAT_HEAD_SLEEP);
                set_where(me, PVP_AT_HEAD_SLEEP);
                if (futex_sleep(&l->val, val, me) &&
                    (lock_load(l) & PVP_Q_LOCKED_MASK) != PVP_Q_SLOW)
                    stat_inc(me, PVP_STAT_LATE_WAKEUPS);
                set_where(me, PVP_AT_HEAD_SPIN);
            }
        }
        /* 6. Deregister: awake, and going round to spin first.  A SLOW byte we leave behind is
         *    harmless (docs/locks.md, "Why no wake-up is lost"). */
        __atomic_fetch_sub(&me->pv_active, 1, __ATOMIC_RELEASE);
        if (!mode_is_pv()) /* woken by a grace period: spin from now on */
            demote(sleepy, me);
    }
}

/* The slow path of both lock functions.  `pv` (a constant) picks how a newcomer tries before
 * queueing: native takes the pending bit (fair: the queue is never overtaken), pv steals a free
 * lock unless the head is awake and spinning for it.  How a queued thread waits depends only on
 * the mode, through `sleepy`. */
static inline __attribute__((always_inline)) void slowpath(pvp_lock_t *l, uint32_t val,
                                                           const int pv)
{
    struct pvp_thread *me = me_get();
    stat_inc(me, PVP_STAT_SLOWPATH);
    stat_inc(me, PVP_STAT_ACQUIRED); /* every slow path returns holding the lock */
    /* For dumps; restored on the way out, so that a nested slow path (signal handler) leaves
     * its thread's state as it found it. */
    uint32_t where_before = PVP_AT_IDLE;
    pvp_lock_t *waiting_before = NULL;
    if (me != NULL) {
        where_before = LOAD(&me->where);
        waiting_before = LOAD(&me->waiting_on);
        STORE(&me->waiting_on, l);
    }

    if (pv) {
        /* Throughput then does not hinge on waking the queue head. */
        for (int i = 0; i < PV_STEAL_TRIES; i++) {
            val = lock_load(l);
            if (!(val & (PVP_Q_LOCKED_MASK | PVP_Q_PENDING_MASK)) && steal(l)) {
                stat_inc(me, PVP_STAT_STEAL);
                goto out;
            }
            cpu_relax();
        }
    } else {
        /* The pending bit (Linux's qspinlock).  A hand-over in progress (pending, not
         * locked): give it a moment to finish. */
        if (val == PVP_Q_PENDING)
            for (int i = 0; i < PENDING_LOOPS && (val = lock_load(l)) == PVP_Q_PENDING; i++)
                cpu_relax();
        if (!(val & ~PVP_Q_LOCKED_MASK)) {
            val = fetch_set_pending(l);
            if (!(val & ~PVP_Q_LOCKED_MASK)) {
                /* We own pending and nobody is queued: wait for the owner, then take it.  The
                 * wait is one critical section long; the pender never sleeps. */
                if (me != NULL)
                    set_where(me, PVP_AT_PENDING);
                pending_to_locked(l);
                stat_inc(me, PVP_STAT_PENDING);
                goto out;
            }
            /* Contention appeared: undo our pending bit (only if we set it) and queue. */
            if (!(val & PVP_Q_PENDING))
                clear_pending(l);
        }
    }

    /* The MCS queue. */
    if (me == NULL) {
        fallback_lock(l, NULL);
        return;
    }
    uint32_t idx = LOAD(&me->depth);
    if (idx >= PVP_MAX_NODES) {
        set_where(me, PVP_AT_FALLBACK);
        fallback_lock(l, me);
        goto out;
    }
    /* Signal-safe: a handler that interrupts us here uses and releases node idx before we
     * continue (it nests entirely), so reading then writing depth is enough. */
    STORE(&me->depth, idx + 1);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    stat_inc(me, PVP_STAT_QUEUED);

    struct pvp_node *node = &me->nodes[idx];
    uint32_t tail = encode_tail(me, idx);
    STORE(&node->next, NULL);
    STORE(&node->wait, NODE_WAITING);

    int sleepy = mode_is_pv();

    /* A last try before publishing the node (pv: steal; native: only if entirely free). */
    val = lock_load(l);
    if (pv ? !(val & (PVP_Q_LOCKED_MASK | PVP_Q_PENDING_MASK)) && steal(l)
           : val == 0 && cas_word(l, &val, PVP_Q_LOCKED))
        goto release;

    uint32_t old = xchg_tail(l, tail);
    if (old & PVP_Q_TAIL_MASK) {
        struct pvp_node *prev = decode_tail(old);
        __atomic_store_n(&prev->next, node, __ATOMIC_RELEASE);
        wait_node(node, me, &sleepy);
        /* Hand-over latency: the grant's time stamp was written before the grant (handoff),
         * which wait_node has seen with acquire. */
        uint64_t g = LOAD(&node->granted_ns), t = now_ns();
        stat_inc(me, PVP_STAT_HANDOVER);
        stat_add(me, PVP_STAT_HANDOVER_NS, t > g ? t - g : 0);
    }

    if (!head_lock(l, tail, me, &sleepy)) {
        /* We hold the lock and someone queued behind us: wait for the link, hand off. */
        struct pvp_node *next;
        set_where(me, PVP_AT_LINK_WAIT);
        for (unsigned n = 1; (next = __atomic_load_n(&node->next, __ATOMIC_ACQUIRE)) == NULL; n++) {
            cpu_relax();
            if (sleepy && n % PV_LINK_SPIN == 0)
                sched_yield(); /* the successor was preempted between xchg_tail and linking */
        }
        handoff(next, me);
    }

release:
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    STORE(&me->depth, idx);
out:
    if (me != NULL) {
        STORE(&me->waiting_on, waiting_before);
        set_where(me, where_before);
    }
}

/* The fast path of the native lock: nobody waits (pending clear, queue empty), then a CAS of
 * the locked byte 0 -> LOCKED (R1).  Linux's qspinlock CASes the whole word from 0 instead;
 * here that costs ~8 ns of a ~12 ns uncontended lock + unlock: the word-wide locked read
 * overlaps the unlock's byte store, which x86 cannot forward, so the CAS waits for that store
 * to leave the store buffer (measured: byte store then word CAS 12.0 ns, byte store then byte
 * CAS 4.5 ns, word store then word CAS 4.7 ns).  The pending and tail reads touch bytes the
 * unlock does not write.  They are two reads, not one snapshot: a waiter that arrives between
 * them and the CAS is overtaken once, as by a pv steal; the CAS alone decides ownership. */
static inline int fast_take(pvp_lock_t *l)
{
    if (__builtin_expect(LOAD(&l->pending) == 0 && LOAD(&l->tail) == 0, 1)) {
        uint8_t zero = 0;
        return __atomic_compare_exchange_n(&l->locked, &zero, PVP_Q_LOCKED, 0, __ATOMIC_ACQUIRE,
                                           __ATOMIC_RELAXED);
    }
    return 0;
}

/* The slow paths out of line, as Linux's queued_spin_lock_slowpath: inlined, their register
 * pressure gave the fast path a prologue and epilogue of six pushes and pops. */
static __attribute__((noinline)) void native_slowpath(pvp_lock_t *l)
{
    slowpath(l, lock_load(l), 0);
}

static __attribute__((noinline)) void pv_slowpath(pvp_lock_t *l)
{
    slowpath(l, lock_load(l), 1);
}

void pvp_native_lock(pvp_lock_t *l)
{
    if (__builtin_expect(fast_take(l), 1)) {
        count_acquired();
        return;
    }
    native_slowpath(l);
}

/* pv's fast path is the steal (slow path step 2) done first: a free lock is taken unless the
 * queue head owns pending (it is awake and spinning for it), queue or no queue, as Linux's
 * pv_queued_spin_steal_lock.  Once a waiter sleeps on its node the tail stays set, and with
 * fast_take's rule every acquisition would go through the slow path's bookkeeping to steal
 * the same way (measured: 98 % of acquisitions at 8 writers on 2 CPUs).  A steal past a
 * queue counts as contended. */
void pvp_pv_lock(pvp_lock_t *l)
{
    if (__builtin_expect(LOAD(&l->pending) == 0, 1)) {
        uint16_t tail = LOAD(&l->tail);
        uint8_t zero = 0;
        if (__builtin_expect(__atomic_compare_exchange_n(&l->locked, &zero, PVP_Q_LOCKED, 0,
                                                         __ATOMIC_ACQUIRE, __ATOMIC_RELAXED),
                             1)) {
            struct pvp_thread *me = count_acquired();
            if (tail != 0)
                stat_inc(me, PVP_STAT_STEAL_FAST);
            return;
        }
    }
    pv_slowpath(l);
}

/* ---- mode, grace period, introspection -------------------------------------------------- */

void pvp_lock_set_mode(uint32_t mode) { __atomic_store_n(&lock_mode, mode, __ATOMIC_SEQ_CST); }

uint32_t pvp_lock_mode(void) { return __atomic_load_n(&lock_mode, __ATOMIC_SEQ_CST); }

long pvp_lock_pv_inflight(void)
{
    /* Partner: the seq_cst increment of pv_active in slowpath(); together with the seq_cst
     * store in pvp_lock_set_mode() this is the patcher's half of the Dekker pair. */
    long n = 0;
    uint32_t hi = __atomic_load_n(&tid_high, __ATOMIC_SEQ_CST);
    for (uint32_t i = 0; i < hi; i++)
        n += __atomic_load_n(&threads[i].pv_active, __ATOMIC_SEQ_CST) != 0;
    return n;
}

/* Wake every registered head that sleeps on a lock word, so that it sees the new mode and
 * deregisters without waiting for the owner's unlock (which a long critical section could
 * delay indefinitely).  The wake-up may be spurious or late: the thread may have moved on and
 * the lock word even been freed, and FUTEX_WAKE then fails with EFAULT or wakes a waiter that
 * re-checks its condition, which every futex waiter does by contract. */
static void grace_kick(void)
{
    uint32_t hi = __atomic_load_n(&tid_high, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < hi; i++) {
        struct pvp_thread *t = &threads[i];
        if (__atomic_load_n(&t->pv_active, __ATOMIC_ACQUIRE) == 0 ||
            LOAD(&t->where) != PVP_AT_HEAD_SLEEP)
            continue;
        pvp_lock_t *l = LOAD(&t->waiting_on);
        if (l == NULL)
            continue;
        syscall(SYS_futex, &l->val, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
        __atomic_fetch_add(&global_stat[PVP_STAT_GRACE_KICKS], 1, __ATOMIC_RELAXED);
    }
}

int pvp_lock_grace(uint64_t timeout_ns)
{
    if (pvp_lock_mode() == PVP_MODE_PV) {
        errno = EBUSY;
        return -1;
    }
    uint64_t deadline = now_ns() + timeout_ns;
    long pause_ns = 10000;
    for (;;) {
        if (pvp_lock_pv_inflight() == 0)
            return 1;
        if (now_ns() >= deadline)
            return 0;
        grace_kick();
        /* Give the CPU to the threads we woke. */
        struct timespec ts = {0, pause_ns};
        nanosleep(&ts, NULL);
        if (pause_ns < 1000000)
            pause_ns *= 2;
    }
}

void pvp_lock_set_pv_spin(uint32_t n) { STORE(&pv_spin, n); }

uint32_t pvp_lock_pv_spin(void) { return LOAD(&pv_spin); }

void pvp_lock_set_rescue_ns(uint64_t ns) { __atomic_store_n(&rescue_ns, ns, __ATOMIC_RELAXED); }

uint64_t pvp_lock_rescue_ns(void) { return __atomic_load_n(&rescue_ns, __ATOMIC_RELAXED); }

void pvp_lock_stats(uint64_t out[PVP_STAT_N])
{
    for (int s = 0; s < PVP_STAT_N; s++)
        out[s] = __atomic_load_n(&global_stat[s], __ATOMIC_RELAXED);
    uint32_t hi = __atomic_load_n(&tid_high, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < hi; i++)
        for (int s = 0; s < PVP_STAT_N; s++)
            out[s] += LOAD(&threads[i].stat[s]);
}

int pvp_lock_futex_errno(void) { return __atomic_load_n(&futex_errno, __ATOMIC_RELAXED); }

int pvp_lock_threads_high(void) { return (int)__atomic_load_n(&tid_high, __ATOMIC_ACQUIRE); }

int pvp_lock_thread_states(struct pvp_thread_state *out, int max, int all)
{
    int n = 0;
    uint32_t hi = __atomic_load_n(&tid_high, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < hi && n < max; i++) {
        struct pvp_thread *t = &threads[i];
        uint32_t depth = LOAD(&t->depth), where = LOAD(&t->where);
        if (!all && depth == 0 && where == PVP_AT_IDLE)
            continue;
        out[n].tid = i;
        out[n].depth = depth;
        out[n].pv_active = LOAD(&t->pv_active);
        out[n].where = where;
        out[n].lock = (uintptr_t)LOAD(&t->waiting_on);
        out[n].node_wait = depth ? LOAD(&t->nodes[(depth - 1) % PVP_MAX_NODES].wait) : 0;
        n++;
    }
    return n;
}

/* ---- statistics for the policy ---------------------------------------------------------- */

void pvlock_stats_read(struct pvlock_stats *out)
{
    uint64_t st[PVP_STAT_N];
    pvp_lock_stats(st);
    out->acquisitions = st[PVP_STAT_ACQUIRED];
    out->contended = st[PVP_STAT_SLOWPATH] + st[PVP_STAT_STEAL_FAST];
    out->sleeps = st[PVP_STAT_NODE_SLEEP] + st[PVP_STAT_HEAD_SLEEP];
    out->wakes = st[PVP_STAT_KICK_NODE] + st[PVP_STAT_KICK_UNLOCK] + st[PVP_STAT_GRACE_KICKS];
    out->handovers = st[PVP_STAT_HANDOVER];
    out->handover_ns = st[PVP_STAT_HANDOVER_NS];
}

/* The rule (docs/locks.md, "The local judge", has the measurements it comes from):
 *   1. waiters slept (they waited longer than the pv spin bound: an owner or a predecessor was
 *      not running): pv (0);
 *   2. queue hand-overs took more than PVLOCK_JUDGE_HANDOVER_MAX_NS on average (the granted
 *      waiter was not running: the convoy of a fair lock on too few CPUs): pv (0), however few
 *      acquisitions there were (a collapsed native lock makes a few dozen a second);
 *   3. fewer than PVLOCK_JUDGE_MIN_ACQ acquisitions: no opinion (-1);
 *   4. more than PVLOCK_JUDGE_NATIVE_MAX_PERMILLE of acquisitions contended: pv (0): with two
 *      or more threads contending, native's fair hand-over moves the lock and the data between
 *      CPUs at every acquisition, and pv's stealing keeps them on one;
 *   5. otherwise native is fine (1): uncontended, its inline one-byte unlock is the cheaper.
 * The same thresholds in both modes: the counters measure the workload's contention, which
 * either variant shows (pv's steal path is a slow path too). */
int pvlock_judge_delta(const struct pvlock_stats *d, uint32_t mode, char *why, size_t n)
{
    const char *m = mode == PVP_MODE_PV ? "pv" : mode == PVP_MODE_HYBRID ? "hybrid" : "native";
    uint64_t acq = d->acquisitions;
    uint64_t permille = acq ? d->contended * 1000 / acq : 0;
    uint64_t hmean = d->handovers ? d->handover_ns / d->handovers : 0;
    int r;
    const char *rule;
    if (d->sleeps > 0) {
        r = 0;
        rule = "waiters slept";
    } else if (d->handovers > 0 && hmean > PVLOCK_JUDGE_HANDOVER_MAX_NS) {
        r = 0;
        rule = "granted waiters were not running";
    } else if (acq < PVLOCK_JUDGE_MIN_ACQ) {
        r = -1;
        rule = "too few acquisitions to judge";
    } else if (permille > PVLOCK_JUDGE_NATIVE_MAX_PERMILLE) {
        r = 0;
        rule = "contended: stealing beats fair hand-over";
    } else {
        r = 1;
        rule = "uncontended";
    }
    if (why != NULL && n > 0)
        snprintf(why, n,
                 "%s (mode %s: %llu acquisitions, %llu.%llu%% contended, %llu sleeps, "
                 "%llu hand-overs, mean %llu ns)",
                 rule, m, (unsigned long long)acq, (unsigned long long)(permille / 10),
                 (unsigned long long)(permille % 10), (unsigned long long)d->sleeps,
                 (unsigned long long)d->handovers, (unsigned long long)hmean);
    return r;
}

static struct pvlock_judge judge_default;

int pvlock_local_judge(void *arg, char *why, size_t n)
{
    struct pvlock_judge *j = arg != NULL ? arg : &judge_default;
    struct pvlock_stats now, d;
    pvlock_stats_read(&now);
    if (!j->primed) {
        j->prev = now;
        j->primed = 1;
        if (why != NULL && n > 0)
            snprintf(why, n, "first call: no interval yet");
        return -1;
    }
    d.acquisitions = now.acquisitions - j->prev.acquisitions;
    d.contended = now.contended - j->prev.contended;
    d.sleeps = now.sleeps - j->prev.sleeps;
    d.wakes = now.wakes - j->prev.wakes;
    d.handovers = now.handovers - j->prev.handovers;
    d.handover_ns = now.handover_ns - j->prev.handover_ns;
    j->prev = now;
    return pvlock_judge_delta(&d, pvp_lock_mode(), why, n);
}

/* ---- the transition --------------------------------------------------------------------- */

static uint64_t switches_completed, switches_incomplete;

void pvlock_switch_counts(uint64_t *completed, uint64_t *incomplete)
{
    *completed = __atomic_load_n(&switches_completed, __ATOMIC_RELAXED);
    *incomplete = __atomic_load_n(&switches_incomplete, __ATOMIC_RELAXED);
}

static int lock_fail(struct pvrt_error *e, int err, const char *call, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int lock_fail(struct pvrt_error *e, int err, const char *call, const char *fmt, ...)
{
    if (e != NULL) {
        e->err = err;
        snprintf(e->syscall, sizeof(e->syscall), "%s", call ? call : "");
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int variant_mode(const char *v)
{
    if (v == NULL)
        return -1;
    if (strcmp(v, "native") == 0)
        return PVP_MODE_NATIVE;
    if (strcmp(v, "hybrid") == 0)
        return PVP_MODE_HYBRID;
    if (strcmp(v, "pv") == 0)
        return PVP_MODE_PV;
    return -1;
}

/* The runtime's reader of site bytes, when it is linked into the same object (weak: the C
 * stress harness links locks.c alone).  Hidden, so that it never binds to another object's
 * copy (the preload library's, in a process that has both): that one reads other sites. */
extern int pvrt_group_site_bytes_match(const char *group, const char *op, const char *variant)
    __attribute__((weak, visibility("hidden")));

static int check_unlocks_kick_rt(void *arg, struct pvrt_error *e)
{
    if (pvrt_group_site_bytes_match == NULL) {
        lock_fail(e, 0, NULL, "lock -> pv: no way to read the unlock sites' bytes here; the "
                              "mode stays %s (a PV head could sleep and never be woken)",
                  pvp_lock_mode() == PVP_MODE_NATIVE ? "native" : "hybrid");
        return 0;
    }
    /* pv and hybrid render the unlock op the same way (a call to pvp_kick_unlock). */
    if (pvrt_group_site_bytes_match("lock", "unlock", "pv") == 1 ||
        pvrt_group_site_bytes_match("lock", "unlock", "hybrid") == 1)
        return 1;
    lock_fail(e, 0, NULL, "lock -> pv: an unlock site does not hold the kicking rendering; the "
                          "mode stays %s (a PV head could sleep and never be woken)",
              pvp_lock_mode() == PVP_MODE_NATIVE ? "native" : "hybrid");
    return 0;
}

int pvlock_transition_checked(const char *current, const char *target, pvlock_apply_fn apply,
                              void *arg, pvlock_check_fn check, void *check_arg,
                              double grace_timeout_s, struct pvrt_error *e)
{
    int cur = variant_mode(current), tgt = variant_mode(target);
    if (apply == NULL)
        return lock_fail(e, 0, NULL, "lock transition: no apply function");
    if (cur < 0)
        return lock_fail(e, 0, NULL, "lock: current variant %s%s%s is not native, pv or hybrid",
                         current ? "'" : "", current ? current : "(none)", current ? "'" : "");
    if (tgt < 0)
        return lock_fail(e, 0, NULL, "lock: no transition to variant %s%s%s (native, pv, hybrid)",
                         target ? "'" : "", target ? target : "(none)", target ? "'" : "");
    if (!(grace_timeout_s >= 0.0 && grace_timeout_s <= 3600.0))
        return lock_fail(e, 0, NULL, "lock transition: grace timeout %g s is not in [0, 3600]",
                         grace_timeout_s);
    if (check == NULL)
        check = check_unlocks_kick_rt;
    /* Nothing to do only if the code and the mode word both say target already. */
    if (cur == tgt && pvp_lock_mode() == (uint32_t)tgt)
        return 0;
    if (tgt == PVP_MODE_PV) {
        /* 1. Every unlock site kicks; the batch ends with its third sync, partner of 2. */
        if (apply("hybrid", arg, e) != 0)
            return -1;
        /* Read the unlock sites' real bytes: the code, not a record of it. */
        int k = check(check_arg, e);
        if (k < 0)
            return -1;
        if (k == 0)
            return PVLOCK_NOT_KICKING;
        /* 2. From now on waiters may sleep (seq_cst store). */
        pvp_lock_set_mode(PVP_MODE_PV);
        /* 3. */
        if (apply("pv", arg, e) != 0)
            return -1;
    } else if (tgt == PVP_MODE_NATIVE) {
        /* 1. Lock sites stop entering the pv lock; unlock sites (still) kick. */
        if (apply("hybrid", arg, e) != 0)
            return -1;
        /* 2. seq_cst store: partner of every head's "pv_active += 1; read mode" (Dekker). */
        pvp_lock_set_mode(PVP_MODE_HYBRID);
        /* 3. Grace period: until no head may still sleep on a lock word. */
        int g = pvp_lock_grace((uint64_t)(grace_timeout_s * 1e9));
        if (g != 1) {
            __atomic_fetch_add(&switches_incomplete, 1, __ATOMIC_RELAXED);
            lock_fail(e, 0, NULL,
                      "lock -> native: %ld thread(s) could still sleep on a lock word after %g "
                      "s; the group stays at hybrid (safe with any thread in flight), switch "
                      "again to retry",
                      pvp_lock_pv_inflight(), grace_timeout_s);
            return PVLOCK_INCOMPLETE;
        }
        /* 4. The inline store returns; the mode word follows (for reporting only). */
        if (apply("native", arg, e) != 0)
            return -1;
        pvp_lock_set_mode(PVP_MODE_NATIVE);
    } else {
        if (apply("hybrid", arg, e) != 0)
            return -1;
        pvp_lock_set_mode(PVP_MODE_HYBRID);
    }
    __atomic_fetch_add(&switches_completed, 1, __ATOMIC_RELAXED);
    return 0;
}

int pvlock_transition(const char *current, const char *target, pvlock_apply_fn apply, void *arg,
                      double grace_timeout_s, struct pvrt_error *e)
{
    return pvlock_transition_checked(current, target, apply, arg, NULL, NULL, grace_timeout_s, e);
}
