/*
 * selftest_sites.c - the `selftest` op group, pvpatch's own patchable sites.
 *
 * Three variants (native, pv, alt) whose results are told apart, and sites whose renderings differ
 * in kind and length: direct calls, inline templates of several lengths, a NOP, a template too
 * long for some sites (those fall back to a call), a NOINLINE site and two boot-only sites.  The
 * tests, `pvpatch selftest` and the benchmarks run these.
 */
#include "core.h" /* Python.h first: pvpatch.h then defines pvpatch_export() */
#include "selftest_sites.h"

/* ---- implementations -------------------------------------------------------------------- */

static long value_native(void) { return ST_VALUE_NATIVE; }
static long value_pv(void) { return ST_VALUE_PV; }
static long value_alt(void) { return ST_VALUE_ALT; }
static const uint8_t value_alt_tmpl[] = {0xb8, 0x03, 0x10, 0x00, 0x00}; /* mov $0x1003,%eax */

static long add_native(long a, long b) { return a + b; }
static long add_pv(long a, long b) { return a + b + ST_ADD_PV; }
static long add_alt(long a, long b) { return a + b + ST_ADD_ALT; }
static const uint8_t add_native_tmpl[] = {0x48, 0x8d, 0x04, 0x37}; /* lea (%rdi,%rsi,1),%rax */

static long wide_native(void) { return (long)ST_WIDE_NATIVE; }
static long wide_pv(void) { return (long)ST_WIDE_PV; }
static long wide_alt(void) { return (long)ST_WIDE_ALT; }
static const uint8_t wide_native_tmpl[] = {0x48, 0xb8, 0x44, 0x44, 0x33, 0x33, /* movabs */
                                           0x22, 0x22, 0x11, 0x11};           /* $imm64,%rax */

static long mark_native(long *p) { return 0; }
static long mark_pv(long *p) { return *p += 1; }
static long mark_alt(long *p) { return *p += 2; }
static const uint8_t mark_alt_tmpl[] = {0x48, 0x83, 0x07, 0x02}; /* addq $2,(%rdi) */

PVPATCH_DEFINE_SLOTS(selftest) = {
    [PVPATCH_OP_ID(selftest, value)] = value_native,
    [PVPATCH_OP_ID(selftest, add)] = add_native,
    [PVPATCH_OP_ID(selftest, wide)] = wide_native,
    [PVPATCH_OP_ID(selftest, mark)] = mark_native,
};

/* In the group's variant order: native, pv, alt. */
static const struct pvpatch_impl value_impls[] = {
    {.fn = value_native},
    {.fn = value_pv},
    {.fn = value_alt, .tmpl = value_alt_tmpl, .tmpl_len = sizeof(value_alt_tmpl)},
};
static const struct pvpatch_impl add_impls[] = {
    {.fn = add_native, .tmpl = add_native_tmpl, .tmpl_len = sizeof(add_native_tmpl)},
    {.fn = add_pv},
    {.fn = add_alt},
};
static const struct pvpatch_impl wide_impls[] = {
    {.fn = wide_native, .tmpl = wide_native_tmpl, .tmpl_len = sizeof(wide_native_tmpl)},
    {.fn = wide_pv},
    {.fn = wide_alt},
};
static const struct pvpatch_impl mark_impls[] = {
    {.fn = mark_native, .flags = PVPATCH_IMPL_NOP},
    {.fn = mark_pv},
    {.fn = mark_alt, .tmpl = mark_alt_tmpl, .tmpl_len = sizeof(mark_alt_tmpl)},
};

const struct pvpatch_op core_selftest_ops[] = {
    [PVPATCH_OP_ID(selftest, value)] = {"value", &PVPATCH_SLOTS(selftest)[0], value_impls},
    [PVPATCH_OP_ID(selftest, add)] = {"add", &PVPATCH_SLOTS(selftest)[1], add_impls},
    [PVPATCH_OP_ID(selftest, wide)] = {"wide", &PVPATCH_SLOTS(selftest)[2], wide_impls},
    [PVPATCH_OP_ID(selftest, mark)] = {"mark", &PVPATCH_SLOTS(selftest)[3], mark_impls},
};
const char *const core_selftest_variants[] = {"native", "pv", "alt"};

/* ---- sites ------------------------------------------------------------------------------ */

#define VALUE_SITE(n, len, flags) \
    static __attribute__((noinline)) long site##n(long a, long b) \
    { \
        return (long)PVPATCH_CALL0(selftest, value, len, flags); \
    }
#define ADD_SITE(n, len, flags) \
    static __attribute__((noinline)) long site##n(long a, long b) \
    { \
        return (long)PVPATCH_CALL2(selftest, add, len, flags, a, b); \
    }
#define WIDE_SITE(n, len, flags) \
    static __attribute__((noinline)) long site##n(long a, long b) \
    { \
        return (long)PVPATCH_CALL0(selftest, wide, len, flags); \
    }
#define MARK_SITE(n, len, flags) \
    static __attribute__((noinline)) long site##n(long a, long b) \
    { \
        long c = 0; \
        PVPATCH_CALL1(selftest, mark, len, flags, &c); \
        return c; \
    }

VALUE_SITE(0, 6, 0)
VALUE_SITE(1, 8, 0)
VALUE_SITE(2, 13, 0)
VALUE_SITE(3, 7, PVPATCH_F_NOINLINE)
ADD_SITE(4, 6, 0)
ADD_SITE(5, 9, 0)
WIDE_SITE(6, 15, 0)
WIDE_SITE(7, 12, 0)
WIDE_SITE(8, 6, 0) /* too short for movabs: native renders as a call */
MARK_SITE(9, 6, 0)
MARK_SITE(10, 11, 0)

static __attribute__((noinline)) long site11(long a, long b)
{
    return (long)PVPATCH_BOOT_CALL3(selftest, value, 6, 0, 0, 0, 0);
}
static __attribute__((noinline)) long site12(long a, long b)
{
    return (long)PVPATCH_BOOT_CALL3(selftest, add, 8, 0, a, b, 0);
}

#define V PVPATCH_OP_ID(selftest, value)
#define A PVPATCH_OP_ID(selftest, add)
#define W PVPATCH_OP_ID(selftest, wide)
#define M PVPATCH_OP_ID(selftest, mark)
const struct st_site st_sites[] = {
    {site0, V}, {site1, V}, {site2, V}, {site3, V},  {site4, A},  {site5, A},  {site6, W},
    {site7, W}, {site8, W}, {site9, M}, {site10, M}, {site11, V}, {site12, A},
};
const int st_nsites = sizeof(st_sites) / sizeof(st_sites[0]);

int st_result_valid(int op, long a, long b, long r)
{
    switch (op) {
    case V:
        return r == ST_VALUE_NATIVE || r == ST_VALUE_PV || r == ST_VALUE_ALT;
    case A:
        return r == a + b || r == a + b + ST_ADD_PV || r == a + b + ST_ADD_ALT;
    case W:
        return r == (long)ST_WIDE_NATIVE || r == (long)ST_WIDE_PV || r == (long)ST_WIDE_ALT;
    case M:
        return r == 0 || r == 1 || r == 2;
    }
    return 0;
}
#undef V
#undef A
#undef W
#undef M

/* ---- Python ----------------------------------------------------------------------------- */

/* selftest_call(i, a=0, b=0) -> result of site i */
static PyObject *py_selftest_call(PyObject *self, PyObject *args)
{
    int i;
    long a = 0, b = 0;
    if (!PyArg_ParseTuple(args, "i|ll", &i, &a, &b))
        return NULL;
    if (i < 0 || i >= st_nsites) {
        PyErr_Format(PyExc_IndexError, "selftest site %d does not exist (0..%d)", i, st_nsites - 1);
        return NULL;
    }
    return PyLong_FromLong(st_sites[i].fn(a, b));
}

/* selftest_sites() -> [(function address, op index)] in site order */
static PyObject *py_selftest_sites(PyObject *self, PyObject *unused)
{
    PyObject *l = PyList_New(st_nsites);
    if (l == NULL)
        return NULL;
    for (int i = 0; i < st_nsites; i++) {
        PyObject *t = Py_BuildValue("(Ki)", (unsigned long long)(uintptr_t)st_sites[i].fn,
                                    st_sites[i].op);
        if (t == NULL) {
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, i, t);
    }
    return l;
}

PyMethodDef core_selftest_site_methods[] = {
    {"selftest_call", py_selftest_call, METH_VARARGS, "Run one selftest site."},
    {"selftest_sites", py_selftest_sites, METH_NOARGS, "The selftest site functions."},
    {NULL, NULL, 0, NULL},
};
