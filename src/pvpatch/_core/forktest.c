/*
 * forktest.c - fork from C threads while batches run, and check every child's copy of the code.
 *
 * A test helper (tests/test_fork.py): the Python side patches in a loop while these threads fork.
 * Each child runs no Python (its GIL holder is gone); it checks, in C, that no site starts with
 * int3 and that every selftest site returns the value of one and the same variant, then exits
 * with a code that says what it found.  A child whose copy held an int3 of a batch in progress
 * would trap on it forever (no batch is live in the child): the parent kills it at the deadline
 * and counts it as hung.
 */
#define _GNU_SOURCE
#include "core.h"
#include "selftest_sites.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { CHILD_OK = 0, CHILD_INT3 = 10, CHILD_BAD_RESULT = 11, CHILD_MIXED = 12 };

struct forker {
    pthread_t th;
    const uint64_t *sites;
    size_t nsites;
    int children;
    double timeout_s;
    /* results */
    int ok, int3, bad_result, mixed, hung, signalled, other, fork_errno;
    int last_signal;
};

/* Which variant (0..2) a selftest site's result belongs to, or -1. */
static int variant_of(int op, long a, long b, long r)
{
    static const long value[] = {ST_VALUE_NATIVE, ST_VALUE_PV, ST_VALUE_ALT};
    static const long add[] = {0, ST_ADD_PV, ST_ADD_ALT};
    static const unsigned long wide[] = {ST_WIDE_NATIVE, ST_WIDE_PV, ST_WIDE_ALT};
    for (int v = 0; v < 3; v++) {
        if ((op == PVPATCH_OP_ID(selftest, value) && r == value[v]) ||
            (op == PVPATCH_OP_ID(selftest, add) && r == a + b + add[v]) ||
            (op == PVPATCH_OP_ID(selftest, wide) && r == (long)wide[v]) ||
            (op == PVPATCH_OP_ID(selftest, mark) && r == v))
            return v;
    }
    return -1;
}

static int child_check(const struct forker *f)
{
    for (size_t i = 0; i < f->nsites; i++)
        if (*(volatile const uint8_t *)(uintptr_t)f->sites[i] == 0xcc)
            return CHILD_INT3;
    int seen = -1;
    for (int i = 0; i < st_nsites; i++) {
        long r = st_sites[i].fn(3, 4);
        int v = variant_of(st_sites[i].op, 3, 4, r);
        if (v < 0)
            return CHILD_BAD_RESULT;
        /* Boot sites (11, 12) keep the variant of registration: not part of the group's. */
        if (i < 11) {
            if (seen >= 0 && v != seen)
                return CHILD_MIXED;
            seen = v;
        }
    }
    return CHILD_OK;
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *forker_main(void *arg)
{
    struct forker *f = arg;
    for (int c = 0; c < f->children; c++) {
        pid_t pid = fork();
        if (pid < 0) {
            f->fork_errno = errno;
            break;
        }
        if (pid == 0)
            _exit(child_check(f));
        int status = 0;
        double deadline = mono() + f->timeout_s;
        pid_t w;
        while ((w = waitpid(pid, &status, WNOHANG)) == 0 && mono() < deadline)
            usleep(200);
        if (w == 0) { /* bounded: a hung child is a finding, not a hang of the test */
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            f->hung++;
        } else if (WIFSIGNALED(status)) {
            f->signalled++;
            f->last_signal = WTERMSIG(status);
        } else if (WIFEXITED(status)) {
            switch (WEXITSTATUS(status)) {
            case CHILD_OK: f->ok++; break;
            case CHILD_INT3: f->int3++; break;
            case CHILD_BAD_RESULT: f->bad_result++; break;
            case CHILD_MIXED: f->mixed++; break;
            default: f->other++;
            }
        }
    }
    return NULL;
}

/* fork_from_threads(site_addrs, threads, children, timeout) -> dict of counts.  site_addrs: a
 * uint64 array of the site starts to check for int3. */
static PyObject *py_fork_from_threads(PyObject *self, PyObject *args)
{
    Py_buffer sites;
    int threads, children;
    double timeout;
    if (!PyArg_ParseTuple(args, "y*iid", &sites, &threads, &children, &timeout))
        return NULL;
    if (threads < 1 || threads > 64 || children < 0 || !(timeout > 0 && timeout < 600)) {
        PyBuffer_Release(&sites);
        PyErr_SetString(PyExc_ValueError, "fork_from_threads: threads 1..64, children >= 0, "
                                          "timeout in (0, 600) s");
        return NULL;
    }
    struct forker f[64];
    memset(f, 0, sizeof(f));
    int started = 0, err = 0;
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < threads; i++) {
        f[i].sites = sites.buf;
        f[i].nsites = (size_t)sites.len / 8;
        f[i].children = children;
        f[i].timeout_s = timeout;
        err = pthread_create(&f[i].th, NULL, forker_main, &f[i]);
        if (err != 0)
            break;
        started++;
    }
    for (int i = 0; i < started; i++)
        pthread_join(f[i].th, NULL);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&sites);
    if (err != 0)
        return core_oserror_errno(err, "pthread_create");
    int t[9] = {0};
    for (int i = 0; i < started; i++) {
        t[0] += f[i].ok, t[1] += f[i].int3, t[2] += f[i].bad_result, t[3] += f[i].mixed;
        t[4] += f[i].hung, t[5] += f[i].signalled, t[6] += f[i].other;
        if (f[i].fork_errno)
            t[7] = f[i].fork_errno;
        if (f[i].last_signal)
            t[8] = f[i].last_signal;
    }
    return Py_BuildValue("{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i}", "ok", t[0], "int3", t[1],
                         "bad_result", t[2], "mixed", t[3], "hung", t[4], "signalled", t[5],
                         "other", t[6], "fork_errno", t[7], "last_signal", t[8]);
}

PyMethodDef core_forktest_methods[] = {
    {"fork_from_threads", py_fork_from_threads, METH_VARARGS,
     "Fork from C threads and check each child's code (a test helper)."},
    {NULL, NULL, 0, NULL},
};
