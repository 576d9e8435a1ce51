/*
 * capi.c - the C API table that pvpatch exports to extensions as the capsule pvpatch._C_API
 * (the header side, pvpatch_import_api() and the macros, is at the end of include/pvpatch.h).
 *
 * Switching and querying go through the Python control plane (pvpatch.runtime_patch and the
 * registry): one implementation of the planner, its lock and its commit, whoever asks.  The
 * lock entries are the core's out-of-line lock sites, so they switch with the `lock` group.
 */
#include "core.h"
#include "lock_sites.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>

_Static_assert(sizeof(pvpatch_lock_t) == sizeof(pvp_lock_t), "pvpatch_lock_t is the lock word");
_Static_assert(_Alignof(pvpatch_lock_t) == _Alignof(pvp_lock_t), "pvpatch_lock_t alignment");

/* An error for a caller that does not hold the GIL: it has no Python frame to raise into, so
 * the exception becomes errno (its errno attribute if it has one, else EINVAL) and is cleared. */
static int exception_to_errno(void)
{
    int err = EINVAL;
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb); /* PyErr_GetRaisedException() is 3.12+ */
    PyErr_NormalizeException(&type, &exc, &tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    if (exc != NULL && PyObject_HasAttrString(exc, "errno")) {
        PyObject *e = PyObject_GetAttrString(exc, "errno");
        if (e != NULL && PyLong_Check(e)) {
            long v = PyLong_AsLong(e);
            if (v > 0 && v < 4096)
                err = (int)v;
        }
        Py_XDECREF(e);
    }
    Py_XDECREF(exc);
    PyErr_Clear();
    return err;
}

/* Call pvpatch.<obj>.<meth>(...) or pvpatch.<meth>(...) with the GIL held. */
static PyObject *call_pvpatch(const char *attr, const char *meth, const char *fmt, ...)
{
    PyObject *mod = PyImport_ImportModule("pvpatch");
    if (mod == NULL)
        return NULL;
    PyObject *target = mod;
    if (attr != NULL) {
        target = PyObject_GetAttrString(mod, attr);
        Py_DECREF(mod);
        if (target == NULL)
            return NULL;
    }
    PyObject *fn = PyObject_GetAttrString(target, meth);
    Py_DECREF(target);
    if (fn == NULL)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    PyObject *args = Py_VaBuildValue(fmt, ap);
    va_end(ap);
    PyObject *r = NULL;
    if (args != NULL) {
        r = PyObject_CallObject(fn, args);
        Py_DECREF(args);
    }
    Py_DECREF(fn);
    return r;
}

static int capi_runtime_patch(const char *group, const char *variant)
{
    int had_gil = PyGILState_Check();
    PyGILState_STATE st = PyGILState_Ensure();
    int rc = -1, err = 0;
    if (group == NULL || variant == NULL) {
        PyErr_Format(PyExc_ValueError, "pvpatch_runtime_patch: %s is NULL",
                     group == NULL ? "group" : "variant");
    } else {
        PyObject *r = call_pvpatch(NULL, "runtime_patch", "({s:s})", group, variant);
        if (r != NULL) {
            Py_DECREF(r);
            rc = 0;
        }
    }
    if (rc < 0 && !had_gil)
        err = exception_to_errno();
    PyGILState_Release(st);
    if (err)
        errno = err;
    return rc;
}

static int capi_current(const char *group, char *buf, size_t size)
{
    int had_gil = PyGILState_Check();
    PyGILState_STATE st = PyGILState_Ensure();
    int rc = -1, err = 0;
    if (group == NULL || buf == NULL) {
        PyErr_Format(PyExc_ValueError, "pvpatch_current: %s is NULL",
                     group == NULL ? "group" : "buf");
    } else {
        PyObject *g = call_pvpatch("registry", "group", "(s)", group);
        PyObject *cur = g != NULL ? PyObject_GetAttrString(g, "current") : NULL;
        Py_XDECREF(g);
        Py_ssize_t n = 0;
        const char *s = cur != NULL ? PyUnicode_AsUTF8AndSize(cur, &n) : NULL;
        if (s != NULL) {
            if ((size_t)n + 1 > size) {
                PyErr_Format(PyExc_ValueError,
                             "pvpatch_current: group %s's variant %s needs %zd bytes, buf has %zu",
                             group, s, n + 1, size);
            } else {
                memcpy(buf, s, (size_t)n + 1);
                rc = 0;
            }
        }
        Py_XDECREF(cur);
    }
    if (rc < 0 && !had_gil)
        err = exception_to_errno();
    PyGILState_Release(st);
    if (err)
        errno = err;
    return rc;
}

/* Each of these holds one runtime site of the `lock` group (lock_sites.c). */
static void capi_lock(pvpatch_lock_t *l) { pvp_lock_acquire((pvp_lock_t *)l); }
static void capi_unlock(pvpatch_lock_t *l) { pvp_lock_release((pvp_lock_t *)l); }
static int capi_trylock(pvpatch_lock_t *l) { return pvp_trylock((pvp_lock_t *)l); }
static int capi_unregister(const struct pvpatch_module *desc) { return pvpatch_core_unregister(desc); }

static const struct pvpatch_api capi_table = {
    .version = PVPATCH_API_VERSION,
    .size = sizeof(struct pvpatch_api),
    .runtime_patch = capi_runtime_patch,
    .current = capi_current,
    .lock = capi_lock,
    .unlock = capi_unlock,
    .trylock = capi_trylock,
    .unregister = capi_unregister,
};

int core_capi_export(PyObject *module)
{
    PyObject *cap = PyCapsule_New((void *)&capi_table, "pvpatch._C_API", NULL);
    if (cap == NULL)
        return -1;
    if (PyModule_AddObject(module, "_C_API", cap) < 0) {
        Py_DECREF(cap);
        return -1;
    }
    return 0;
}
