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
 * lock.  Here the trapping handler finishes the site itself and never waits for the patcher.
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
    /* initial-exec: no __tls_get_addr (malloc) on the first signal of a thread. */
    static _Thread_local unsigned long n __attribute__((tls_model("initial-exec")));
    atomic_fetch_add_explicit(&st.signals, 1, memory_order_relaxed);
    int level = st.nmi_level;
    if (level >= 1) {
        int take = level >= 2;
        if (take) {
            /* The lock only handlers take.  SIGUSR1 is blocked while this handler runs, so it
             * cannot recurse on this thread; other threads' handlers spin.  The holder may trap
             * on a site under patch: it completes the site itself, so the spin ends. */
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
        int i = (int)(n++ % (unsigned long)st_nsites);
        if (!run_site(i, (long)n * 2654435761L))
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

/* selftest_start(threads, nmi_level, signal_hz, patcher_tid) */
static PyObject *py_selftest_start(PyObject *self, PyObject *args)
{
    int n, level, ptid;
    double hz;
    if (!PyArg_ParseTuple(args, "iidi", &n, &level, &hz, &ptid))
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
    atomic_store(&st.patcher_tid, ptid);
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
    /* The handler's mask leaves SIGTRAP open: a handler that traps with SIGTRAP blocked is
     * killed by the kernel. */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = usr1_handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
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
    st.injector_started = 0;
    if (hz > 0) {
        int err = pthread_create(&st.injector, NULL, injector_main, NULL);
        if (err != 0) {
            atomic_store(&st.running, 0);
            for (int j = 0; j < n; j++)
                pthread_join(st.ex[j].thread, NULL);
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
    return Py_BuildValue("{s:k,s:k,s:k,s:k,s:k,s:k,s:i,s:l,s:N}", "site_calls", calls,
                         "executor_failures", failures, "signals", atomic_load(&st.signals),
                         "handler_calls", atomic_load(&st.handler_calls), "handler_failures",
                         atomic_load(&st.handler_failures), "handler_lock_taken",
                         atomic_load(&st.lock_acquired), "first_failure_site",
                         atomic_load(&st.first_failure_site), "first_failure_value",
                         atomic_load(&st.first_failure_value), "threads", per);
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
    {NULL, NULL, 0, NULL},
};
