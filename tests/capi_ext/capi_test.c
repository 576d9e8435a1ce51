/*
 * capi_test.c - an extension that uses pvpatch's C API (include/pvpatch.h, "the C API") and
 * nothing else of pvpatch: switch groups, read the current variant, lock with pvpatch_lock_t.
 * Built with gcc by tests/test_capi.py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "pvpatch.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* switch(group, variant): with the GIL held, an error propagates as the exception. */
static PyObject *py_switch(PyObject *self, PyObject *args)
{
    const char *g, *v;
    if (!PyArg_ParseTuple(args, "ss", &g, &v))
        return NULL;
    if (pvpatch_runtime_patch(g, v) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* switch_null(which): pvpatch_runtime_patch with a NULL group (0) or variant (1). */
static PyObject *py_switch_null(PyObject *self, PyObject *arg)
{
    long which = PyLong_AsLong(arg);
    if (pvpatch_runtime_patch(which == 0 ? NULL : "selftest", which == 0 ? "pv" : NULL) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* switch_nogil(group, variant) -> (rc, errno): the GIL released around the call. */
static PyObject *py_switch_nogil(PyObject *self, PyObject *args)
{
    const char *g, *v;
    if (!PyArg_ParseTuple(args, "ss", &g, &v))
        return NULL;
    int rc, err = 0;
    Py_BEGIN_ALLOW_THREADS
    errno = 0;
    rc = pvpatch_runtime_patch(g, v);
    err = rc < 0 ? errno : 0;
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(ii)", rc, err);
}

struct thread_call {
    const char *g, *v;
    int rc, err;
    char cur[32];
    int cur_rc;
};

static void *switch_thread(void *p)
{
    struct thread_call *c = p;
    errno = 0;
    c->rc = pvpatch_runtime_patch(c->g, c->v);
    c->err = c->rc < 0 ? errno : 0;
    c->cur_rc = pvpatch_current(c->g, c->cur, sizeof(c->cur));
    return NULL;
}

/* switch_from_thread(group, variant) -> (rc, errno, current or None): from a pthread that
 * Python never saw. */
static PyObject *py_switch_from_thread(PyObject *self, PyObject *args)
{
    struct thread_call c = {0};
    if (!PyArg_ParseTuple(args, "ss", &c.g, &c.v))
        return NULL;
    pthread_t t;
    int e;
    Py_BEGIN_ALLOW_THREADS
    e = pthread_create(&t, NULL, switch_thread, &c);
    if (e == 0)
        pthread_join(t, NULL);
    Py_END_ALLOW_THREADS
    if (e != 0) {
        errno = e;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (c.cur_rc < 0)
        return Py_BuildValue("(iiO)", c.rc, c.err, Py_None);
    return Py_BuildValue("(iis)", c.rc, c.err, c.cur);
}

/* current(group, size=64) -> str */
static PyObject *py_current(PyObject *self, PyObject *args)
{
    const char *g;
    Py_ssize_t size = 64;
    if (!PyArg_ParseTuple(args, "s|n", &g, &size))
        return NULL;
    char buf[256];
    if (size < 0 || size > (Py_ssize_t)sizeof(buf))
        return PyErr_Format(PyExc_ValueError, "size %zd", size);
    if (pvpatch_current(g, buf, (size_t)size) < 0)
        return NULL;
    return PyUnicode_FromString(buf);
}

/* ---- the lock --------------------------------------------------------------------------- */

static pvpatch_lock_t the_lock = PVPATCH_LOCK_INIT;
static volatile long counter;
static int inside, stop;
static long failures, trylocks;

struct worker {
    pthread_t t;
    long iters;
    int done;
};

static void *worker(void *p)
{
    struct worker *w = p;
    long i;
    for (i = 0; !__atomic_load_n(&stop, __ATOMIC_RELAXED); i++) {
        if ((i & 15) == 0 && pvpatch_trylock(&the_lock))
            __atomic_fetch_add(&trylocks, 1, __ATOMIC_RELAXED);
        else
            pvpatch_lock(&the_lock);
        /* Mutual exclusion: nobody else is inside, and nobody comes in while we are. */
        if (__atomic_fetch_add(&inside, 1, __ATOMIC_RELAXED) != 0)
            __atomic_fetch_add(&failures, 1, __ATOMIC_RELAXED);
        counter = counter + 1;
        for (int k = 0; k < 20; k++)
            __builtin_ia32_pause();
        if (__atomic_fetch_sub(&inside, 1, __ATOMIC_RELAXED) != 1)
            __atomic_fetch_add(&failures, 1, __ATOMIC_RELAXED);
        pvpatch_unlock(&the_lock);
        __atomic_store_n(&w->iters, i + 1, __ATOMIC_RELAXED); /* progress, for the switcher */
    }
    w->iters = i;
    __atomic_store_n(&w->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* lock_stress(threads, switches, min_iters, variants, timeout) -> dict.  `threads` pthreads
 * lock the_lock in a loop (every 16th time through trylock) while this thread, GIL released,
 * switches the `lock` group through `variants` in turn from C, at least `switches` times and
 * until every worker has locked `min_iters` times; then the workers stop.
 * Every wait is bounded: past `timeout` s the workers are told to stop and the result says
 * hung. */
static PyObject *py_lock_stress(PyObject *self, PyObject *args)
{
    int nthreads;
    long nswitches, min_iters;
    PyObject *variants;
    double timeout;
    if (!PyArg_ParseTuple(args, "illO!d", &nthreads, &nswitches, &min_iters, &PyTuple_Type,
                          &variants, &timeout))
        return NULL;
    Py_ssize_t nv = PyTuple_GET_SIZE(variants);
    if (nthreads < 1 || nthreads > 64 || nv < 1 || nv > 8)
        return PyErr_Format(PyExc_ValueError, "1..64 threads, 1..8 variants");
    const char *names[8];
    for (Py_ssize_t i = 0; i < nv; i++)
        if ((names[i] = PyUnicode_AsUTF8(PyTuple_GET_ITEM(variants, i))) == NULL)
            return NULL;
    struct worker ws[64];
    memset(ws, 0, sizeof(ws));
    counter = 0;
    failures = trylocks = 0;
    stop = 0;
    long switches = 0, switch_errors = 0, started = 0;
    int first_err = 0, hung = 0;
    long total = 0;
    double t0 = now();
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < nthreads; i++) {
        if (pthread_create(&ws[i].t, NULL, worker, &ws[i]) != 0)
            break;
        started++;
    }
    /* Switch `nswitches` times, and on until every worker has locked `min_iters` times, so
     * that the switches overlap the workers' locking whatever the scheduler does. */
    for (;;) {
        long least = -1;
        for (int i = 0; i < started; i++) {
            long it = __atomic_load_n(&ws[i].iters, __ATOMIC_RELAXED);
            if (least < 0 || it < least)
                least = it;
        }
        if (switches >= nswitches && least >= min_iters)
            break;
        if (now() - t0 > timeout) {
            hung = 1;
            break;
        }
        if (pvpatch_runtime_patch("lock", names[switches % nv]) < 0) {
            switch_errors++;
            if (!first_err)
                first_err = errno;
        }
        switches++;
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    /* Stopped workers leave within one critical section; joined only if they did. */
    double t1 = now();
    for (int i = 0; i < started; i++) {
        while (!__atomic_load_n(&ws[i].done, __ATOMIC_ACQUIRE) && now() - t1 < 5.0)
            usleep(1000);
        if (__atomic_load_n(&ws[i].done, __ATOMIC_ACQUIRE))
            pthread_join(ws[i].t, NULL);
        else
            pthread_detach(ws[i].t);
    }
    for (int i = 0; i < started; i++) {
        if (!__atomic_load_n(&ws[i].done, __ATOMIC_ACQUIRE))
            hung = 1;
        total += ws[i].iters;
    }
    Py_END_ALLOW_THREADS
    return Py_BuildValue("{s:l,s:l,s:l,s:l,s:l,s:l,s:i,s:i,s:l}", "counter", (long)counter,
                         "expected", total, "failures", failures, "switches",
                         switches, "switch_errors", switch_errors, "threads", started,
                         "first_errno", first_err, "hung", hung, "trylocks", trylocks);
}

static void *waiter(void *p)
{
    pvpatch_lock(&the_lock);
    pvpatch_unlock(&the_lock);
    return NULL;
}

/* hold_with_waiter(ms): hold the lock while a second thread waits for it for `ms` ms. */
static PyObject *py_hold_with_waiter(PyObject *self, PyObject *arg)
{
    long ms = PyLong_AsLong(arg);
    if (ms == -1 && PyErr_Occurred())
        return NULL;
    pthread_t t;
    int e;
    Py_BEGIN_ALLOW_THREADS
    pvpatch_lock(&the_lock);
    e = pthread_create(&t, NULL, waiter, NULL);
    usleep((useconds_t)ms * 1000);
    pvpatch_unlock(&the_lock);
    if (e == 0)
        pthread_join(t, NULL);
    Py_END_ALLOW_THREADS
    if (e != 0) {
        errno = e;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* trylock_pair() -> (first, second, after unlock): 1, 0, 1 */
static PyObject *py_trylock_pair(PyObject *self, PyObject *unused)
{
    pvpatch_lock_t l = PVPATCH_LOCK_INIT;
    int a = pvpatch_trylock(&l), b = pvpatch_trylock(&l);
    pvpatch_unlock(&l);
    int c = pvpatch_trylock(&l);
    pvpatch_unlock(&l);
    return Py_BuildValue("(iii)", a, b, c);
}

static PyMethodDef methods[] = {
    {"switch", py_switch, METH_VARARGS, NULL},
    {"switch_null", py_switch_null, METH_O, NULL},
    {"switch_nogil", py_switch_nogil, METH_VARARGS, NULL},
    {"switch_from_thread", py_switch_from_thread, METH_VARARGS, NULL},
    {"current", py_current, METH_VARARGS, NULL},
    {"lock_stress", py_lock_stress, METH_VARARGS, NULL},
    {"hold_with_waiter", py_hold_with_waiter, METH_O, NULL},
    {"trylock_pair", py_trylock_pair, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "capi_test", .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit_capi_test(void)
{
    if (pvpatch_import_api() < 0)
        return NULL;
    return PyModule_Create(&module);
}
