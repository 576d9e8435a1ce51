/*
 * lock_sites.c - the `lock` op group (group 1 of pvpatch._core) and the Python entry points of
 * the lock mode word, the grace period, the statistics, the local judge and the switching
 * protocol (pvlock_transition in locks.c; its argument in docs/locks.md).
 *
 * Variants, in order: native, pv, hybrid.
 *
 *            lock                 unlock
 *   native   pvp_native_lock      inline `movb $0,(%rdi)` (c6 07 00)
 *   pv       pvp_pv_lock          call pvp_kick_unlock
 *   hybrid   pvp_native_lock      call pvp_kick_unlock
 *
 * The native unlock's *function* (what the default rendering calls through the slot, and
 * what a site too short for the template would call) is pvp_kick_unlock, not a byte store: a
 * thread can be inside a called function across any sync, so only an inline store is covered
 * by the argument that "after the batch's final sync nobody executes the old bytes".  The
 * kicking unlock does the same as the store whenever no pv head sleeps, and is correct when
 * one does.
 */
#include "core.h" /* Python.h first: pvpatch.h then defines pvpatch_export() */
#include "lock_sites.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---- the group -------------------------------------------------------------------------- */

static const uint8_t unlock_native_tmpl[] = {0xc6, 0x07, 0x00}; /* movb $0x0,(%rdi) */

PVPATCH_DEFINE_SLOTS(lock) = {
    [PVPATCH_OP_ID(lock, lock)] = (void *)pvp_native_lock,
    [PVPATCH_OP_ID(lock, unlock)] = (void *)pvp_kick_unlock,
};

static const struct pvpatch_impl lock_impls[] = {
    [LK_NATIVE] = {.fn = (void *)pvp_native_lock},
    [LK_PV] = {.fn = (void *)pvp_pv_lock},
    [LK_HYBRID] = {.fn = (void *)pvp_native_lock},
};
static const struct pvpatch_impl unlock_impls[] = {
    [LK_NATIVE] = {.fn = (void *)pvp_kick_unlock,
                   .tmpl = unlock_native_tmpl,
                   .tmpl_len = sizeof(unlock_native_tmpl)},
    [LK_PV] = {.fn = (void *)pvp_kick_unlock},
    [LK_HYBRID] = {.fn = (void *)pvp_kick_unlock},
};

const struct pvpatch_op core_lock_ops[] = {
    [PVPATCH_OP_ID(lock, lock)] = {"lock", &PVPATCH_SLOTS(lock)[PVPATCH_OP_ID(lock, lock)],
                                   lock_impls},
    [PVPATCH_OP_ID(lock, unlock)] = {"unlock", &PVPATCH_SLOTS(lock)[PVPATCH_OP_ID(lock, unlock)],
                                     unlock_impls},
};
const char *const core_lock_variants[] = {[LK_NATIVE] = "native", [LK_PV] = "pv",
                                          [LK_HYBRID] = "hybrid"};

/* ---- out-of-line sites ------------------------------------------------------------------ */

__attribute__((noinline)) void pvp_lock_acquire(pvp_lock_t *l) { PVP_LOCK(l); }

__attribute__((noinline)) void pvp_lock_release(pvp_lock_t *l) { PVP_UNLOCK(l); }

/* ---- Python ----------------------------------------------------------------------------- */

static const char *const mode_names[] = {[PVP_MODE_NATIVE] = "native",
                                         [PVP_MODE_HYBRID] = "hybrid", [PVP_MODE_PV] = "pv"};

/* lock_modes() -> {"native": 0, "hybrid": 1, "pv": 2} */
static PyObject *py_lock_modes(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("{s:i,s:i,s:i}", mode_names[0], 0, mode_names[1], 1, mode_names[2], 2);
}

static PyObject *py_lock_mode(PyObject *self, PyObject *unused)
{
    return PyLong_FromUnsignedLong(pvp_lock_mode());
}

/* lock_set_mode(mode) */
static PyObject *py_lock_set_mode(PyObject *self, PyObject *arg)
{
    long m = PyLong_AsLong(arg);
    if (m == -1 && PyErr_Occurred())
        return NULL;
    if (m < PVP_MODE_NATIVE || m > PVP_MODE_PV) {
        PyErr_Format(PyExc_ValueError, "lock mode %ld does not exist (0 native, 1 hybrid, 2 pv)",
                     m);
        return NULL;
    }
    pvp_lock_set_mode((uint32_t)m);
    Py_RETURN_NONE;
}

static PyObject *py_lock_pv_inflight(PyObject *self, PyObject *unused)
{
    return PyLong_FromLong(pvp_lock_pv_inflight());
}

/* lock_grace(timeout) -> True if the grace period completed, False on timeout. */
static PyObject *py_lock_grace(PyObject *self, PyObject *arg)
{
    double timeout = PyFloat_AsDouble(arg);
    if (timeout == -1.0 && PyErr_Occurred())
        return NULL;
    if (!(timeout >= 0.0 && timeout <= 3600.0)) {
        PyErr_Format(PyExc_ValueError, "lock_grace: timeout %g s is not in [0, 3600]", timeout);
        return NULL;
    }
    int r;
    Py_BEGIN_ALLOW_THREADS
    r = pvp_lock_grace((uint64_t)(timeout * 1e9));
    Py_END_ALLOW_THREADS
    if (r < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "lock_grace: the lock mode is pv, so the grace period can never end; "
                        "set the mode to hybrid first");
        return NULL;
    }
    return PyBool_FromLong(r);
}

static PyObject *py_lock_stats(PyObject *self, PyObject *unused)
{
    uint64_t st[PVP_STAT_N];
    pvp_lock_stats(st);
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    for (int s = 0; s < PVP_STAT_N; s++) {
        PyObject *v = PyLong_FromUnsignedLongLong(st[s]);
        if (v == NULL || PyDict_SetItemString(d, pvp_lock_stat_names[s], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

/* lock_threads(all=False) -> [{tid, depth, pv_active, where, lock, node_wait}] */
static PyObject *py_lock_threads(PyObject *self, PyObject *args)
{
    int all = 0;
    if (!PyArg_ParseTuple(args, "|p", &all))
        return NULL;
    int hi = pvp_lock_threads_high();
    struct pvp_thread_state *st = PyMem_Malloc(sizeof(*st) * (size_t)(hi ? hi : 1));
    if (st == NULL)
        return PyErr_NoMemory();
    int n = pvp_lock_thread_states(st, hi, all);
    PyObject *l = PyList_New(n);
    for (int i = 0; l != NULL && i < n; i++) {
        PyObject *d = Py_BuildValue("{s:I,s:I,s:I,s:s,s:K,s:I}", "tid", st[i].tid, "depth",
                                    st[i].depth, "pv_active", st[i].pv_active, "where",
                                    pvp_thread_where_names[st[i].where], "lock",
                                    (unsigned long long)st[i].lock, "node_wait", st[i].node_wait);
        if (d == NULL) {
            Py_CLEAR(l);
            break;
        }
        PyList_SET_ITEM(l, i, d);
    }
    PyMem_Free(st);
    return l;
}

/* lock_tune(pv_spin=None, rescue=None) -> (pv_spin, rescue seconds) as they are afterwards */
static PyObject *py_lock_tune(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"pv_spin", "rescue", NULL};
    PyObject *spin = Py_None, *rescue = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OO", kwlist, &spin, &rescue))
        return NULL;
    if (spin != Py_None) {
        long n = PyLong_AsLong(spin);
        if (n == -1 && PyErr_Occurred())
            return NULL;
        if (n < 0 || n > (1L << 24)) {
            PyErr_Format(PyExc_ValueError, "lock_tune: pv_spin %ld is not in [0, 2**24]", n);
            return NULL;
        }
        pvp_lock_set_pv_spin((uint32_t)n);
    }
    if (rescue != Py_None) {
        double s = PyFloat_AsDouble(rescue);
        if (s == -1.0 && PyErr_Occurred())
            return NULL;
        if (!(s >= 0.001 && s <= 3600.0)) {
            PyErr_Format(PyExc_ValueError, "lock_tune: rescue %g s is not in [0.001, 3600]", s);
            return NULL;
        }
        pvp_lock_set_rescue_ns((uint64_t)(s * 1e9));
    }
    return Py_BuildValue("(Id)", pvp_lock_pv_spin(), pvp_lock_rescue_ns() / 1e9);
}

/* lock_futex_check(): the futex calls the pv lock makes work here (FUTEX_WAIT on a word that
 * does not hold the value must fail with EAGAIN; FUTEX_WAKE with nobody waiting returns 0);
 * raises OSError naming futex otherwise, and if a lock has seen a futex call fail. */
static PyObject *py_lock_futex_check(PyObject *self, PyObject *unused)
{
    uint32_t word = 1;
    if (syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0) == 0)
        return core_oserror_errno(EINVAL, "futex");
    if (errno != EAGAIN)
        return core_oserror("futex");
    if (syscall(SYS_futex, &word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0) < 0)
        return core_oserror("futex");
    if (pvp_lock_futex_errno() != 0)
        return core_oserror_errno(pvp_lock_futex_errno(), "futex");
    Py_RETURN_NONE;
}

/* pvlock_stats() -> {acquisitions, contended, sleeps, wakes, handovers, handover_ns} */
static PyObject *py_pvlock_stats(PyObject *self, PyObject *unused)
{
    struct pvlock_stats st;
    pvlock_stats_read(&st);
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K}", "acquisitions",
                         (unsigned long long)st.acquisitions, "contended",
                         (unsigned long long)st.contended, "sleeps", (unsigned long long)st.sleeps,
                         "wakes", (unsigned long long)st.wakes, "handovers",
                         (unsigned long long)st.handovers, "handover_ns",
                         (unsigned long long)st.handover_ns);
}

/* The judge's state for Python's calls: its own, so that Python and a C caller (the agent)
 * each see the statistics since their own previous call. */
static struct pvlock_judge py_judge;

/* lock_local_judge() -> (verdict, why): pvlock_local_judge over the interval since the previous
 * call from Python (-1 no opinion, 0 pv, 1 native is fine). */
static PyObject *py_lock_local_judge(PyObject *self, PyObject *unused)
{
    char why[256];
    int r = pvlock_local_judge(&py_judge, why, sizeof(why));
    return Py_BuildValue("(is)", r, why);
}

static int stat_field(PyObject *d, const char *key, uint64_t *out)
{
    PyObject *v = PyDict_GetItemString(d, key); /* borrowed */
    if (v == NULL) {
        PyErr_Format(PyExc_KeyError, "lock_judge_delta: the statistics have no '%s'", key);
        return -1;
    }
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Format(PyExc_ValueError, "lock_judge_delta: '%s' is not a count (an int >= 0)",
                     key);
        return -1;
    }
    *out = x;
    return 0;
}

/* lock_judge_delta(stats, mode) -> (verdict, why): the judge's rule on a delta of pvlock_stats()
 * taken while the lock mode word was `mode` (a name of lock_modes()). */
static PyObject *py_lock_judge_delta(PyObject *self, PyObject *args)
{
    PyObject *d;
    const char *mode;
    if (!PyArg_ParseTuple(args, "O!s", &PyDict_Type, &d, &mode))
        return NULL;
    uint32_t m;
    if (strcmp(mode, "native") == 0)
        m = PVP_MODE_NATIVE;
    else if (strcmp(mode, "hybrid") == 0)
        m = PVP_MODE_HYBRID;
    else if (strcmp(mode, "pv") == 0)
        m = PVP_MODE_PV;
    else {
        PyErr_Format(PyExc_ValueError, "lock_judge_delta: mode '%s' is not native, hybrid or pv",
                     mode);
        return NULL;
    }
    struct pvlock_stats st;
    if (stat_field(d, "acquisitions", &st.acquisitions) || stat_field(d, "contended", &st.contended) ||
        stat_field(d, "sleeps", &st.sleeps) || stat_field(d, "wakes", &st.wakes) ||
        stat_field(d, "handovers", &st.handovers) || stat_field(d, "handover_ns", &st.handover_ns))
        return NULL;
    char why[256];
    int r = pvlock_judge_delta(&st, m, why, sizeof(why));
    return Py_BuildValue("(is)", r, why);
}

/* ---- the transition, driven from Python ------------------------------------------------- */

/* The callbacks run with the GIL re-taken; pvlock_transition itself (the grace period above
 * all) runs without it.  A Python exception raised by a callback is kept and re-raised as is
 * (KeyboardInterrupt, UnlockSitesNotKicking from a Python check, a batch's error). */
struct py_transition {
    PyThreadState *ts;
    PyObject *apply, *check;
    int raised;
};

static int py_apply(const char *variant, void *arg, struct pvrt_error *e)
{
    struct py_transition *t = arg;
    PyEval_RestoreThread(t->ts);
    PyObject *r = PyObject_CallFunction(t->apply, "s", variant);
    int rc = 0;
    if (r == NULL) {
        t->raised = 1;
        rc = -1;
        snprintf(e->msg, sizeof(e->msg), "lock: apply(%s) raised", variant);
    }
    Py_XDECREF(r);
    t->ts = PyEval_SaveThread();
    return rc;
}

static int py_check(void *arg, struct pvrt_error *e)
{
    struct py_transition *t = arg;
    PyEval_RestoreThread(t->ts);
    PyObject *r = PyObject_CallNoArgs(t->check);
    int rc = 1;
    if (r == NULL) {
        t->raised = 1;
        rc = -1;
        snprintf(e->msg, sizeof(e->msg), "lock: the unlock-site check raised");
    } else if (!PyObject_IsTrue(r)) {
        rc = 0;
        snprintf(e->msg, sizeof(e->msg), "lock -> pv: an unlock site does not kick");
    }
    Py_XDECREF(r);
    t->ts = PyEval_SaveThread();
    return rc;
}

/* lock_transition(current, target, apply, grace_timeout, check=None) -> (status, message)
 *   status "ok", "not-kicking" (mode unchanged) or "incomplete" (group left at hybrid).
 * apply(variant) does one plain batch; check() returns True when every unlock site kicks (it
 * may raise instead); without check the runtime's site reader is used (refused if absent). */
static PyObject *py_lock_transition(PyObject *self, PyObject *args)
{
    const char *current, *target;
    PyObject *apply, *check = Py_None;
    double grace;
    if (!PyArg_ParseTuple(args, "ssOd|O", &current, &target, &apply, &grace, &check))
        return NULL;
    if (!PyCallable_Check(apply) || (check != Py_None && !PyCallable_Check(check))) {
        PyErr_SetString(PyExc_TypeError, "lock_transition: apply and check must be callable");
        return NULL;
    }
    struct py_transition t = {NULL, apply, check == Py_None ? NULL : check, 0};
    struct pvrt_error e = {0, "", ""};
    int r;
    t.ts = PyEval_SaveThread();
    r = pvlock_transition_checked(current, target, py_apply, &t, t.check ? py_check : NULL,
                                  &t, grace, &e);
    PyEval_RestoreThread(t.ts);
    if (t.raised)
        return NULL; /* the callback's exception, as it was raised */
    if (r == PVLOCK_NOT_KICKING)
        return Py_BuildValue("(ss)", "not-kicking", e.msg);
    if (r == PVLOCK_INCOMPLETE)
        return Py_BuildValue("(ss)", "incomplete", e.msg);
    if (r != 0) {
        if (e.err != 0)
            return core_oserror_errno(e.err, e.syscall);
        PyErr_SetString(PyExc_ValueError, e.msg);
        return NULL;
    }
    return Py_BuildValue("(ss)", "ok", "");
}

/* lock_switch_counts() -> (completed, incomplete) */
static PyObject *py_lock_switch_counts(PyObject *self, PyObject *unused)
{
    uint64_t c, i;
    pvlock_switch_counts(&c, &i);
    return Py_BuildValue("(KK)", (unsigned long long)c, (unsigned long long)i);
}

PyMethodDef core_lock_methods[] = {
    {"pvlock_stats", py_pvlock_stats, METH_NOARGS,
     "Cumulative lock statistics: acquisitions, contended, sleeps, wakes, hand-overs."},
    {"lock_local_judge", py_lock_local_judge, METH_NOARGS,
     "(verdict, why) from the statistics since the previous call."},
    {"lock_judge_delta", py_lock_judge_delta, METH_VARARGS,
     "(verdict, why) of the judge's rule on a delta of pvlock_stats()."},
    {"lock_transition", py_lock_transition, METH_VARARGS,
     "The native <-> pv protocol (C), with apply/check callbacks."},
    {"lock_switch_counts", py_lock_switch_counts, METH_NOARGS,
     "(completed, incomplete) lock transitions."},
    {"lock_modes", py_lock_modes, METH_NOARGS, "Mode names and values."},
    {"lock_mode", py_lock_mode, METH_NOARGS, "The lock mode word."},
    {"lock_set_mode", py_lock_set_mode, METH_O, "Store the lock mode word (seq_cst)."},
    {"lock_pv_inflight", py_lock_pv_inflight, METH_NOARGS,
     "Threads registered as possible lock-word sleepers."},
    {"lock_grace", py_lock_grace, METH_O,
     "Wait (at most timeout s) until no thread may sleep on a lock word; True if done."},
    {"lock_stats", py_lock_stats, METH_NOARGS, "Lock statistics summed over all threads."},
    {"lock_threads", py_lock_threads, METH_VARARGS, "What threads in lock slow paths do."},
    {"lock_tune", (PyCFunction)(void (*)(void))py_lock_tune, METH_VARARGS | METH_KEYWORDS,
     "Set/get the pv spin bound and the rescue timeout."},
    {"lock_futex_check", py_lock_futex_check, METH_NOARGS, "Check that futex works here."},
    {NULL, NULL, 0, NULL},
};
