/*
 * module.c - pvexample._ext: the Python entry points, and pvpatch's C API in use
 * (pvpatch_runtime_patch, pvpatch_current, pvpatch_lock_t).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* before pvpatch.h: then it declares pvpatch_export() and the C API */

#include "ext.h"

#include <errno.h>
#include <pthread.h>

static PyObject *py_add(PyObject *self, PyObject *args)
{
    long a, b;
    if (!PyArg_ParseTuple(args, "ll", &a, &b))
        return NULL;
    return PyLong_FromLong(ex_add(a, b));
}

static PyObject *py_clear(PyObject *self, PyObject *arg)
{
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(ex_clear(v));
}

static PyObject *py_note(PyObject *self, PyObject *arg)
{
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred())
        return NULL;
    ex_note(v);
    Py_RETURN_NONE;
}

static PyObject *py_sum_to(PyObject *self, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(ex_sum_to(n));
}

static PyObject *py_boot_tag(PyObject *self, PyObject *unused)
{
    return PyLong_FromLong(ex_boot_tag());
}

static PyObject *py_calls(PyObject *self, PyObject *unused) { return PyLong_FromLong(ex_calls()); }

/* switch(variant): the C API's pvpatch_runtime_patch, as C code of the extension would call it. */
static PyObject *py_switch(PyObject *self, PyObject *arg)
{
    const char *v = PyUnicode_AsUTF8(arg);
    if (v == NULL || pvpatch_runtime_patch("example", v) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* current(group="example") -> the group's variant, through pvpatch_current. */
static PyObject *py_current(PyObject *self, PyObject *args)
{
    const char *g = "example";
    char buf[64];
    if (!PyArg_ParseTuple(args, "|s", &g) || pvpatch_current(g, buf, sizeof(buf)) < 0)
        return NULL;
    return PyUnicode_FromString(buf);
}

/* locked_count(threads, iters): threads add to a shared counter under a pvpatch_lock_t, whose
 * lock and unlock run the core's `lock` sites (switch them with pvpatch.runtime_patch({"lock":
 * ...}) meanwhile).  Returns the counter: threads * iters when the lock excludes. */
static pvpatch_lock_t count_lock = PVPATCH_LOCK_INIT;
static long count;
static long count_iters;

static void *count_thread(void *unused)
{
    for (long i = 0; i < count_iters; i++) {
        pvpatch_lock(&count_lock);
        count = count + 1; /* plain: the lock is what keeps it exact */
        pvpatch_unlock(&count_lock);
    }
    return NULL;
}

static PyObject *py_locked_count(PyObject *self, PyObject *args)
{
    int n;
    long iters;
    if (!PyArg_ParseTuple(args, "il", &n, &iters))
        return NULL;
    if (n < 1 || n > 64 || iters < 0)
        return PyErr_Format(PyExc_ValueError, "locked_count: threads %d not in 1..64 or "
                            "iters %ld < 0", n, iters);
    pthread_t t[64];
    int started = 0, err = 0;
    count = 0;
    count_iters = iters;
    Py_BEGIN_ALLOW_THREADS
    for (; started < n; started++)
        if ((err = pthread_create(&t[started], NULL, count_thread, NULL)) != 0)
            break;
    for (int i = 0; i < started; i++)
        pthread_join(t[i], NULL);
    Py_END_ALLOW_THREADS
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(count);
}

static PyMethodDef methods[] = {
    {"add", py_add, METH_VARARGS, "a + b through an `example.add` site"},
    {"clear", py_clear, METH_O, "v cleared through an `example.clear` site: 0"},
    {"note", py_note, METH_O, "an `example.note` site"},
    {"sum_to", py_sum_to, METH_O, "0 + 1 + ... + n-1 through add and note sites"},
    {"boot_tag", py_boot_tag, METH_NOARGS, "the variant the boot site was rendered as: 1..3"},
    {"calls", py_calls, METH_NOARGS, "calls counted by the counting variant"},
    {"switch", py_switch, METH_O, "switch the example group from C"},
    {"current", py_current, METH_VARARGS, "a group's current variant, read from C"},
    {"locked_count", py_locked_count, METH_VARARGS, "threads counting under a pvpatch_lock_t"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "pvexample._ext", .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__ext(void)
{
    /* The C API first: it imports pvpatch, which registers pvpatch's core. */
    if (pvpatch_import_api() < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && pvpatch_export(m, &pvpatch_module) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
