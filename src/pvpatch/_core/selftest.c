/*
 * selftest.c - the loops of `pvpatch selftest` (the RFC's pv_selftest, in user space).
 *
 * Executors call every selftest site in a tight loop and check each result belongs to some
 * variant; an injector sends SIGUSR1 to every executor and to the patching thread at a set rate;
 * the handler (our NMI) does more or less according to the level:
 *
 *   0  count the signal
 *   1  also call a site and check its result
 *   2  also take and release a lock shared only by handlers, around that call
 *   3  also hold that lock for a moment, so that handlers on other threads contend for it
 *
 * Level 2 and 3 are the deadlock the RFC fought with self-NMIs and stop_machine: a handler that
 * holds the lock may trap on a site under patch while the patcher's own handler spins for the
 * lock.  Here the trapping handler never waits for the patcher: it runs the site itself.
 *
 * Two options put the trap path where ordinary programs put it (the idioms that used to kill it):
 *
 *   sigblock_thread   one more thread runs every site with every signal blocked
 *                     (pthread_sigmask(SIG_BLOCK, all) ... sites ... restore, in a loop), as a
 *                     short critical section that must not be interrupted does;
 *   fullmask_handler  the SIGUSR1 handler is installed with sigfillset(&sa.sa_mask), so every
 *                     site call in it runs with every signal blocked.
 *
 * A thread that reaches an int3 with SIGTRAP blocked is killed by the kernel; pvpatch keeps
 * SIGTRAP out of masks set through the C library (masks.c), so these threads ask for every
 * signal and get every one but SIGTRAP.  The handler counts the runs with every other signal
 * blocked and those with SIGTRAP blocked.  The results are checked like the executors'.
 *
 * The patching itself is driven from Python (runtime_patch); this file only runs threads and
 * counts.  Every wait here is bounded by a stop flag that Python sets.
 */
#define _GNU_SOURCE
#include "core.h"
#include "selftest_sites.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_EXECUTORS 64

struct executor {
    pthread_t thread;
    _Atomic pid_t tid;
    _Atomic unsigned long calls;
    _Atomic unsigned long failures;
};

static struct {
    _Atomic int running;
    int nexec;
    int nmi_level;
    int sigblock_thread, fullmask_handler;
    pthread_t blocker;
    int blocker_started;
    _Atomic pid_t blocker_tid;
    _Atomic unsigned long blocker_calls, blocker_failures, blocker_passes;
    _Atomic unsigned long handler_seq, handler_masked, handler_fullmask;
    double signal_hz;
    pthread_t injector;
    int injector_started;
    _Atomic pid_t patcher_tid;
    struct executor ex[MAX_EXECUTORS];
    struct sigaction prev_usr1;
    _Atomic unsigned long signals, handler_calls, handler_failures, lock_acquired;
    _Atomic int first_failure_site;
    _Atomic long first_failure_value;
    _Atomic int handler_lock; /* shared only by handlers */
} st = {.first_failure_site = -1};

static pid_t gettid_(void) { return (pid_t)syscall(SYS_gettid); }

static void record_failure(int site, long value)
{
    int none = -1;
    if (atomic_compare_exchange_strong(&st.first_failure_site, &none, site))
        atomic_store(&st.first_failure_value, value);
}

static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

static void spin_ns(long ns)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do {
        cpu_relax();
        clock_gettime(CLOCK_MONOTONIC, &b);
    } while ((b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec) < ns);
}

/* Run site i once with arguments derived from `salt` and check the result. */
static int run_site(int i, long salt)
{
    long a = salt & 0xffff, b = (salt >> 16) & 0xffff;
    long r = st_sites[i].fn(a, b);
    if (!st_result_valid(st_sites[i].op, a, b, r)) {
        record_failure(i, r);
        return 0;
    }
    return 1;
}

static void usr1_handler(int sig, siginfo_t *si, void *uc)
{
    int saved = errno;
    /* A global sequence, not a _Thread_local: the first access to a dlopen'ed module's TLS
     * goes through __tls_get_addr, which may call malloc, and this handler may have
     * interrupted malloc. */
    unsigned long n = atomic_fetch_add_explicit(&st.handler_seq, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&st.signals, 1, memory_order_relaxed);
    /* Count the runs with every other signal blocked (fullmask_handler: all of them), and those
     * with SIGTRAP blocked too (none where pvpatch keeps SIGTRAP out of masks). */
    sigset_t cur;
    if (pthread_sigmask(SIG_BLOCK, NULL, &cur) == 0) {
        if (sigismember(&cur, SIGINT) == 1 && sigismember(&cur, SIGTERM) == 1 &&
            sigismember(&cur, SIGUSR2) == 1 && sigismember(&cur, SIGALRM) == 1)
            atomic_fetch_add_explicit(&st.handler_fullmask, 1, memory_order_relaxed);
        if (sigismember(&cur, SIGTRAP) == 1)
            atomic_fetch_add_explicit(&st.handler_masked, 1, memory_order_relaxed);
    }
    int level = st.nmi_level;
    if (level >= 1) {
        int take = level >= 2;
        if (take) {
            /* The lock only handlers take.  SIGUSR1 is blocked while this handler runs, so it
             * cannot recurse on this thread; other threads' handlers spin.  The holder may trap
             * on a site under patch: its trap handler never waits, so the spin ends. */
            unsigned spins = 0;
            int expected = 0;
            while (!atomic_compare_exchange_weak_explicit(&st.handler_lock, &expected, 1,
                                                          memory_order_acquire,
                                                          memory_order_relaxed)) {
                expected = 0;
                if (++spins % 128 == 0)
                    sched_yield(); /* the holder may be preempted: 2 CPUs, more threads */
                else
                    cpu_relax();
            }
            atomic_fetch_add_explicit(&st.lock_acquired, 1, memory_order_relaxed);
        }
        int i = (int)(n % (unsigned long)st_nsites);
        if (!run_site(i, (long)(n + 1) * 2654435761L))
            atomic_fetch_add(&st.handler_failures, 1);
        atomic_fetch_add_explicit(&st.handler_calls, 1, memory_order_relaxed);
        if (level >= 3)
            spin_ns(2000);
        if (take)
            atomic_store_explicit(&st.handler_lock, 0, memory_order_release);
    }
    errno = saved;
}

static void *executor_main(void *arg)
{
    struct executor *e = arg;
    atomic_store(&e->tid, gettid_());
    long salt = (long)(e - st.ex) * 7919;
    while (atomic_load_explicit(&st.running, memory_order_relaxed)) {
        for (int i = 0; i < st_nsites; i++) {
            if (!run_site(i, salt++))
                atomic_fetch_add_explicit(&e->failures, 1, memory_order_relaxed);
        }
        atomic_fetch_add_explicit(&e->calls, (unsigned long)st_nsites, memory_order_relaxed);
    }
    return NULL;
}

/* The thread that blocks every signal around its site calls (the sigblock_thread option). */
static void *blocker_main(void *arg)
{
    (void)arg;
    atomic_store(&st.blocker_tid, gettid_());
    sigset_t all, old;
    sigfillset(&all);
    long salt = 104729;
    while (atomic_load_explicit(&st.running, memory_order_relaxed)) {
        unsigned long fails = 0;
        pthread_sigmask(SIG_BLOCK, &all, &old);
        for (int i = 0; i < st_nsites; i++)
            fails += !run_site(i, salt++);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (fails)
            atomic_fetch_add_explicit(&st.blocker_failures, fails, memory_order_relaxed);
        atomic_fetch_add_explicit(&st.blocker_calls, (unsigned long)st_nsites,
                                  memory_order_relaxed);
        atomic_fetch_add_explicit(&st.blocker_passes, 1, memory_order_relaxed);
    }
    return NULL;
}

static void *injector_main(void *arg)
{
    pid_t pid = getpid();
    long period_ns = (long)(1e9 / st.signal_hz);
    struct timespec ts = {period_ns / 1000000000L, period_ns % 1000000000L};
    while (atomic_load(&st.running)) {
        for (int i = 0; i < st.nexec; i++) {
            pid_t t = atomic_load(&st.ex[i].tid);
            if (t > 0)
                syscall(SYS_tgkill, pid, t, SIGUSR1);
        }
        pid_t p = atomic_load(&st.patcher_tid);
        if (p > 0)
            syscall(SYS_tgkill, pid, p, SIGUSR1);
        nanosleep(&ts, NULL);
    }
    return NULL;
}

/* selftest_start(threads, nmi_level, signal_hz, patcher_tid, sigblock_thread=False,
 *                fullmask_handler=False) */
static PyObject *py_selftest_start(PyObject *self, PyObject *args)
{
    int n, level, ptid, sigblock = 0, fullmask = 0;
    double hz;
    if (!PyArg_ParseTuple(args, "iidi|pp", &n, &level, &hz, &ptid, &sigblock, &fullmask))
        return NULL;
    if (n < 1 || n > MAX_EXECUTORS || level < 0 || level > 3 || hz < 0) {
        PyErr_Format(PyExc_ValueError, "selftest: threads 1..%d, nmi level 0..3, rate >= 0",
                     MAX_EXECUTORS);
        return NULL;
    }
    if (atomic_load(&st.running)) {
        PyErr_SetString(PyExc_RuntimeError, "selftest: already running");
        return NULL;
    }
    st.nexec = n;
    st.nmi_level = level;
    st.signal_hz = hz;
    st.sigblock_thread = sigblock;
    st.fullmask_handler = fullmask;
    atomic_store(&st.patcher_tid, ptid);
    atomic_store(&st.blocker_tid, 0);
    atomic_store(&st.blocker_calls, 0);
    atomic_store(&st.blocker_failures, 0);
    atomic_store(&st.blocker_passes, 0);
    atomic_store(&st.handler_seq, 0);
    atomic_store(&st.handler_masked, 0);
    atomic_store(&st.handler_fullmask, 0);
    atomic_store(&st.signals, 0);
    atomic_store(&st.handler_calls, 0);
    atomic_store(&st.handler_failures, 0);
    atomic_store(&st.lock_acquired, 0);
    atomic_store(&st.first_failure_site, -1);
    for (int i = 0; i < n; i++) {
        atomic_store(&st.ex[i].tid, 0);
        atomic_store(&st.ex[i].calls, 0);
        atomic_store(&st.ex[i].failures, 0);
    }
    /* By default the handler's mask leaves SIGTRAP open; fullmask_handler blocks everything,
     * as a handler written with sigfillset(&sa.sa_mask) does. */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = usr1_handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    if (fullmask)
        sigfillset(&sa.sa_mask);
    else
        sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, &st.prev_usr1) != 0)
        return core_oserror("sigaction");
    atomic_store(&st.running, 1);
    for (int i = 0; i < n; i++) {
        int err = pthread_create(&st.ex[i].thread, NULL, executor_main, &st.ex[i]);
        if (err != 0) {
            atomic_store(&st.running, 0);
            for (int j = 0; j < i; j++)
                pthread_join(st.ex[j].thread, NULL);
            sigaction(SIGUSR1, &st.prev_usr1, NULL);
            return core_oserror_errno(err, "pthread_create");
        }
    }
    st.blocker_started = 0;
    if (sigblock) {
        int err = pthread_create(&st.blocker, NULL, blocker_main, NULL);
        if (err != 0) {
            atomic_store(&st.running, 0);
            for (int j = 0; j < n; j++)
                pthread_join(st.ex[j].thread, NULL);
            sigaction(SIGUSR1, &st.prev_usr1, NULL);
            return core_oserror_errno(err, "pthread_create");
        }
        st.blocker_started = 1;
    }
    st.injector_started = 0;
    if (hz > 0) {
        int err = pthread_create(&st.injector, NULL, injector_main, NULL);
        if (err != 0) {
            atomic_store(&st.running, 0);
            for (int j = 0; j < n; j++)
                pthread_join(st.ex[j].thread, NULL);
            if (st.blocker_started)
                pthread_join(st.blocker, NULL);
            sigaction(SIGUSR1, &st.prev_usr1, NULL);
            return core_oserror_errno(err, "pthread_create");
        }
        st.injector_started = 1;
    }
    Py_RETURN_NONE;
}

static PyObject *stats(void)
{
    unsigned long calls = 0, failures = 0;
    PyObject *per = PyList_New(st.nexec);
    if (per == NULL)
        return NULL;
    for (int i = 0; i < st.nexec; i++) {
        unsigned long c = atomic_load(&st.ex[i].calls), f = atomic_load(&st.ex[i].failures);
        calls += c;
        failures += f;
        PyList_SET_ITEM(per, i, Py_BuildValue("(ikk)", (int)atomic_load(&st.ex[i].tid), c, f));
    }
    return Py_BuildValue("{s:k,s:k,s:k,s:k,s:k,s:k,s:i,s:l,s:N,s:i,s:k,s:k,s:k,s:k,s:k}", "site_calls", calls,
                         "executor_failures", failures, "signals", atomic_load(&st.signals),
                         "handler_calls", atomic_load(&st.handler_calls), "handler_failures",
                         atomic_load(&st.handler_failures), "handler_lock_taken",
                         atomic_load(&st.lock_acquired), "first_failure_site",
                         atomic_load(&st.first_failure_site), "first_failure_value",
                         atomic_load(&st.first_failure_value), "threads", per,
                         "blocker_tid", (int)atomic_load(&st.blocker_tid), "blocker_calls",
                         atomic_load(&st.blocker_calls), "blocker_failures",
                         atomic_load(&st.blocker_failures), "blocker_passes",
                         atomic_load(&st.blocker_passes), "handler_sigtrap_blocked",
                         atomic_load(&st.handler_masked), "handler_fullmask",
                         atomic_load(&st.handler_fullmask));
}

static PyObject *py_selftest_stats(PyObject *self, PyObject *unused) { return stats(); }

/* selftest_stop(timeout) -> stats: clear the flag, join (threads leave their loop within one
 * pass over the sites), restore SIGUSR1. */
static PyObject *py_selftest_stop(PyObject *self, PyObject *args)
{
    double timeout = 10.0;
    if (!PyArg_ParseTuple(args, "|d", &timeout))
        return NULL;
    if (!atomic_load(&st.running)) {
        PyErr_SetString(PyExc_RuntimeError, "selftest: not running");
        return NULL;
    }
    atomic_store(&st.patcher_tid, 0);
    atomic_store(&st.running, 0);
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += (time_t)timeout;
    if (st.injector_started)
        err = pthread_timedjoin_np(st.injector, NULL, &dl);
    for (int i = 0; i < st.nexec && err == 0; i++)
        err = pthread_timedjoin_np(st.ex[i].thread, NULL, &dl);
    if (st.blocker_started && err == 0)
        err = pthread_timedjoin_np(st.blocker, NULL, &dl);
    Py_END_ALLOW_THREADS
    if (err != 0)
        return core_oserror_errno(err, "pthread_timedjoin_np");
    /* Signals already queued may still arrive; keep handling them rather than letting SIGUSR1's
     * default action kill the process. */
    struct sigaction ign;
    memset(&ign, 0, sizeof(ign));
    ign.sa_handler = SIG_IGN;
    sigaction(SIGUSR1, st.prev_usr1.sa_handler == SIG_DFL ? &ign : &st.prev_usr1, NULL);
    return stats();
}

/* ---- bench threads (`pvpatch bench patch --threads N`) ------------------------------------
 * Busy threads call the functions around a set of `selftest.value` sites round robin and check
 * every result; idle threads only exist (they sleep until told to stop).  Every wait is bounded
 * by the stop flag. */
#define MAX_BENCH_THREADS 256

static struct {
    _Atomic int running;
    int nbusy, nidle;
    uintptr_t *fns;
    size_t nfns;
    pthread_t threads[MAX_BENCH_THREADS];
    int started;
    _Atomic unsigned long calls, failures;
    _Atomic int alive; /* threads inside their function: glibc has restored their mask */
} bt;

static void *bench_busy_main(void *arg)
{
    size_t k = (size_t)(uintptr_t)arg;
    unsigned long calls = 0, failures = 0;
    atomic_fetch_add(&bt.alive, 1);
    while (atomic_load_explicit(&bt.running, memory_order_relaxed)) {
        for (int j = 0; j < 64; j++, k++) {
            st_site_fn fn = (st_site_fn)bt.fns[k % bt.nfns];
            long r = fn(0, 0);
            failures += !st_result_valid(PVPATCH_OP_ID(selftest, value), 0, 0, r);
        }
        calls += 64;
    }
    atomic_fetch_add(&bt.calls, calls);
    atomic_fetch_add(&bt.failures, failures);
    return NULL;
}

static void *bench_idle_main(void *arg)
{
    (void)arg;
    struct timespec ts = {0, 5 * 1000 * 1000};
    atomic_fetch_add(&bt.alive, 1);
    while (atomic_load(&bt.running))
        nanosleep(&ts, NULL);
    return NULL;
}

/* Join every started thread within 10 s; 0 or the error of the first join that failed. */
static int bench_join_all(void)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 10;
    int err = 0;
    while (bt.started > 0 && err == 0) {
        err = pthread_timedjoin_np(bt.threads[bt.started - 1], NULL, &dl);
        if (err == 0)
            bt.started--;
    }
    return err;
}

/* bench_threads_start(functions: sequence of addresses, busy, idle) */
static PyObject *py_bench_threads_start(PyObject *self, PyObject *args)
{
    PyObject *seq;
    int busy, idle;
    if (!PyArg_ParseTuple(args, "Oii", &seq, &busy, &idle))
        return NULL;
    if (busy < 0 || idle < 0 || busy + idle > MAX_BENCH_THREADS) {
        PyErr_Format(PyExc_ValueError, "bench threads: busy and idle >= 0, at most %d in all",
                     MAX_BENCH_THREADS);
        return NULL;
    }
    if (atomic_load(&bt.running) || bt.started > 0) {
        PyErr_SetString(PyExc_RuntimeError, "bench threads: already running");
        return NULL;
    }
    PyObject *fast = PySequence_Fast(seq, "bench threads: functions must be a sequence");
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (busy > 0 && n == 0) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "bench threads: busy threads need functions");
        return NULL;
    }
    uintptr_t *fns = PyMem_RawMalloc(sizeof(uintptr_t) * (size_t)(n ? n : 1));
    if (fns == NULL) {
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        fns[i] = (uintptr_t)PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(fast, i));
        if (PyErr_Occurred()) {
            Py_DECREF(fast);
            PyMem_RawFree(fns);
            return NULL;
        }
    }
    Py_DECREF(fast);
    PyMem_RawFree(bt.fns);
    bt.fns = fns;
    bt.nfns = (size_t)n;
    bt.nbusy = busy;
    bt.nidle = idle;
    atomic_store(&bt.calls, 0);
    atomic_store(&bt.failures, 0);
    atomic_store(&bt.alive, 0);
    atomic_store(&bt.running, 1);
    bt.started = 0;
    for (int i = 0; i < busy + idle; i++) {
        int err = pthread_create(&bt.threads[i], NULL, i < busy ? bench_busy_main : bench_idle_main,
                                 (void *)(uintptr_t)((size_t)i * 7919));
        if (err != 0) {
            atomic_store(&bt.running, 0);
            bench_join_all();
            return core_oserror_errno(err, "pthread_create");
        }
        bt.started++;
    }
    /* Return once every thread runs its function (a thread being born blocks every signal for
     * a moment; the measurement is of a process whose threads exist), within 10 s. */
    int alive;
    Py_BEGIN_ALLOW_THREADS
    struct timespec ms = {0, 1000 * 1000};
    for (int i = 0; i < 10000 && (alive = atomic_load(&bt.alive)) < busy + idle; i++)
        nanosleep(&ms, NULL);
    Py_END_ALLOW_THREADS
    if (alive < busy + idle) {
        atomic_store(&bt.running, 0);
        bench_join_all();
        PyErr_Format(PyExc_RuntimeError, "bench threads: %d of %d started within 10 s", alive,
                     busy + idle);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* bench_threads_stop() -> {"calls", "failures"}: busy threads leave within 64 calls, idle ones
 * within 5 ms; a thread that does not within 10 s is an OSError(ETIMEDOUT). */
static PyObject *py_bench_threads_stop(PyObject *self, PyObject *unused)
{
    if (!atomic_load(&bt.running) && bt.started == 0) {
        PyErr_SetString(PyExc_RuntimeError, "bench threads: not running");
        return NULL;
    }
    atomic_store(&bt.running, 0);
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = bench_join_all();
    Py_END_ALLOW_THREADS
    if (err != 0) {
        /* bt.started still counts the threads not joined: a later stop retries. */
        return core_oserror_errno(err, "pthread_timedjoin_np");
    }
    return Py_BuildValue("{s:k,s:k}", "calls", atomic_load(&bt.calls), "failures",
                         atomic_load(&bt.failures));
}

/* The test hook: run a runtime site, from the patcher, right after it wrote its int3s. */
static long hook_site(void) { return st_sites[0].fn(1, 2); }

static PyObject *py_selftest_hook(PyObject *self, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong((uintptr_t)hook_site);
}

static PyObject *py_gettid(PyObject *self, PyObject *unused) { return PyLong_FromLong(gettid_()); }

PyMethodDef core_selftest_methods[] = {
    {"selftest_start", py_selftest_start, METH_VARARGS, "Start executors and the injector."},
    {"selftest_stats", py_selftest_stats, METH_NOARGS, "Counters so far."},
    {"selftest_stop", py_selftest_stop, METH_VARARGS, "Stop and join; final counters."},
    {"selftest_hook", py_selftest_hook, METH_NOARGS, "Address of the trap-on-patcher hook."},
    {"gettid", py_gettid, METH_NOARGS, "The calling thread's tid."},
    {"bench_threads_start", py_bench_threads_start, METH_VARARGS,
     "Start busy threads calling the given site functions, and idle threads."},
    {"bench_threads_stop", py_bench_threads_stop, METH_NOARGS, "Stop and join; call counts."},
    {NULL, NULL, 0, NULL},
};
