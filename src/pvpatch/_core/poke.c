/*
 * poke.c - the write primitive, the batch protocol and the SIGTRAP handler.
 *
 * Mechanism only: Python decides which bytes go where; this file writes them so that no thread
 * ever executes a torn site and no mapping is ever writable and executable at once.
 *
 * Writer (W^X).  Every code write goes through text_write() of writer.c: pwrite() to
 * /proc/self/mem into the object's own private mapping, or, where the kernel forbids that, an rw-
 * alias that exists only during a batch.  No mapping changes protection, ever.
 *
 * The batch protocol (apply_batch), for any number of sites:
 *
 *   0. Validate every entry (in bounds, no overlap, current bytes == old); refuse before any write.
 *      Publish the batch (live_batch).
 *   1. Write int3 on the first byte of every site.                          sync #1
 *   2. Write every byte but the first.                                      sync #2
 *   3. Write the first bytes.                                               sync #3
 *   4. Unpublish the batch; wait until no trap handler holds a reference (they never block);
 *      verify every site reads back as new.
 *
 * A thread that traps on a site of the live batch finishes that site itself (trap_help): each
 * site has a state that only moves forward (S_INT3 -> S_TAIL -> S_DONE), the writes of a step are
 * the same bytes whoever does them, and any thread can issue the sync that ends a step.  It then
 * resumes at the site start and runs the whole new instruction.  No thread ever waits for another
 * thread to make progress; the patcher only waits, at step 4, for handlers that are running.
 */
#define _GNU_SOURCE
#include "core.h"
#include "writer.h"

#include <errno.h>
#include <link.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#define INT3 0xcc
#define SITE_MAX 15

/* ---- errors ----------------------------------------------------------------------------- */

PyObject *core_oserror_errno(int err, const char *syscall)
{
    PyObject *args = Py_BuildValue("(iss)", err, strerror(err), syscall);
    if (args != NULL) {
        PyErr_SetObject(PyExc_OSError, args);
        Py_DECREF(args);
    }
    return NULL;
}

PyObject *core_oserror(const char *syscall) { return core_oserror_errno(errno, syscall); }

/* ---- sync ------------------------------------------------------------------------------- */

static int membarrier_ok; /* registered for SYNC_CORE at import */
static int membarrier_errno;
static void fork_prepare(void);
static void fork_parent(void);
static void fork_child(void);

static long sys_membarrier(int cmd, unsigned flags) { return syscall(__NR_membarrier, cmd, flags, 0); }

/* cpuid is serialising; membarrier guarantees serialisation of the *other* threads only. */
static inline void serialize_self(void)
{
    unsigned a = 0, b, c = 0, d;
    __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d) : : "memory");
}

/* Every running thread of the process executes a core-serialising instruction before this
 * returns, and so does the caller.  Async-signal-safe. */
int core_sync(void)
{
    pvp_writer_sync_flush(); /* the writes this sync publishes are in memory first */
    if (sys_membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE, 0) != 0)
        return -1;
    serialize_self();
    return 0;
}

int core_poke_init(void)
{
    /* The writer first: it chooses its path before any code range exists. */
    if (pvp_writer_init() != 0) {
        core_oserror(pvp_writer_syscall);
        return -1;
    }
    /* trap_help below writes code from SIGTRAP handlers during a pass, so the patcher's
     * coalesced writes must not span bytes a handler may write (writer.h): only writes that
     * touch coalesce.  (With a gap, `pvpatch selftest` finds the race within seconds: a gap
     * rewrite puts an int3 back over a first byte a handler has just completed.)  A handler
     * that writes no code makes this call go, and each pass then takes a few pwrites. */
    pvp_writer_set_max_gap(0);
    /* Registering is cheap while the process has one thread and costs tens of milliseconds
     * later, which is why it happens here, at import. */
    long cmds = sys_membarrier(MEMBARRIER_CMD_QUERY, 0);
    if (cmds < 0 || !(cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE)) {
        membarrier_errno = cmds < 0 ? errno : ENOSYS;
        return 0; /* reported by membarrier_status(); batches then refuse */
    }
    if (sys_membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE, 0) != 0) {
        membarrier_errno = errno;
        return 0;
    }
    membarrier_ok = 1;
    int err = pthread_atfork(fork_prepare, fork_parent, fork_child);
    if (err != 0) {
        core_oserror_errno(err, "pthread_atfork");
        return -1;
    }
    return 0;
}

/* ---- known sites ------------------------------------------------------------------------ */

/* Sorted, immutable arrays of site start addresses, one per registered module; appended only.
 * The trap handler reads them without locks, so an array is fully written before its slot is
 * published (release; partner: the acquire in is_known_site). */
#define MAX_SITE_TABLES 1024
static const uintptr_t *_Atomic site_tables[MAX_SITE_TABLES];
static size_t site_table_len[MAX_SITE_TABLES];
static _Atomic size_t n_site_tables;
static pthread_mutex_t site_tables_lock = PTHREAD_MUTEX_INITIALIZER;

static bool is_known_site(uintptr_t ip)
{
    size_t n = atomic_load_explicit(&n_site_tables, memory_order_acquire);
    for (size_t t = 0; t < n; t++) {
        const uintptr_t *a = atomic_load_explicit(&site_tables[t], memory_order_acquire);
        size_t lo = 0, hi = site_table_len[t];
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (a[mid] < ip)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo < site_table_len[t] && a[lo] == ip)
            return true;
    }
    return false;
}

static int cmp_uptr(const void *x, const void *y)
{
    uintptr_t a = *(const uintptr_t *)x, b = *(const uintptr_t *)y;
    return a < b ? -1 : a > b;
}

/* ---- the batch -------------------------------------------------------------------------- */

enum { S_NONE = 0, S_INT3 = 1, S_TAIL = 2, S_DONE = 3 }; /* "written and synced" */

struct entry {
    uintptr_t addr; /* executable address */
    uint8_t len;
    uint8_t old[SITE_MAX];
    uint8_t new[SITE_MAX];
    _Atomic uint8_t state;
};

struct batch {
    struct entry *e; /* sorted by addr */
    size_t n, cap;
    _Atomic long refs; /* trap handlers inside this batch */
};

/* One batch object, reused: a handler that took a reference to it and finds it still published
 * reads whatever batch it holds now, which is the live one (see trap_help). */
static struct batch the_batch;
static struct batch *_Atomic live_batch;
static pthread_mutex_t batch_lock = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local int in_patcher;

static _Atomic unsigned long ctr_traps, ctr_traps_helped, ctr_traps_on_patcher, ctr_helper_syncs,
    ctr_stale_traps, ctr_batches, ctr_sites;

/* Raise e->state to at least s (the state only moves forward). */
static void raise_state(struct entry *e, uint8_t s)
{
    uint8_t cur = atomic_load_explicit(&e->state, memory_order_acquire);
    while (cur < s && !atomic_compare_exchange_weak_explicit(&e->state, &cur, s,
                                                             memory_order_acq_rel,
                                                             memory_order_acquire))
        ;
}

static long find_entry(const struct batch *b, uintptr_t ip)
{
    size_t lo = 0, hi = b->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (b->e[mid].addr < ip)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (lo < b->n && b->e[lo].addr == ip) ? (long)lo : -1;
}

/* Finish one site of the live batch from a trap handler.  Returns whether this thread wrote or
 * synced anything.  Each step is the patcher's step for this one site, and each sync partners
 * the patcher's sync of the same number. */
static bool complete_site(struct entry *e)
{
    bool did = false;
    uint8_t st = atomic_load_explicit(&e->state, memory_order_acquire);
    if (st < S_INT3) {
        /* 1. We trapped on the int3, so it is written; make sure every thread sees it before
         *    any tail byte changes (sync #1). */
        core_sync();
        atomic_fetch_add(&ctr_helper_syncs, 1);
        raise_state(e, S_INT3);
        did = true;
    }
    if (st < S_TAIL) {
        /* 2. Tail, then sync #2: no thread can see the new tail behind the old first byte,
         *    because the first byte is int3 for everyone. */
        text_write_now(e->addr + 1, e->new + 1, e->len - 1);
        core_sync();
        atomic_fetch_add(&ctr_helper_syncs, 1);
        raise_state(e, S_TAIL);
        did = true;
    }
    if (st < S_DONE) {
        /* 3. First byte, then sync #3. */
        text_write_now(e->addr, e->new, 1);
        core_sync();
        atomic_fetch_add(&ctr_helper_syncs, 1);
        raise_state(e, S_DONE);
        did = true;
    }
    return did;
}

static bool trap_help(uintptr_t ip)
{
    bool did = false;
    /* Take a reference, then check the batch is still published: the patcher unpublishes
     * before it waits for refs == 0 (seq_cst on both sides: Dekker). */
    struct batch *b = atomic_load(&live_batch);
    if (b == NULL)
        return false;
    atomic_fetch_add(&b->refs, 1);
    if (atomic_load(&live_batch) == b) {
        long i = find_entry(b, ip);
        /* Only an int3 of *this* batch licenses completing the site.  The thread may have
         * trapped on an earlier batch's int3 and be handled only now, when this batch is live
         * but has not reached step 1 at this site: writing the tail then would put new bytes
         * behind the old first byte (found by the model, pvpatch.model, mutation
         * helper_ignores_byte).  A batch's int3 stays until its own step 3, and every earlier
         * batch ended with its new first byte in place, so an int3 seen here is this batch's. */
        if (i >= 0 && *(volatile const uint8_t *)b->e[i].addr == INT3)
            did = complete_site(&b->e[i]);
    }
    atomic_fetch_sub(&b->refs, 1);
    return did;
}

/* ---- SIGTRAP ---------------------------------------------------------------------------- */

static struct sigaction prev_trap_action;
static _Atomic int trap_installed;

static void trap_handler(int sig, siginfo_t *si, void *ucv)
{
    int saved_errno = errno;
    ucontext_t *uc = ucv;
    if (si->si_code == SI_KERNEL) { /* int3 */
        uintptr_t ip = (uintptr_t)uc->uc_mcontext.gregs[REG_RIP] - 1;
        if (is_known_site(ip)) {
            atomic_fetch_add(&ctr_traps, 1);
            bool did = trap_help(ip);
            if (in_patcher)
                atomic_fetch_add(&ctr_traps_on_patcher, 1);
            else if (did)
                atomic_fetch_add(&ctr_traps_helped, 1);
            else
                atomic_fetch_add(&ctr_stale_traps, 1);
            /* Resume at the site start: the whole site is new by now, or int3 again for a later
             * batch, which traps and is handled the same way. */
            uc->uc_mcontext.gregs[REG_RIP] = (greg_t)ip;
            errno = saved_errno;
            return;
        }
    }
    /* Not ours: whoever handled SIGTRAP before us. */
    if (prev_trap_action.sa_flags & SA_SIGINFO) {
        if (prev_trap_action.sa_sigaction != NULL)
            prev_trap_action.sa_sigaction(sig, si, ucv);
    } else if (prev_trap_action.sa_handler == SIG_DFL) {
        /* The default action (terminate with a core) as if we were not here. */
        signal(SIGTRAP, SIG_DFL);
        raise(SIGTRAP);
    } else if (prev_trap_action.sa_handler != SIG_IGN) {
        prev_trap_action.sa_handler(sig);
    }
    errno = saved_errno;
}

/* Install the handler, chaining to whatever is there, unless it is ours already.  SA_NODEFER:
 * a signal handler that runs while we handle a trap may trap again on this thread, and a
 * blocked SIGTRAP from int3 kills the process. */
static PyObject *py_install_trap_handler(PyObject *self, PyObject *unused)
{
    struct sigaction cur, sa;
    if (sigaction(SIGTRAP, NULL, &cur) != 0)
        return core_oserror("sigaction");
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == trap_handler)
        Py_RETURN_FALSE;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = trap_handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_RESTART | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    prev_trap_action = cur;
    if (sigaction(SIGTRAP, &sa, NULL) != 0)
        return core_oserror("sigaction");
    atomic_store(&trap_installed, 1);
    Py_RETURN_TRUE;
}

/* ---- the patcher ------------------------------------------------------------------------ */

static int cmp_entry(const void *x, const void *y)
{
    uintptr_t a = ((const struct entry *)x)->addr, b = ((const struct entry *)y)->addr;
    return a < b ? -1 : a > b;
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* A code write of the patcher (writer.c); keeps the first failure. */
static void step_write(uintptr_t addr, const void *src, size_t len, int *first_errno,
                       const char **syscall)
{
    if (text_write(addr, src, len) != 0 && *first_errno == 0) {
        *first_errno = errno ? errno : EIO;
        *syscall = pvp_writer_syscall;
    }
}

/* One of the patcher's three syncs; keeps the first failure's errno.  The pass's pending
 * writes are flushed first: the sync publishes them. */
static void step_sync(int *syncs, int *first_errno, int *write_errno, const char **syscall)
{
    if (pvp_writer_flush() != 0 && *write_errno == 0) {
        *write_errno = errno ? errno : EIO;
        *syscall = pvp_writer_syscall;
    }
    if (core_sync() != 0 && *first_errno == 0)
        *first_errno = errno ? errno : EIO;
    (*syncs)++;
}

/* apply_batch(addrs, lens, old, new, hook=0, retire_timeout=5.0) -> dict
 *
 * addrs: native-endian uint64 array (n entries); lens: n bytes; old, new: n * 16 bytes
 * (site i's bytes at [16 i, 16 i + lens[i])).  hook: address of a `long (*)(void)` called right
 * after step 1's writes (the selftest makes the patcher trap on its own int3 with it).
 *
 * Refusals raise ValueError(reason, index) and write nothing; OSError for a failed syscall. */
static PyObject *py_apply_batch(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"addrs", "lens", "old", "new", "hook", "retire_timeout", NULL};
    Py_buffer addrs, lens, old, new;
    unsigned long long hook = 0;
    double retire_timeout = 5.0;
    PyObject *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*y*y*y*|Kd", kwlist, &addrs, &lens, &old, &new,
                                     &hook, &retire_timeout))
        return NULL;
    size_t n = (size_t)lens.len;
    if ((size_t)addrs.len != n * 8 || (size_t)old.len != n * 16 ||
        (size_t)new.len != n * 16) {
        PyErr_SetString(PyExc_TypeError, "apply_batch: buffer sizes do not agree");
        goto out_release;
    }
    if (!membarrier_ok) {
        core_oserror_errno(membarrier_errno, "membarrier");
        goto out_release;
    }
    if (!pvp_writer_child_ok()) {
        /* After a fork whose child handler could not copy the code: it is still shared with
         * the parent, whose threads this process cannot sync (alias path only). */
        core_oserror_errno(EXDEV, "fork (code still shared with the parent)");
        goto out_release;
    }

    struct batch *b = &the_batch;
    double t0 = now_ns();
    unsigned long traps0 = atomic_load(&ctr_traps), helped0 = atomic_load(&ctr_traps_helped),
                  onp0 = atomic_load(&ctr_traps_on_patcher);
    int syncs = 0, sync_errno = 0, write_errno = 0;
    const char *write_syscall = NULL;
    bool retire_stalled = false;
    long bad = -1;
    const char *why = NULL;

    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&batch_lock);
    if (atomic_load(&b->refs) != 0) {
        why = "a trap handler still holds the previous batch";
        goto unlock;
    }
    /* 0. Build, sort and validate; nothing is written unless every entry passes. */
    if (n > b->cap) {
        struct entry *ne = realloc(b->e, n * sizeof(*ne));
        if (ne == NULL) {
            why = "out of memory";
            goto unlock;
        }
        b->e = ne;
        b->cap = n;
    }
    const uint64_t *pa = addrs.buf;
    const uint8_t *pl = lens.buf, *po = old.buf, *pn = new.buf;
    for (size_t i = 0; i < n; i++) {
        struct entry *e = &b->e[i];
        e->addr = pa[i];
        e->len = pl[i];
        if (e->len < 1 || e->len > SITE_MAX) {
            why = "bad site length";
            bad = (long)i;
            goto unlock;
        }
        memcpy(e->old, po + 16 * i, e->len);
        memcpy(e->new, pn + 16 * i, e->len);
        atomic_init(&e->state, S_NONE);
    }
    b->n = n;
    qsort(b->e, n, sizeof(struct entry), cmp_entry);
    for (size_t i = 0; i < n && why == NULL; i++) {
        struct entry *e = &b->e[i];
        if (i + 1 < n && e->addr + e->len > b->e[i + 1].addr) {
            why = "sites overlap";
            bad = (long)i;
        } else if (!is_known_site(e->addr)) {
            why = "not a registered site";
            bad = (long)i;
        } else if (memcmp((const void *)e->addr, e->old, e->len) != 0) {
            why = "bytes at the site are not the expected old bytes";
            bad = (long)i;
        } else if (pvp_code_range_find(e->addr, e->len) < 0) {
            why = "not in a registered code range";
            bad = (long)i;
        }
    }
    if (why != NULL) {
        bad = bad >= 0 ? (long)b->e[bad].addr : -1; /* report the address; Python names it */
        b->n = 0;
        goto unlock;
    }
    /* Entries whose new bytes are their old ones need no write: drop them (the kernel skips
     * them too).  A batch left empty takes no sync. */
    {
        size_t kept = 0;
        for (size_t i = 0; i < n; i++)
            if (memcmp(b->e[i].old, b->e[i].new, b->e[i].len) != 0) {
                if (kept != i)
                    memcpy(&b->e[kept], &b->e[i], sizeof(struct entry));
                kept++;
            }
        n = b->n = kept;
        if (n == 0)
            goto unlock;
    }
    if (pvp_writer_begin() != 0) {
        write_errno = errno;
        write_syscall = pvp_writer_syscall;
        n = b->n = 0;
        goto unlock;
    }
    in_patcher = 1;
    /* Publish: partner is the load in trap_help. */
    atomic_store(&live_batch, b);

    /* 1. int3 on every first byte. */
    for (size_t i = 0; i < n; i++)
        if (atomic_load_explicit(&b->e[i].state, memory_order_acquire) < S_INT3)
            step_write(b->e[i].addr, &(const uint8_t){INT3}, 1, &write_errno, &write_syscall);
    if (hook != 0) {
        /* The hook runs a site: the int3s must be in memory, not pending in the writer. */
        if (pvp_writer_flush() != 0 && write_errno == 0) {
            write_errno = errno ? errno : EIO;
            write_syscall = pvp_writer_syscall;
        }
        ((long (*)(void))(uintptr_t)hook)();
    }
    /* sync #1: partner of the helper's step-1 sync; after it, nobody can fetch an old first
     * byte. */
    step_sync(&syncs, &sync_errno, &write_errno, &write_syscall);
    for (size_t i = 0; i < n; i++)
        raise_state(&b->e[i], S_INT3);

    /* 2. Every byte but the first. */
    for (size_t i = 0; i < n; i++) {
        struct entry *e = &b->e[i];
        if (atomic_load_explicit(&e->state, memory_order_acquire) < S_TAIL)
            step_write(e->addr + 1, e->new + 1, e->len - 1, &write_errno, &write_syscall);
    }
    /* sync #2: partner of the helper's step-2 sync. */
    step_sync(&syncs, &sync_errno, &write_errno, &write_syscall);
    for (size_t i = 0; i < n; i++)
        raise_state(&b->e[i], S_TAIL);

    /* 3. First bytes. */
    for (size_t i = 0; i < n; i++) {
        struct entry *e = &b->e[i];
        if (atomic_load_explicit(&e->state, memory_order_acquire) < S_DONE)
            step_write(e->addr, e->new, 1, &write_errno, &write_syscall);
    }
    /* sync #3: partner of the helper's step-3 sync. */
    step_sync(&syncs, &sync_errno, &write_errno, &write_syscall);
    for (size_t i = 0; i < n; i++)
        raise_state(&b->e[i], S_DONE);

    /* 4. Unpublish, then wait for handlers inside the batch (they never block: the wait is
     *    bounded by scheduling, and by retire_timeout in any case). */
    atomic_store(&live_batch, NULL);
    {
        double deadline = now_ns() + retire_timeout * 1e9;
        unsigned spins = 0;
        while (atomic_load(&b->refs) != 0) {
            if (++spins % 64 == 0) {
                if (now_ns() > deadline) {
                    retire_stalled = true;
                    break;
                }
                sched_yield();
            }
        }
    }
    in_patcher = 0;
    /* No handler holds the batch any more: the alias (fallback path) may go.  After a stalled
     * retirement a handler may still write through it, so it stays until a later batch ends. */
    if ((retire_stalled ? pvp_writer_flush() : pvp_writer_end()) != 0 && write_errno == 0) {
        write_errno = errno ? errno : EIO;
        write_syscall = pvp_writer_syscall;
    }
    for (size_t i = 0; i < n; i++)
        if (memcmp((const void *)b->e[i].addr, b->e[i].new, b->e[i].len) != 0) {
            why = "a site does not read back as written";
            bad = (long)b->e[i].addr;
            break;
        }
    atomic_fetch_add(&ctr_batches, 1);
    atomic_fetch_add(&ctr_sites, n);
unlock:
    pthread_mutex_unlock(&batch_lock);
    Py_END_ALLOW_THREADS

    if (write_errno != 0) {
        /* The writer failed after it had written part of the batch (the probe at import makes
         * this a kernel that changed its mind): say which call, and what read-back found. */
        core_oserror_errno(write_errno, write_syscall ? write_syscall : "text_write");
        goto out_release;
    }
    if (sync_errno != 0) {
        /* membarrier never fails once registered; if it did, the sites are still whole (every
         * step wrote), but the ordering promise was not kept: say so. */
        core_oserror_errno(sync_errno, "membarrier");
        goto out_release;
    }
    if (why != NULL) {
        PyObject *v = Py_BuildValue("(sL)", why, (long long)bad);
        if (v != NULL) {
            PyErr_SetObject(PyExc_ValueError, v);
            Py_DECREF(v);
        }
        goto out_release;
    }
    result = Py_BuildValue("{s:n,s:i,s:d,s:k,s:k,s:k,s:O}", "sites", (Py_ssize_t)n, "syncs",
                           syncs, "ns", now_ns() - t0, "traps", atomic_load(&ctr_traps) - traps0,
                           "traps_helped", atomic_load(&ctr_traps_helped) - helped0,
                           "traps_on_patcher", atomic_load(&ctr_traps_on_patcher) - onp0,
                           "retire_stalled", retire_stalled ? Py_True : Py_False);
out_release:
    PyBuffer_Release(&addrs);
    PyBuffer_Release(&lens);
    PyBuffer_Release(&old);
    PyBuffer_Release(&new);
    return result;
}

/* ---- text ------------------------------------------------------------------------------- */

/* pthread_atfork: no fork lands in the middle of a batch, of a table update or of a code range
 * update (prepare takes the locks; both sides release them).  So the child's copy of the text
 * -- copy-on-write of the private mappings, or the writer's copy of the shared ones on the
 * fallback path -- is never taken from a text that a batch is writing. */
static void fork_prepare(void)
{
    pthread_mutex_lock(&batch_lock);
    pthread_mutex_lock(&site_tables_lock);
    pvp_writer_fork_prepare();
}

static void fork_parent(void)
{
    pvp_writer_fork_parent();
    pthread_mutex_unlock(&site_tables_lock);
    pthread_mutex_unlock(&batch_lock);
}

/* In the child (one thread). */
static void fork_child(void)
{
    pvp_writer_fork_child();
    /* A handler of another thread may have held a reference to the (unpublished) batch at the
     * fork; that thread does not exist here. */
    atomic_store(&the_batch.refs, 0);
    pthread_mutex_unlock(&site_tables_lock);
    pthread_mutex_unlock(&batch_lock);
}

struct seg_query {
    uintptr_t addr;
    uintptr_t start, end;
    char path[4096];
    int found;
};

static int seg_cb(struct dl_phdr_info *info, size_t size, void *data)
{
    struct seg_query *q = data;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
            continue;
        uintptr_t s = info->dlpi_addr + ph->p_vaddr, e = s + ph->p_memsz;
        if (q->addr >= s && q->addr < e) {
            long pg = sysconf(_SC_PAGESIZE);
            q->start = s & ~(uintptr_t)(pg - 1);
            q->end = (e + pg - 1) & ~(uintptr_t)(pg - 1);
            snprintf(q->path, sizeof(q->path), "%s", info->dlpi_name ? info->dlpi_name : "");
            q->found = 1;
            return 1;
        }
    }
    return 0;
}

/* text_segment(addr) -> (start, end, path) of the executable PT_LOAD holding addr (page
 * aligned), or None. */
static PyObject *py_text_segment(PyObject *self, PyObject *arg)
{
    struct seg_query q = {0};
    q.addr = (uintptr_t)PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    dl_iterate_phdr(seg_cb, &q);
    if (!q.found)
        Py_RETURN_NONE;
    return Py_BuildValue("(KKs)", (unsigned long long)q.start, (unsigned long long)q.end, q.path);
}

/* register_text(start, length, name): [start, start+length) becomes a code range pvpatch may
 * write (writer.c).  proc-mem path: nothing moves.  Alias path: the text moves into a memfd,
 * mapped shared r-x over the same address.  Idempotent for a range that is already one. */
static PyObject *py_register_text(PyObject *self, PyObject *args)
{
    unsigned long long start, length;
    const char *name;
    if (!PyArg_ParseTuple(args, "KKs", &start, &length, &name))
        return NULL;
    if (pvp_code_range_add_text((uintptr_t)start, (size_t)length, name) < 0)
        return core_oserror(pvp_writer_syscall);
    Py_RETURN_NONE;
}

/* map_code(length, name, near=0) -> exec: fresh zeroed code memory, r-x (within 1 GiB below
 * `near` when given, so that rel32 calls reach code there).  Write it with write_code. */
static PyObject *py_map_code(PyObject *self, PyObject *args)
{
    unsigned long long length, near = 0;
    const char *name;
    uintptr_t x;
    if (!PyArg_ParseTuple(args, "Ks|K", &length, &name, &near))
        return NULL;
    if (pvp_code_range_map((size_t)length, name, (uintptr_t)near, &x) < 0)
        return core_oserror(pvp_writer_syscall);
    return PyLong_FromUnsignedLongLong(x);
}

/* write_code(addr, data): write bytes into a code range with the writer, outside the batch
 * protocol: for code no thread runs yet (generated functions), op slots that live in code
 * pages, and tests.  Serialised with batches. */
static PyObject *py_write_code(PyObject *self, PyObject *args)
{
    unsigned long long addr;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "Ky*", &addr, &data))
        return NULL;
    int rc, err = 0;
    const char *syscall = NULL;
    if (pvp_code_range_find((uintptr_t)addr, (size_t)data.len) < 0) {
        PyBuffer_Release(&data);
        PyErr_Format(PyExc_ValueError, "write_code: [%#llx, +%zd) is not in a code range of "
                                       "pvpatch", addr, data.len);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&batch_lock);
    rc = pvp_writer_begin();
    if (rc == 0)
        rc = text_write((uintptr_t)addr, data.buf, (size_t)data.len);
    if (rc != 0) {
        err = errno;
        syscall = pvp_writer_syscall;
    }
    if (pvp_writer_end() != 0 && rc == 0) {
        rc = -1;
        err = errno;
        syscall = pvp_writer_syscall;
    }
    pthread_mutex_unlock(&batch_lock);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (rc != 0)
        return core_oserror_errno(err, syscall);
    Py_RETURN_NONE;
}

/* writer_status() -> dict: which path writes code, and why. */
static PyObject *py_writer_status(PyObject *self, PyObject *unused)
{
    int forced, probe_errno;
    const char *probe_syscall;
    size_t max_gap, n;
    unsigned long syscalls, bytes, alias_maps;
    pvp_writer_status(&forced, &probe_errno, &probe_syscall, &max_gap, &syscalls, &bytes,
                      &alias_maps, &n);
    return Py_BuildValue("{s:s,s:O,s:i,s:s,s:n,s:k,s:k,s:k,s:n}", "path", pvp_writer_path(),
                         "forced", forced ? Py_True : Py_False, "probe_errno", probe_errno,
                         "probe_syscall", probe_syscall, "max_gap", (Py_ssize_t)max_gap,
                         "write_syscalls", syscalls, "bytes_written", bytes, "alias_maps",
                         alias_maps, "code_ranges", (Py_ssize_t)n);
}

/* add_known_sites(addrs) -> index: addrs is a uint64 array of site starts (any order); the trap
 * handler recognises them from now on. */
static PyObject *py_add_known_sites(PyObject *self, PyObject *arg)
{
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) != 0)
        return NULL;
    size_t n = (size_t)buf.len / sizeof(uintptr_t);
    uintptr_t *a = malloc((n ? n : 1) * sizeof(uintptr_t));
    if (a == NULL) {
        PyBuffer_Release(&buf);
        return PyErr_NoMemory();
    }
    memcpy(a, buf.buf, n * sizeof(uintptr_t));
    PyBuffer_Release(&buf);
    qsort(a, n, sizeof(uintptr_t), cmp_uptr);
    pthread_mutex_lock(&site_tables_lock);
    size_t t = atomic_load(&n_site_tables);
    if (t == MAX_SITE_TABLES) {
        pthread_mutex_unlock(&site_tables_lock);
        free(a);
        PyErr_SetString(PyExc_OverflowError, "too many site tables");
        return NULL;
    }
    site_table_len[t] = n;
    atomic_store_explicit(&site_tables[t], a, memory_order_release);
    /* Partner: the acquire of n_site_tables in is_known_site. */
    atomic_store_explicit(&n_site_tables, t + 1, memory_order_release);
    pthread_mutex_unlock(&site_tables_lock);
    return PyLong_FromSize_t(t);
}

static PyObject *py_sync(PyObject *self, PyObject *unused)
{
    if (!membarrier_ok)
        return core_oserror_errno(membarrier_errno, "membarrier");
    if (core_sync() != 0)
        return core_oserror("membarrier");
    Py_RETURN_NONE;
}

static PyObject *py_membarrier_status(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("(Oi)", membarrier_ok ? Py_True : Py_False, membarrier_errno);
}

static PyObject *py_trap_counters(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("{s:k,s:k,s:k,s:k,s:k,s:k,s:k}", "traps", atomic_load(&ctr_traps),
                         "traps_helped", atomic_load(&ctr_traps_helped), "traps_on_patcher",
                         atomic_load(&ctr_traps_on_patcher), "stale_traps",
                         atomic_load(&ctr_stale_traps), "helper_syncs",
                         atomic_load(&ctr_helper_syncs), "batches", atomic_load(&ctr_batches),
                         "sites_patched", atomic_load(&ctr_sites));
}

/* sites_match(addrs, lens, flat) -> index of the first site whose bytes are not its part of
 * flat (16 bytes per site, as apply_batch's old/new), or -1 when every site matches.  What the
 * registry's record of a group's variant is checked against. */
static PyObject *py_sites_match(PyObject *self, PyObject *args)
{
    Py_buffer addrs, lens, flat;
    if (!PyArg_ParseTuple(args, "y*y*y*", &addrs, &lens, &flat))
        return NULL;
    size_t n = (size_t)lens.len;
    long bad = -1;
    if ((size_t)addrs.len != n * 8 || (size_t)flat.len != n * 16) {
        PyErr_SetString(PyExc_TypeError, "sites_match: buffer sizes do not agree");
    } else {
        const uint64_t *pa = addrs.buf;
        const uint8_t *pl = lens.buf, *pf = flat.buf;
        for (size_t i = 0; i < n; i++)
            if (pl[i] > 16 || memcmp((const void *)(uintptr_t)pa[i], pf + 16 * i, pl[i]) != 0) {
                bad = (long)i;
                break;
            }
    }
    PyBuffer_Release(&addrs);
    PyBuffer_Release(&lens);
    PyBuffer_Release(&flat);
    return PyErr_Occurred() ? NULL : PyLong_FromLong(bad);
}

/* read(addr, n) -> bytes */
static PyObject *py_read(PyObject *self, PyObject *args)
{
    unsigned long long addr;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "Kn", &addr, &n))
        return NULL;
    return PyBytes_FromStringAndSize((const char *)(uintptr_t)addr, n);
}

PyMethodDef core_poke_methods[] = {
    {"apply_batch", (PyCFunction)(void (*)(void))py_apply_batch, METH_VARARGS | METH_KEYWORDS,
     "Apply one batch of site writes with the int3 protocol."},
    {"install_trap_handler", py_install_trap_handler, METH_NOARGS,
     "Install the SIGTRAP handler (chaining to the previous one) unless it is already there."},
    {"text_segment", py_text_segment, METH_O, "Executable segment holding an address."},
    {"register_text", py_register_text, METH_VARARGS, "Make text a code range pvpatch writes."},
    {"map_code", py_map_code, METH_VARARGS, "Fresh r-x code memory; returns its address."},
    {"write_code", py_write_code, METH_VARARGS, "Write bytes into a code range (no protocol)."},
    {"writer_status", py_writer_status, METH_NOARGS, "The writer's path and counters."},
    {"add_known_sites", py_add_known_sites, METH_O, "Register site start addresses."},
    {"sync", py_sync, METH_NOARGS, "membarrier SYNC_CORE."},
    {"membarrier_status", py_membarrier_status, METH_NOARGS, "(registered, errno)."},
    {"trap_counters", py_trap_counters, METH_NOARGS, "Trap handler counters."},
    {"read", py_read, METH_VARARGS, "Read bytes from memory."},
    {"sites_match", py_sites_match, METH_VARARGS, "First site not holding the given bytes."},
    {NULL, NULL, 0, NULL},
};
