/*
 * traptest.c - threads that run sites in the situations ordinary programs create, for the tests
 * of the trap path (tests/test_trap.py): a signal handler installed with a full mask, a thread
 * that blocks every signal around the sites it runs, a first trap inside a handler that
 * interrupted malloc, the SIGTRAP handler on a small alternate stack.
 *
 * trapx_start(sites, threads, mode, signal_hz, altstack) starts the threads; trapx_stop(timeout)
 * joins them, bounded, and returns the counters.  Python patches meanwhile.  Every wait here is
 * bounded; a thread that does not stop is reported, not waited for.
 */
#define _GNU_SOURCE
#include "core.h"
#include "selftest_sites.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 64
#define MAX_SITES 64

enum {
    X_LOOP = 1,     /* threads run the sites in a loop */
    X_MALLOC = 2,   /* threads loop on malloc/free; sites run only in the signal handler */
    X_FULLMASK = 4, /* the signal handler is installed with sigfillset(&sa.sa_mask) */
    X_BLOCKALL = 8, /* threads block every signal around each pass over the sites */
};

struct xthread {
    pthread_t thread;
    _Atomic pid_t tid;
    _Atomic unsigned long passes;
    size_t alt_size;
    unsigned char *alt; /* the alternate stack, painted */
};

static struct {
    _Atomic int running;
    int mode, nthreads, nsites, started;
    double hz;
    size_t altstack;
    st_site_fn fn[MAX_SITES];
    int op[MAX_SITES];
    struct xthread t[MAX_THREADS];
    pthread_t signaller;
    int signaller_started;
    struct sigaction prev;
    _Atomic unsigned long handler_calls, failures, signals;
    _Atomic long first_bad;
} X;

#define PAINT 0xa5

static int run_site(int i, long salt)
{
    long a = salt & 0xfff, b = (salt >> 12) & 0xfff;
    long r = X.fn[i](a, b);
    if (!st_result_valid(X.op[i], a, b, r)) {
        long none = 0;
        atomic_compare_exchange_strong(&X.first_bad, &none, r ? r : -1);
        atomic_fetch_add(&X.failures, 1);
        return 0;
    }
    return 1;
}

static void usr2_handler(int sig, siginfo_t *si, void *uc)
{
    int saved = errno;
    unsigned long n = atomic_fetch_add_explicit(&X.handler_calls, 1, memory_order_relaxed);
    run_site((int)(n % (unsigned long)X.nsites), (long)n * 2654435761L);
    errno = saved;
}

static void *thread_main(void *arg)
{
    struct xthread *t = arg;
    if (t->alt != NULL) {
        stack_t ss = {.ss_sp = t->alt, .ss_size = t->alt_size, .ss_flags = 0};
        if (sigaltstack(&ss, NULL) != 0)
            atomic_fetch_add(&X.failures, 1);
    }
    atomic_store(&t->tid, (pid_t)syscall(SYS_gettid));
    long salt = (long)(t - X.t) * 7919;
    sigset_t all, saved;
    sigfillset(&all);
    while (atomic_load_explicit(&X.running, memory_order_relaxed)) {
        if (X.mode & X_MALLOC) {
            /* Sizes past the per-thread cache, so that malloc takes its arena lock. */
            for (int k = 0; k < 64; k++) {
                size_t sz = 1100 + (size_t)((salt++ * 2654435761u) % 60000);
                char *p = malloc(sz);
                if (p != NULL) {
                    p[0] = 1;
                    p[sz - 1] = 2;
                }
                free(p);
            }
        } else {
            if (X.mode & X_BLOCKALL)
                pthread_sigmask(SIG_SETMASK, &all, &saved);
            for (int i = 0; i < X.nsites; i++)
                run_site(i, salt++);
            if (X.mode & X_BLOCKALL)
                pthread_sigmask(SIG_SETMASK, &saved, NULL);
        }
        atomic_fetch_add_explicit(&t->passes, 1, memory_order_relaxed);
    }
    if (t->alt != NULL) {
        stack_t off = {.ss_flags = SS_DISABLE};
        sigaltstack(&off, NULL);
    }
    return NULL;
}

static void *signaller_main(void *arg)
{
    pid_t pid = getpid();
    long period_ns = (long)(1e9 / X.hz);
    struct timespec ts = {period_ns / 1000000000L, period_ns % 1000000000L};
    while (atomic_load(&X.running)) {
        for (int i = 0; i < X.started; i++) {
            pid_t t = atomic_load(&X.t[i].tid);
            if (t > 0 && syscall(SYS_tgkill, pid, t, SIGUSR2) == 0)
                atomic_fetch_add(&X.signals, 1);
        }
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static PyObject *stop_threads(double timeout, int *hung)
{
    atomic_store(&X.running, 0);
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += (time_t)timeout + 1;
    *hung = 0;
    Py_BEGIN_ALLOW_THREADS
    if (X.signaller_started && pthread_timedjoin_np(X.signaller, NULL, &dl) != 0)
        (*hung)++;
    for (int i = 0; i < X.started; i++)
        if (pthread_timedjoin_np(X.t[i].thread, NULL, &dl) != 0)
            (*hung)++;
    Py_END_ALLOW_THREADS
    return NULL;
}

/* trapx_start(sites, threads, mode, signal_hz=0, altstack=0): sites is a list of (function
 * address, selftest op index). */
static PyObject *py_trapx_start(PyObject *self, PyObject *args)
{
    PyObject *sites;
    int n, mode;
    double hz = 0;
    Py_ssize_t alt = 0;
    if (!PyArg_ParseTuple(args, "Oii|dn", &sites, &n, &mode, &hz, &alt))
        return NULL;
    if (atomic_load(&X.running)) {
        PyErr_SetString(PyExc_RuntimeError, "trapx: already running");
        return NULL;
    }
    Py_ssize_t ns = PySequence_Length(sites);
    if (ns < 1 || ns > MAX_SITES || n < 1 || n > MAX_THREADS || hz < 0 || alt < 0) {
        PyErr_Format(PyExc_ValueError, "trapx: 1..%d sites, 1..%d threads", MAX_SITES, MAX_THREADS);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < ns; i++) {
        unsigned long long fn;
        int op;
        PyObject *it = PySequence_GetItem(sites, i);
        if (it == NULL)
            return NULL;
        int ok = PyArg_ParseTuple(it, "Ki", &fn, &op);
        Py_DECREF(it);
        if (!ok)
            return NULL;
        X.fn[i] = (st_site_fn)(uintptr_t)fn;
        X.op[i] = op;
    }
    X.nsites = (int)ns;
    X.mode = mode;
    X.hz = hz;
    X.altstack = (size_t)alt;
    atomic_store(&X.handler_calls, 0);
    atomic_store(&X.failures, 0);
    atomic_store(&X.signals, 0);
    atomic_store(&X.first_bad, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = usr2_handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART | (alt ? SA_ONSTACK : 0);
    if (mode & X_FULLMASK)
        sigfillset(&sa.sa_mask);
    else
        sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR2, &sa, &X.prev) != 0)
        return core_oserror("sigaction");
    atomic_store(&X.running, 1);
    X.started = 0;
    X.signaller_started = 0;
    for (int i = 0; i < n; i++) {
        struct xthread *t = &X.t[i];
        atomic_store(&t->tid, 0);
        atomic_store(&t->passes, 0);
        t->alt_size = (size_t)alt;
        t->alt = NULL;
        if (alt) {
            t->alt = malloc((size_t)alt);
            if (t->alt == NULL)
                goto fail_nomem;
            memset(t->alt, PAINT, (size_t)alt);
        }
        int err = pthread_create(&t->thread, NULL, thread_main, t);
        if (err != 0) {
            int hung;
            stop_threads(5, &hung);
            sigaction(SIGUSR2, &X.prev, NULL);
            return core_oserror_errno(err, "pthread_create");
        }
        X.started++;
    }
    if (hz > 0) {
        int err = pthread_create(&X.signaller, NULL, signaller_main, NULL);
        if (err != 0) {
            int hung;
            stop_threads(5, &hung);
            sigaction(SIGUSR2, &X.prev, NULL);
            return core_oserror_errno(err, "pthread_create");
        }
        X.signaller_started = 1;
    }
    Py_RETURN_NONE;
fail_nomem : {
    int hung;
    stop_threads(5, &hung);
    sigaction(SIGUSR2, &X.prev, NULL);
    return PyErr_NoMemory();
}
}

/* trapx_stop(timeout) -> dict: passes, handler_calls, signals, failures, first_bad, hung,
 * altstack_used (the most any thread's alternate stack was written, in bytes). */
static PyObject *py_trapx_stop(PyObject *self, PyObject *args)
{
    double timeout = 10;
    if (!PyArg_ParseTuple(args, "|d", &timeout))
        return NULL;
    if (!atomic_load(&X.running)) {
        PyErr_SetString(PyExc_RuntimeError, "trapx: not running");
        return NULL;
    }
    int hung;
    stop_threads(timeout, &hung);
    unsigned long passes = 0;
    size_t used = 0;
    for (int i = 0; i < X.started; i++) {
        passes += atomic_load(&X.t[i].passes);
        if (X.t[i].alt != NULL) {
            size_t k = 0;
            while (k < X.t[i].alt_size && X.t[i].alt[k] == PAINT)
                k++;
            if (X.t[i].alt_size - k > used)
                used = X.t[i].alt_size - k;
            if (!hung)
                free(X.t[i].alt);
            X.t[i].alt = NULL;
        }
    }
    if (!hung) {
        /* Signals still queued would find the default action: keep a handler that ignores. */
        struct sigaction ign;
        memset(&ign, 0, sizeof(ign));
        ign.sa_handler = SIG_IGN;
        sigaction(SIGUSR2, &ign, NULL);
    }
    return Py_BuildValue("{s:k,s:k,s:k,s:k,s:l,s:i,s:n}", "passes", passes, "handler_calls",
                         atomic_load(&X.handler_calls), "signals", atomic_load(&X.signals),
                         "failures", atomic_load(&X.failures), "first_bad",
                         atomic_load(&X.first_bad), "hung", hung, "altstack_used",
                         (Py_ssize_t)used);
}

/* trapx_progress() -> (passes, handler_calls) so far */
static PyObject *py_trapx_progress(PyObject *self, PyObject *unused)
{
    unsigned long passes = 0;
    for (int i = 0; i < X.started; i++)
        passes += atomic_load(&X.t[i].passes);
    return Py_BuildValue("(kk)", passes, atomic_load(&X.handler_calls));
}

static PyObject *py_minsigstksz(PyObject *self, PyObject *unused)
{
    return PyLong_FromLong(sysconf(_SC_MINSIGSTKSZ));
}

PyMethodDef core_traptest_methods[] = {
    {"trapx_start", py_trapx_start, METH_VARARGS, "Start threads that run sites (tests)."},
    {"trapx_stop", py_trapx_stop, METH_VARARGS, "Stop them, bounded; counters."},
    {"trapx_progress", py_trapx_progress, METH_NOARGS, "(passes, handler calls) so far."},
    {"minsigstksz", py_minsigstksz, METH_NOARGS, "sysconf(_SC_MINSIGSTKSZ)."},
    {NULL, NULL, 0, NULL},
};
