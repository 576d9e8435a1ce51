/*
 * torture.c - the locktorture engine: writer threads that loop {acquire; critical section;
 * release} on one lock, counting acquisitions and mutual-exclusion violations, while Python
 * reads the counters, switches the lock group's variant, or moves the writers to another kind
 * of lock for a side-by-side comparison.
 *
 * Kinds: pvpatch (pvpatch's queued spinlock through the `lock` group's sites, which Python
 * re-patches live), pthread-mutex, pthread-spin, tas (test-and-test-and-set), ticket (plain
 * fair ticket lock), futex-park (spin a bounded time, then sleep on a futex: mutex 3 of Ulrich
 * Drepper's "Futexes Are Tricky", 2004/2011, with a spin phase in front, as glibc's adaptive
 * mutex has), mcs (the queue lock of Mellor-Crummey and Scott, "Algorithms for Scalable
 * Synchronization on Shared-Memory Multiprocessors", ACM TOCS 9(1), 1991: each waiter spins on
 * its own node) and none (no lock: what a violation looks like; tests use it to prove the
 * detector).  Each kind has its own lock and its own critical-section data, so that writers
 * moving from one kind to another never meet in one critical section under different locks.
 *
 * The critical section detects a second owner two ways: an owner word that must be 0 on entry
 * and ours on exit (`fails`), and a counter incremented non-atomically, which must end equal
 * to the acquisitions counted for that kind (lost updates, checked at stop).
 *
 * Writers never touch Python; they block every asynchronous signal (Python handles those on
 * its main thread) but not the synchronous ones, SIGTRAP included (the patcher's int3s).
 */
#define _GNU_SOURCE
#include "core.h" /* Python.h first */
#include "lock_sites.h"

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { K_PVPATCH, K_MUTEX, K_SPIN, K_TAS, K_TICKET, K_FUTEX, K_MCS, K_NONE, K_N };
static const char *const kind_names[K_N] = {"pvpatch", "pthread-mutex", "pthread-spin",
                                            "tas",     "ticket",        "futex-park",
                                            "mcs",     "none"};

/* Acquire latency, sampled: the first LAT_DENSE acquisitions of each sampling epoch, then
 * one in LAT_EVERY, each timed with two clock_gettime(CLOCK_MONOTONIC) (vDSO, TSC here) around
 * the acquire.  A ring of the last LAT_RING samples per writer, tagged with the epoch Python
 * set when the writer took it, so that a reader picks one configuration's samples without
 * stopping the writers. */
#define LAT_RING 2048
#define LAT_DENSE 256
#define LAT_EVERY 64

/* futex-park: the lock word's three states (Drepper's mutex 3). */
enum { FP_FREE, FP_LOCKED, FP_CONTENDED };
#define FP_SPIN 128 /* pauses on the word before parking: ~4 us here, under a futex round trip */

struct mcs_node {
    struct mcs_node *next;
    uint32_t locked;
} __attribute__((aligned(64)));

/* One node per thread is enough: a torture writer holds at most one lock at a time. */
static __thread struct mcs_node mcs_self;

enum { W_IDLE, W_ACQUIRE, W_CS, W_RELEASE, W_EXITED };
static const char *const where_names[] = {"idle", "acquire", "cs", "release", "exited"};

#define LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

struct cs_data {
    int owner;
    uint64_t counter;
} __attribute__((aligned(64)));

struct torture;

struct writer {
    pthread_t th;
    struct torture *t;
    int id;
    int created;
    int started;     /* set by the writer first thing: its signal mask is its own by then */
    uint64_t writes; /* written by the writer only, read by anyone */
    uint64_t fails;
    uint64_t per_kind[K_N];
    uint32_t where;
    uint32_t kind;
    uint32_t lat_next; /* next ring slot (written by the writer only) */
    struct {
        uint32_t ns, epoch;
    } lat[LAT_RING];
} __attribute__((aligned(64)));

struct torture {
    int nwriters;
    uint64_t hold_ns;
    uint32_t kind; /* writers read it at every iteration */
    uint32_t stop;
    int stopped; /* torture_stop ran; writers joined iff joined == nwriters */
    int joined;
    pvp_lock_t qlock __attribute__((aligned(64)));
    pthread_mutex_t mutex __attribute__((aligned(64)));
    pthread_spinlock_t spin __attribute__((aligned(64)));
    uint8_t tas __attribute__((aligned(64)));
    struct {
        uint32_t next, owner;
    } ticket __attribute__((aligned(64)));
    uint32_t futex __attribute__((aligned(64)));
    uint64_t futex_sleeps; /* futex-park: FUTEX_WAITs that slept (returned 0) */
    struct mcs_node *mcs_tail __attribute__((aligned(64)));
    uint32_t epoch; /* latency-sample epoch, set by Python */
    struct cs_data cs[K_N];
    struct writer w[];
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static long sys_futex(uint32_t *uaddr, int op, uint32_t val)
{
    return syscall(SYS_futex, uaddr, op | FUTEX_PRIVATE_FLAG, val, NULL, NULL, 0);
}

/* Drepper, "Futexes Are Tricky", mutex 3, behind a bounded spin: 0 free, 1 locked, 2 locked
 * and someone may sleep.  A thread that parks marks the word 2 first (xchg), so the unlock that
 * sees 2 wakes one; a woken thread takes the word as 2, since others may still sleep. */
static void futex_park_lock(uint32_t *w, uint64_t *sleeps)
{
    uint32_t c = FP_FREE;
    if (__atomic_compare_exchange_n(w, &c, FP_LOCKED, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        return;
    for (int i = 0; i < FP_SPIN; i++) {
        __builtin_ia32_pause();
        c = LOAD(w);
        if (c == FP_FREE && __atomic_compare_exchange_n(w, &c, FP_LOCKED, 0, __ATOMIC_ACQUIRE,
                                                        __ATOMIC_RELAXED))
            return;
        if (c == FP_CONTENDED) /* sleepers already: spinning would only steal from them */
            break;
    }
    if (c != FP_CONTENDED)
        c = __atomic_exchange_n(w, FP_CONTENDED, __ATOMIC_ACQUIRE);
    while (c != FP_FREE) {
        if (sys_futex(w, FUTEX_WAIT, FP_CONTENDED) == 0) /* EAGAIN/EINTR: re-check */
            __atomic_fetch_add(sleeps, 1, __ATOMIC_RELAXED);
        c = __atomic_exchange_n(w, FP_CONTENDED, __ATOMIC_ACQUIRE);
    }
}

static void futex_park_unlock(uint32_t *w)
{
    if (__atomic_exchange_n(w, FP_FREE, __ATOMIC_RELEASE) == FP_CONTENDED)
        sys_futex(w, FUTEX_WAKE, 1);
}

/* MCS: 1. publish our node as the tail (xchg); 2. link it behind the predecessor, whose
 * release store of `locked` (partner: step 2 of mcs_unlock) hands us the lock. */
static void mcs_lock(struct mcs_node **tail)
{
    struct mcs_node *me = &mcs_self;
    STORE(&me->next, NULL);
    STORE(&me->locked, 0);
    struct mcs_node *pred = __atomic_exchange_n(tail, me, __ATOMIC_ACQ_REL);
    if (pred == NULL)
        return;
    __atomic_store_n(&pred->next, me, __ATOMIC_RELEASE);
    while (!__atomic_load_n(&me->locked, __ATOMIC_ACQUIRE))
        __builtin_ia32_pause();
}

/* 1. No successor linked: try to empty the queue; a successor that swapped the tail in between
 * links soon, wait for it.  2. Grant it (release: our critical section before its). */
static void mcs_unlock(struct mcs_node **tail)
{
    struct mcs_node *me = &mcs_self, *next = __atomic_load_n(&me->next, __ATOMIC_ACQUIRE);
    if (next == NULL) {
        struct mcs_node *expect = me;
        if (__atomic_compare_exchange_n(tail, &expect, NULL, 0, __ATOMIC_RELEASE,
                                        __ATOMIC_RELAXED))
            return;
        while ((next = __atomic_load_n(&me->next, __ATOMIC_ACQUIRE)) == NULL)
            __builtin_ia32_pause();
    }
    __atomic_store_n(&next->locked, 1, __ATOMIC_RELEASE);
}

static inline void acquire(struct torture *t, uint32_t k, int id)
{
    switch (k) {
    case K_PVPATCH:
        /* Half the writers lock through the sites inlined here, half through the out-of-line
         * ones: both kinds of site are under live patching. */
        if (id & 1)
            pvp_lock_acquire(&t->qlock);
        else
            PVP_LOCK(&t->qlock);
        break;
    case K_MUTEX:
        pthread_mutex_lock(&t->mutex);
        break;
    case K_SPIN:
        pthread_spin_lock(&t->spin);
        break;
    case K_TAS:
        while (__atomic_exchange_n(&t->tas, 1, __ATOMIC_ACQUIRE))
            while (LOAD(&t->tas))
                __builtin_ia32_pause();
        break;
    case K_TICKET: {
        uint32_t me = __atomic_fetch_add(&t->ticket.next, 1, __ATOMIC_RELAXED);
        while (__atomic_load_n(&t->ticket.owner, __ATOMIC_ACQUIRE) != me)
            __builtin_ia32_pause();
        break;
    }
    case K_FUTEX:
        futex_park_lock(&t->futex, &t->futex_sleeps);
        break;
    case K_MCS:
        mcs_lock(&t->mcs_tail);
        break;
    default:
        break;
    }
}

static inline void release(struct torture *t, uint32_t k, int id)
{
    switch (k) {
    case K_PVPATCH:
        if (id & 1)
            pvp_lock_release(&t->qlock);
        else
            PVP_UNLOCK(&t->qlock);
        break;
    case K_MUTEX:
        pthread_mutex_unlock(&t->mutex);
        break;
    case K_SPIN:
        pthread_spin_unlock(&t->spin);
        break;
    case K_TAS:
        __atomic_store_n(&t->tas, 0, __ATOMIC_RELEASE);
        break;
    case K_TICKET:
        __atomic_store_n(&t->ticket.owner, LOAD(&t->ticket.owner) + 1, __ATOMIC_RELEASE);
        break;
    case K_FUTEX:
        futex_park_unlock(&t->futex);
        break;
    case K_MCS:
        mcs_unlock(&t->mcs_tail);
        break;
    default:
        break;
    }
}

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    struct torture *t = w->t;
    const int me = w->id + 1;
    __atomic_store_n(&w->started, 1, __ATOMIC_RELEASE);
    uint32_t epoch = 0;
    uint64_t in_epoch = 0; /* acquisitions since this writer saw the epoch change */
    while (!__atomic_load_n(&t->stop, __ATOMIC_RELAXED)) {
        uint32_t k = __atomic_load_n(&t->kind, __ATOMIC_RELAXED);
        uint32_t e = __atomic_load_n(&t->epoch, __ATOMIC_RELAXED);
        if (e != epoch) {
            epoch = e;
            in_epoch = 0;
        }
        int timed = in_epoch < LAT_DENSE || (in_epoch & (LAT_EVERY - 1)) == 0;
        STORE(&w->kind, k);
        STORE(&w->where, W_ACQUIRE);
        uint64_t t0 = timed ? now_ns() : 0;
        acquire(t, k, w->id);
        /* A sample belongs to the epoch in which its acquisition completed, as the
         * acquisition counts do: re-read it (a long wait may span an epoch change). */
        e = __atomic_load_n(&t->epoch, __ATOMIC_RELAXED);
        if (e != epoch) {
            epoch = e;
            in_epoch = 0;
        }
        in_epoch++;
        if (timed) {
            uint64_t d = now_ns() - t0;
            uint32_t i = w->lat_next;
            STORE(&w->lat[i].ns, d > UINT32_MAX ? UINT32_MAX : (uint32_t)d);
            STORE(&w->lat[i].epoch, epoch);
            STORE(&w->lat_next, (i + 1) % LAT_RING);
        }
        STORE(&w->where, W_CS);

        /* The critical section: nobody else may be here, under this kind's lock. */
        struct cs_data *cs = &t->cs[k];
        uint64_t fails = 0;
        if (LOAD(&cs->owner) != 0)
            fails++;
        STORE(&cs->owner, me);
        uint64_t c = LOAD(&cs->counter);
        if (t->hold_ns) {
            uint64_t end = now_ns() + t->hold_ns;
            while (now_ns() < end)
                ;
        }
        STORE(&cs->counter, c + 1);
        if (LOAD(&cs->owner) != me)
            fails++;
        STORE(&cs->owner, 0);

        STORE(&w->where, W_RELEASE);
        release(t, k, w->id);
        STORE(&w->where, W_IDLE);
        if (fails)
            STORE(&w->fails, LOAD(&w->fails) + fails);
        STORE(&w->per_kind[k], LOAD(&w->per_kind[k]) + 1);
        STORE(&w->writes, LOAD(&w->writes) + 1);
    }
    STORE(&w->where, W_EXITED);
    return NULL;
}

/* ---- Python ----------------------------------------------------------------------------- */

#define CAPSULE "pvpatch.torture"

static int kind_index(const char *name)
{
    for (int k = 0; k < K_N; k++)
        if (strcmp(name, kind_names[k]) == 0)
            return k;
    char known[128] = "";
    for (int k = 0; k < K_N; k++) {
        strncat(known, kind_names[k], sizeof(known) - strlen(known) - 1);
        if (k + 1 < K_N)
            strncat(known, ", ", sizeof(known) - strlen(known) - 1);
    }
    PyErr_Format(PyExc_ValueError, "unknown lock kind '%s' (known: %s)", name, known);
    return -1;
}

static struct torture *get(PyObject *cap)
{
    return PyCapsule_GetPointer(cap, CAPSULE);
}

/* Stop and join with a deadline; returns how many writers are joined. */
static int stop_join(struct torture *t, double timeout)
{
    __atomic_store_n(&t->stop, 1, __ATOMIC_RELAXED);
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    uint64_t ns = (uint64_t)(timeout * 1e9);
    dl.tv_sec += (time_t)(ns / 1000000000ull);
    dl.tv_nsec += (long)(ns % 1000000000ull);
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    int joined = 0;
    for (int i = 0; i < t->nwriters; i++) {
        if (!t->w[i].created) {
            joined++;
            continue;
        }
        if (pthread_timedjoin_np(t->w[i].th, NULL, &dl) == 0) {
            t->w[i].created = 0;
            joined++;
        }
    }
    t->stopped = 1;
    t->joined = joined;
    return joined;
}

static void destroy(struct torture *t)
{
    pthread_mutex_destroy(&t->mutex);
    pthread_spin_destroy(&t->spin);
    free(t);
}

static void capsule_destructor(PyObject *cap)
{
    struct torture *t = PyCapsule_GetPointer(cap, CAPSULE);
    if (t == NULL)
        return;
    if (!t->stopped || t->joined != t->nwriters)
        stop_join(t, 5.0);
    /* Writers that never came back (a lost wake-up the rescue could not cure) still use the
     * memory: leak it rather than free it under them. */
    if (t->joined == t->nwriters)
        destroy(t);
}

/* torture_kinds() -> tuple of the lock kinds, in the engine's order */
static PyObject *py_torture_kinds(PyObject *self, PyObject *unused)
{
    PyObject *tup = PyTuple_New(K_N);
    for (int k = 0; tup != NULL && k < K_N; k++) {
        PyObject *s = PyUnicode_FromString(kind_names[k]);
        if (s == NULL) {
            Py_CLEAR(tup);
            break;
        }
        PyTuple_SET_ITEM(tup, k, s);
    }
    return tup;
}

/* torture_start(writers, hold_ns, kind) -> handle; the writers run until torture_stop. */
static PyObject *py_torture_start(PyObject *self, PyObject *args)
{
    int n;
    unsigned long long hold_ns;
    const char *kind;
    if (!PyArg_ParseTuple(args, "iKs", &n, &hold_ns, &kind))
        return NULL;
    if (n < 1 || n > 1024) {
        PyErr_Format(PyExc_ValueError, "torture: %d writers is not in [1, 1024]", n);
        return NULL;
    }
    if (hold_ns > 10000000000ull) {
        PyErr_Format(PyExc_ValueError, "torture: hold of %llu ns is more than 10 s", hold_ns);
        return NULL;
    }
    int k = kind_index(kind);
    if (k < 0)
        return NULL;

    size_t size = sizeof(struct torture) + sizeof(struct writer) * (size_t)n;
    struct torture *t = aligned_alloc(64, (size + 63) & ~(size_t)63);
    if (t == NULL)
        return PyErr_NoMemory();
    memset(t, 0, size);
    t->nwriters = n;
    t->hold_ns = hold_ns;
    t->kind = (uint32_t)k;
    int err = pthread_mutex_init(&t->mutex, NULL);
    if (err != 0) {
        free(t);
        return core_oserror_errno(err, "pthread_mutex_init");
    }
    if ((err = pthread_spin_init(&t->spin, PTHREAD_PROCESS_PRIVATE)) != 0) {
        pthread_mutex_destroy(&t->mutex);
        free(t);
        return core_oserror_errno(err, "pthread_spin_init");
    }

    /* Writers inherit this mask: asynchronous signals stay with Python's main thread. */
    sigset_t old;
    pvrt_block_async_signals(&old);
    for (int i = 0; i < n && err == 0; i++) {
        t->w[i].t = t;
        t->w[i].id = i;
        err = pthread_create(&t->w[i].th, NULL, writer_main, &t->w[i]);
        t->w[i].created = err == 0;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err != 0) {
        int joined;
        Py_BEGIN_ALLOW_THREADS
        joined = stop_join(t, 5.0);
        Py_END_ALLOW_THREADS
        if (joined == n)
            destroy(t);
        return core_oserror_errno(err, "pthread_create");
    }
    /* Return only once every writer runs its own code: until then glibc keeps all its signals
     * blocked, SIGTRAP included, and the patcher refuses to write a site (an int3 would kill a
     * thread that blocks SIGTRAP). */
    int all_started = 0;
    Py_BEGIN_ALLOW_THREADS
    uint64_t deadline = now_ns() + 10000000000ull;
    for (int i = 0; i < n; i++)
        while (!__atomic_load_n(&t->w[i].started, __ATOMIC_ACQUIRE) && now_ns() < deadline) {
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
        }
    all_started = 1;
    for (int i = 0; i < n; i++)
        all_started &= __atomic_load_n(&t->w[i].started, __ATOMIC_ACQUIRE);
    Py_END_ALLOW_THREADS
    if (!all_started) {
        int joined;
        Py_BEGIN_ALLOW_THREADS
        joined = stop_join(t, 5.0);
        Py_END_ALLOW_THREADS
        if (joined == n)
            destroy(t);
        PyErr_SetString(PyExc_RuntimeError, "torture: writer threads did not start within 10 s");
        return NULL;
    }
    PyObject *cap = PyCapsule_New(t, CAPSULE, capsule_destructor);
    if (cap == NULL) {
        int joined;
        Py_BEGIN_ALLOW_THREADS
        joined = stop_join(t, 5.0);
        Py_END_ALLOW_THREADS
        if (joined == n)
            destroy(t);
    }
    return cap;
}

/* torture_set_kind(handle, kind): writers move to that lock at their next iteration. */
static PyObject *py_torture_set_kind(PyObject *self, PyObject *args)
{
    PyObject *cap;
    const char *kind;
    if (!PyArg_ParseTuple(args, "Os", &cap, &kind))
        return NULL;
    struct torture *t = get(cap);
    if (t == NULL)
        return NULL;
    int k = kind_index(kind);
    if (k < 0)
        return NULL;
    __atomic_store_n(&t->kind, (uint32_t)k, __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

static PyObject *u64_list(struct torture *t, size_t offset)
{
    PyObject *l = PyList_New(t->nwriters);
    for (int i = 0; l != NULL && i < t->nwriters; i++) {
        PyObject *v =
            PyLong_FromUnsignedLongLong(LOAD((uint64_t *)((char *)&t->w[i] + offset)));
        if (v == NULL) {
            Py_CLEAR(l);
            break;
        }
        PyList_SET_ITEM(l, i, v);
    }
    return l;
}

/* torture_read(handle) -> (writes per writer, fails per writer) */
static PyObject *py_torture_read(PyObject *self, PyObject *cap)
{
    struct torture *t = get(cap);
    if (t == NULL)
        return NULL;
    PyObject *w = u64_list(t, offsetof(struct writer, writes));
    PyObject *f = w ? u64_list(t, offsetof(struct writer, fails)) : NULL;
    if (f == NULL) {
        Py_XDECREF(w);
        return NULL;
    }
    return Py_BuildValue("(NN)", w, f);
}

/* torture_read_kind(handle, kind) -> acquisitions per writer on that kind's lock */
static PyObject *py_torture_read_kind(PyObject *self, PyObject *args)
{
    PyObject *cap;
    const char *kind;
    if (!PyArg_ParseTuple(args, "Os", &cap, &kind))
        return NULL;
    struct torture *t = get(cap);
    if (t == NULL)
        return NULL;
    int k = kind_index(kind);
    if (k < 0)
        return NULL;
    return u64_list(t, offsetof(struct writer, per_kind) + sizeof(uint64_t) * (size_t)k);
}

/* torture_epoch(handle) -> the new latency-sample epoch: samples taken from now on carry it. */
static PyObject *py_torture_epoch(PyObject *self, PyObject *cap)
{
    struct torture *t = get(cap);
    if (t == NULL)
        return NULL;
    uint32_t e = __atomic_add_fetch(&t->epoch, 1, __ATOMIC_RELAXED);
    return PyLong_FromUnsignedLong(e);
}

/* torture_latency(handle, epoch) -> acquire latencies in ns sampled in that epoch (the rings'
 * current contents; racy with the writers by a sample or two, which a percentile ignores). */
static PyObject *py_torture_latency(PyObject *self, PyObject *args)
{
    PyObject *cap;
    unsigned long epoch;
    if (!PyArg_ParseTuple(args, "Ok", &cap, &epoch))
        return NULL;
    struct torture *t = get(cap);
    if (t == NULL)
        return NULL;
    PyObject *l = PyList_New(0);
    for (int i = 0; l != NULL && i < t->nwriters; i++)
        for (int j = 0; j < LAT_RING; j++) {
            if (LOAD(&t->w[i].lat[j].epoch) != (uint32_t)epoch)
                continue;
            PyObject *v = PyLong_FromUnsignedLong(LOAD(&t->w[i].lat[j].ns));
            if (v == NULL || PyList_Append(l, v) < 0) {
                Py_XDECREF(v);
                Py_CLEAR(l);
                break;
            }
            Py_DECREF(v);
        }
    return l;
}

/* torture_state(handle) -> dict: the lock word, each writer's whereabouts, each kind's
 * counters (for state dumps; racy by nature, read while the writers run). */
static PyObject *py_torture_state(PyObject *self, PyObject *cap)
{
    struct torture *t = get(cap);
    if (t == NULL)
        return NULL;
    PyObject *writers = PyList_New(t->nwriters);
    for (int i = 0; writers != NULL && i < t->nwriters; i++) {
        struct writer *w = &t->w[i];
        uint32_t where = LOAD(&w->where), kind = LOAD(&w->kind);
        PyObject *d = Py_BuildValue("{s:i,s:s,s:s,s:K,s:K}", "id", i, "where",
                                    where_names[where < W_EXITED + 1 ? where : 0], "kind",
                                    kind_names[kind < K_N ? kind : 0], "writes",
                                    (unsigned long long)LOAD(&w->writes), "fails",
                                    (unsigned long long)LOAD(&w->fails));
        if (d == NULL) {
            Py_CLEAR(writers);
            break;
        }
        PyList_SET_ITEM(writers, i, d);
    }
    if (writers == NULL)
        return NULL;
    return Py_BuildValue("{s:I,s:K,s:s,s:N,s:I,s:I,s:I,s:I,s:i,s:K}", "lock_word",
                         __atomic_load_n(&t->qlock.val, __ATOMIC_RELAXED), "lock_addr",
                         (unsigned long long)(uintptr_t)&t->qlock, "kind",
                         kind_names[LOAD(&t->kind)], "writers", writers, "tas",
                         (unsigned)LOAD(&t->tas), "ticket_next", LOAD(&t->ticket.next),
                         "ticket_owner", LOAD(&t->ticket.owner), "futex_word", LOAD(&t->futex),
                         "mcs_tail_set", (int)(LOAD(&t->mcs_tail) != NULL), "futex_sleeps",
                         (unsigned long long)LOAD(&t->futex_sleeps));
}

/* torture_stop(handle, timeout) -> dict {joined, stuck: [writer ids], kinds: {kind: (writes,
 * counter)}}.  Waits at most timeout s for the writers; those that do not return are left
 * running (and their memory is never freed). */
static PyObject *py_torture_stop(PyObject *self, PyObject *args)
{
    PyObject *cap;
    double timeout;
    if (!PyArg_ParseTuple(args, "Od", &cap, &timeout))
        return NULL;
    struct torture *t = get(cap);
    if (t == NULL)
        return NULL;
    if (!(timeout >= 0.0 && timeout <= 3600.0)) {
        PyErr_Format(PyExc_ValueError, "torture_stop: timeout %g s is not in [0, 3600]", timeout);
        return NULL;
    }
    int joined;
    Py_BEGIN_ALLOW_THREADS
    joined = stop_join(t, timeout);
    Py_END_ALLOW_THREADS
    PyObject *stuck = PyList_New(0), *kinds = PyDict_New();
    if (stuck == NULL || kinds == NULL)
        goto fail;
    for (int i = 0; i < t->nwriters; i++)
        if (t->w[i].created) {
            PyObject *v = PyLong_FromLong(i);
            if (v == NULL || PyList_Append(stuck, v) < 0) {
                Py_XDECREF(v);
                goto fail;
            }
            Py_DECREF(v);
        }
    for (int k = 0; k < K_N; k++) {
        uint64_t writes = 0;
        for (int i = 0; i < t->nwriters; i++)
            writes += LOAD(&t->w[i].per_kind[k]);
        uint64_t counter = LOAD(&t->cs[k].counter);
        if (writes == 0 && counter == 0)
            continue;
        PyObject *v = Py_BuildValue("(KK)", (unsigned long long)writes,
                                    (unsigned long long)counter);
        if (v == NULL || PyDict_SetItemString(kinds, kind_names[k], v) < 0) {
            Py_XDECREF(v);
            goto fail;
        }
        Py_DECREF(v);
    }
    return Py_BuildValue("{s:O,s:N,s:N}", "joined", joined == t->nwriters ? Py_True : Py_False,
                         "stuck", stuck, "kinds", kinds);
fail:
    Py_XDECREF(stuck);
    Py_XDECREF(kinds);
    return NULL;
}

PyMethodDef core_torture_methods[] = {
    {"torture_kinds", py_torture_kinds, METH_NOARGS, "Lock kinds of the torture engine."},
    {"torture_start", py_torture_start, METH_VARARGS, "Start writer threads on a lock kind."},
    {"torture_set_kind", py_torture_set_kind, METH_VARARGS, "Move the writers to a lock kind."},
    {"torture_read", py_torture_read, METH_O, "(writes, fails) per writer."},
    {"torture_read_kind", py_torture_read_kind, METH_VARARGS, "Writes per writer on a kind."},
    {"torture_epoch", py_torture_epoch, METH_O, "Start a new latency-sample epoch."},
    {"torture_latency", py_torture_latency, METH_VARARGS, "Acquire latencies (ns) of an epoch."},
    {"torture_state", py_torture_state, METH_O, "Lock word and writer whereabouts."},
    {"torture_stop", py_torture_stop, METH_VARARGS, "Stop and join the writers (bounded)."},
    {NULL, NULL, 0, NULL},
};
