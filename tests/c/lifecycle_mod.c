/*
 * lifecycle_mod.c - a multi-phase-init extension module with one patchable site, for
 * tests/test_lifecycle.py: unlike a single-phase one (kept by the interpreter for good), its
 * module object can be collected.  Group `lcm`: scale(x) is 2x (native) or 3x (pv).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* before pvpatch.h, for pvpatch_export() */

#include "pvpatch.h"

enum { PVPATCH_GROUP_ID(lcm) = 0 };
enum { PVPATCH_OP_ID(lcm, scale), PVPATCH_NOPS(lcm) };
PVPATCH_DECLARE_SLOTS(lcm);

static long scale_native(long x) { return 2 * x; }
static long scale_pv(long x) { return 3 * x; }

PVPATCH_DEFINE_SLOTS(lcm) = {scale_native};

static const struct pvpatch_impl scale_impls[] = {{.fn = scale_native}, {.fn = scale_pv}};
static const struct pvpatch_op lcm_ops[] = {
    {"scale", &PVPATCH_SLOTS(lcm)[PVPATCH_OP_ID(lcm, scale)], scale_impls},
};
static const char *const lcm_variants[] = {"native", "pv"};
static const struct pvpatch_group lcm_groups[] = {
    {"lcm", lcm_variants, 2, 0, lcm_ops, PVPATCH_NOPS(lcm)},
};
PVPATCH_MODULE("lcmod", lcm_groups);

static PyObject *py_scale(PyObject *self, PyObject *arg)
{
    long x = PyLong_AsLong(arg);
    if (x == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLong((long)PVPATCH_CALL1(lcm, scale, 6, 0, x));
}

/* The same site's work, reachable without the module object (a plain exported function). */
__attribute__((visibility("default"))) long lcmod_scale(long x)
{
    return (long)PVPATCH_CALL1(lcm, scale, 8, 0, x);
}

static PyMethodDef methods[] = {
    {"scale", py_scale, METH_O, "scale through a patchable site"},
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *m) { return pvpatch_export(m, &pvpatch_module); }

static PyModuleDef_Slot slots[] = {{Py_mod_exec, exec_module}, {0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "lcmod", NULL, 0, methods, slots};

PyMODINIT_FUNC PyInit_lcmod(void) { return PyModuleDef_Init(&module); }
