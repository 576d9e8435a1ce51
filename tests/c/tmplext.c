/*
 * tmplext.c - a third-party extension whose `fast` variant has an inline template given at build
 * time, for the template ABI and feature-gate tests (tests/test_templates.py).
 *
 *   -DMODNAME=name        the Python module (and pvpatch module) name
 *   -DTMPL=0x..,0x..      the bytes of op `get`'s `fast` template
 *   -DNEEDS=flags         pvpatch_impl.flags of that implementation (default 0)
 *
 * Group `tmplg` (variants native, fast), ops:
 *   get()  -> 1 native, 7 fast (a correct fast template is `mov $7,%eax`)
 *   pop(x) -> popcount(x) in both; fast has `popcnt %rdi,%rax` gated on POPCNT
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "pvpatch.h"

#ifndef NEEDS
#define NEEDS 0
#endif
#define STR_(x) #x
#define STR(x) STR_(x)
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

enum { PVPATCH_GROUP_ID(tmplg) = 0 };
enum { PVPATCH_OP_ID(tmplg, get), PVPATCH_OP_ID(tmplg, pop), PVPATCH_NOPS(tmplg) };
PVPATCH_DECLARE_SLOTS(tmplg);

static long get_native(void) { return 1; }
static long get_fast(void) { return 7; }
static long pop_sw(unsigned long x)
{
    long n = 0;
    for (; x; x &= x - 1)
        n++;
    return n;
}
static const uint8_t get_fast_tmpl[] = {TMPL};
static const uint8_t pop_fast_tmpl[] = {0xf3, 0x48, 0x0f, 0xb8, 0xc7}; /* popcnt %rdi,%rax */

PVPATCH_DEFINE_SLOTS(tmplg) = {get_native, pop_sw};

static const struct pvpatch_impl get_impls[] = {
    {.fn = get_native},
    {.fn = get_fast, .tmpl = get_fast_tmpl, .tmpl_len = sizeof(get_fast_tmpl), .flags = NEEDS},
};
static const struct pvpatch_impl pop_impls[] = {
    {.fn = pop_sw},
    {.fn = pop_sw, .tmpl = pop_fast_tmpl, .tmpl_len = sizeof(pop_fast_tmpl),
     .flags = PVPATCH_IMPL_NEEDS_POPCNT},
};
static const struct pvpatch_op ops[] = {
    {"get", &PVPATCH_SLOTS(tmplg)[PVPATCH_OP_ID(tmplg, get)], get_impls},
    {"pop", &PVPATCH_SLOTS(tmplg)[PVPATCH_OP_ID(tmplg, pop)], pop_impls},
};
static const char *const variants[] = {"native", "fast"};
static const struct pvpatch_group groups[] = {{"tmplg", variants, 2, 0, ops, PVPATCH_NOPS(tmplg)}};
PVPATCH_MODULE(STR(MODNAME), groups);

static PyObject *py_get(PyObject *self, PyObject *unused)
{
    return PyLong_FromLong((long)PVPATCH_CALL0(tmplg, get, 15, 0));
}

static PyObject *py_pop(PyObject *self, PyObject *arg)
{
    unsigned long x = PyLong_AsUnsignedLongMask(arg);
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromLong((long)PVPATCH_CALL1(tmplg, pop, 6, 0, x));
}

static PyMethodDef methods[] = {
    {"get", py_get, METH_NOARGS, "tmplg.get through a 15-byte site"},
    {"pop", py_pop, METH_O, "tmplg.pop through a 6-byte site"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, STR(MODNAME), NULL, -1, methods};

PyMODINIT_FUNC CAT(PyInit_, MODNAME)(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && pvpatch_export(m, &pvpatch_module) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
