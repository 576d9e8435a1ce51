/*
 * demo.c - a third-party extension with patchable sites of its own.
 *
 * Build (any C compiler that takes GNU inline asm):
 *   gcc -O2 -shared -fPIC -fvisibility=hidden $(python3-config --includes) \
 *       -I$(python3 -c 'import pvpatch_build; print(pvpatch_build.get_include())') demo.c \
 *       -o demo$(python3-config --extension-suffix)
 * Use:
 *   import demo, pvpatch
 *   pvpatch.register_module(demo)
 *   demo.scale(21)                      # 42: native
 *   pvpatch.runtime_patch({"demo": "pv"})
 *   demo.scale(21)                      # 63: pv
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* before pvpatch.h, for pvpatch_export() */

#include "pvpatch.h"

enum { PVPATCH_GROUP_ID(demo) = 0 };
enum { PVPATCH_OP_ID(demo, scale), PVPATCH_OP_ID(demo, clear), PVPATCH_NOPS(demo) };
PVPATCH_DECLARE_SLOTS(demo);

static long scale_native(long x) { return 2 * x; }
static long scale_pv(long x) { return 3 * x; }
static long clear_native(long *p) { *p = 0; return 0; }
static long clear_pv(long *p) { *p = -1; return 0; }
static const uint8_t clear_native_tmpl[] = {0x48, 0xc7, 0x07, 0, 0, 0, 0}; /* movq $0,(%rdi) */

PVPATCH_DEFINE_SLOTS(demo) = {scale_native, clear_native};

static const struct pvpatch_impl scale_impls[] = {{.fn = scale_native}, {.fn = scale_pv}};
static const struct pvpatch_impl clear_impls[] = {
    {.fn = clear_native, .tmpl = clear_native_tmpl, .tmpl_len = sizeof(clear_native_tmpl)},
    {.fn = clear_pv},
};
static const struct pvpatch_op demo_ops[] = {
    {"scale", &PVPATCH_SLOTS(demo)[PVPATCH_OP_ID(demo, scale)], scale_impls},
    {"clear", &PVPATCH_SLOTS(demo)[PVPATCH_OP_ID(demo, clear)], clear_impls},
};
static const char *const demo_variants[] = {"native", "pv"};
static const struct pvpatch_group demo_groups[] = {
    {"demo", demo_variants, 2, 0, demo_ops, PVPATCH_NOPS(demo)},
};
PVPATCH_MODULE("demo", demo_groups);

static PyObject *py_scale(PyObject *self, PyObject *arg)
{
    long x = PyLong_AsLong(arg);
    if (x == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLong((long)PVPATCH_CALL1(demo, scale, 6, 0, x));
}

static PyObject *py_clear(PyObject *self, PyObject *arg)
{
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred())
        return NULL;
    PVPATCH_CALL1(demo, clear, 8, 0, &v);
    return PyLong_FromLong(v);
}

static PyMethodDef methods[] = {
    {"scale", py_scale, METH_O, "demo.scale through a patchable site"},
    {"clear", py_clear, METH_O, "demo.clear through a patchable site (inline when native)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "demo", NULL, -1, methods};

PyMODINIT_FUNC PyInit_demo(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && pvpatch_export(m, &pvpatch_module) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
