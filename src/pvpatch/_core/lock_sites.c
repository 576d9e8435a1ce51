/*
 * lock_sites.c - the `lock` op group (group 1 of pvpatch._core) and the Python entry points of
 * the lock mode word and grace period (the switching protocol itself is in pvpatch/locks.py,
 * its argument in docs/locks.md).
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

PyMethodDef core_lock_methods[] = {
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
