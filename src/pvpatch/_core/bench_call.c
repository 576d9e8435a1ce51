/*
 * bench_call.c - the `bench_call` op group: what a site costs against the code it replaces
 * (`pvpatch bench call`, src/pvpatch/bench_call.py).
 *
 * One variant; op `call` renders as a direct call to bc_add, op `inl` as the inline template
 * `lea (%rdi,%rsi),%rax`, op `nop` as one NOP.  Each loop below runs one of them, or the code a
 * compiler emits for the same thing without a site, N times; Python times them interleaved.
 */
#include "core.h" /* Python.h first: pvpatch.h then defines pvpatch_export() */
#include "bench_call.h"

#include <time.h>

/* The callee of every call: opaque to the compiler (no inlining, cloning or IPA register
 * allocation), as a site's callee is. */
#if defined(__clang__)
#define BC_OPAQUE __attribute__((noinline))
#else
#define BC_OPAQUE __attribute__((noinline, noipa))
#endif
BC_OPAQUE long bc_add(long a, long b) { return a + b; }
static long bc_nothing(void) { return 0; }
static const uint8_t bc_lea_tmpl[] = {0x48, 0x8d, 0x04, 0x37}; /* lea (%rdi,%rsi,1),%rax */

PVPATCH_DEFINE_SLOTS(bench_call) = {
    [PVPATCH_OP_ID(bench_call, call)] = (void *)bc_add,
    [PVPATCH_OP_ID(bench_call, inl)] = (void *)bc_add,
    [PVPATCH_OP_ID(bench_call, nop)] = (void *)bc_nothing,
};
static const struct pvpatch_impl call_impls[] = {{.fn = (void *)bc_add}};
static const struct pvpatch_impl inl_impls[] = {
    {.fn = (void *)bc_add, .tmpl = bc_lea_tmpl, .tmpl_len = sizeof(bc_lea_tmpl)}};
static const struct pvpatch_impl nop_impls[] = {{.fn = (void *)bc_nothing,
                                                 .flags = PVPATCH_IMPL_NOP}};
#define BC_OP(name) \
    [PVPATCH_OP_ID(bench_call, name)] = { \
        #name, &PVPATCH_SLOTS(bench_call)[PVPATCH_OP_ID(bench_call, name)], name##_impls}
const struct pvpatch_op core_bench_call_ops[] = {BC_OP(call), BC_OP(inl), BC_OP(nop)};
const char *const core_bench_call_variants[] = {"native"};

/* ---- the loops -------------------------------------------------------------------------- */

/* Every loop starts on a 32-byte boundary: a loop whose closing branch crosses one runs at half
 * speed on CPUs with the Skylake JCC erratum microcode, which would decide a comparison by where
 * the linker happened to put each loop. */
#if defined(__GNUC__) && !defined(__clang__)
#define BC_LOOP __attribute__((noinline, optimize("align-loops=32")))
#else
#define BC_LOOP __attribute__((noinline, aligned(32)))
#endif

long (*bc_pointer)(long, long) = bc_add; /* not const: the compiler cannot see through it */

static BC_LOOP long loop_direct(long n)
{
    long acc = 0;
    for (long i = 0; i < n; i++)
        acc = bc_add(i, acc);
    return acc;
}

static BC_LOOP long loop_indirect(long n)
{
    long acc = 0;
    long (*fp)(long, long) = bc_pointer;
    for (long i = 0; i < n; i++)
        acc = fp(i, acc);
    return acc;
}

static BC_LOOP long loop_site_call(long n)
{
    long acc = 0;
    for (long i = 0; i < n; i++)
        acc = (long)PVPATCH_CALL2(bench_call, call, 6, 0, i, acc);
    return acc;
}

static BC_LOOP long loop_compiler_inline(long n)
{
    long acc = 0;
    for (long i = 0; i < n; i++)
        __asm__("lea (%1,%2), %0" : "=r"(acc) : "r"(i), "r"(acc));
    return acc;
}

static BC_LOOP long loop_site_inline(long n)
{
    long acc = 0;
    for (long i = 0; i < n; i++)
        acc = (long)PVPATCH_CALL2(bench_call, inl, 6, 0, i, acc);
    return acc;
}

static BC_LOOP long loop_nop(long n)
{
    for (long i = 0; i < n; i++)
        __asm__ volatile("nop");
    return n;
}

static BC_LOOP long loop_site_nop(long n)
{
    for (long i = 0; i < n; i++)
        (void)PVPATCH_CALL0(bench_call, nop, 6, 0);
    return n;
}

/* Eight in a row: straight-line code, where the NOPs that align a site's rel32 field count. */
#define X8(s) s s s s s s s s
static BC_LOOP long loop_nop8(long n)
{
    for (long i = 0; i < n; i++)
    {
        X8(__asm__ volatile("nop");)
    }
    return n;
}

static BC_LOOP long loop_site_nop8(long n)
{
    for (long i = 0; i < n; i++)
    {
        X8((void)PVPATCH_CALL0(bench_call, nop, 6, 0);)
    }
    return n;
}

static BC_LOOP long loop_site_nop8_unaligned(long n)
{
    for (long i = 0; i < n; i++)
    {
        X8((void)PVPATCH_CALL0(bench_call, nop, 6, PVPATCH_F_UNALIGNED);)
    }
    return n;
}

/* 8-byte sites: the length is a multiple of 4, so back-to-back sites stay aligned unpadded. */
static BC_LOOP long loop_site8_nop8(long n)
{
    for (long i = 0; i < n; i++)
    {
        X8((void)PVPATCH_CALL0(bench_call, nop, 8, 0);)
    }
    return n;
}

static long (*const loops[])(long) = {
    loop_direct,      loop_indirect, loop_site_call, loop_compiler_inline,
    loop_site_inline, loop_nop,      loop_site_nop,  loop_nop8,
    loop_site_nop8,   loop_site_nop8_unaligned, loop_site8_nop8,
};
static const char *const loop_names[] = {
    "direct",      "indirect", "site_call", "compiler_inline", "site_inline",
    "nop",         "site_nop", "nop8",      "site_nop8",       "site_nop8_unaligned",
    "site8_nop8",
};
#define NLOOPS ((int)(sizeof(loops) / sizeof(loops[0])))

/* bench_call_loops() -> names, in the order bench_call_run takes them */
static PyObject *py_bench_call_loops(PyObject *self, PyObject *unused)
{
    PyObject *l = PyList_New(NLOOPS);
    for (int i = 0; l != NULL && i < NLOOPS; i++)
        PyList_SET_ITEM(l, i, PyUnicode_FromString(loop_names[i]));
    return l;
}

/* bench_call_run(k, n) -> nanoseconds for n iterations of loop k (the GIL released) */
static PyObject *py_bench_call_run(PyObject *self, PyObject *args)
{
    int k;
    long n;
    if (!PyArg_ParseTuple(args, "il", &k, &n))
        return NULL;
    if (k < 0 || k >= NLOOPS || n < 1) {
        PyErr_Format(PyExc_ValueError, "bench_call_run: loop %d of 0..%d, n %ld >= 1", k,
                     NLOOPS - 1, n);
        return NULL;
    }
    struct timespec t0, t1;
    volatile long sink;
    Py_BEGIN_ALLOW_THREADS
    clock_gettime(CLOCK_MONOTONIC, &t0);
    sink = loops[k](n);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    Py_END_ALLOW_THREADS
    (void)sink;
    return PyLong_FromLongLong((long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL +
                               (t1.tv_nsec - t0.tv_nsec));
}

PyMethodDef core_bench_call_methods[] = {
    {"bench_call_loops", py_bench_call_loops, METH_NOARGS, "The call benchmark's loops."},
    {"bench_call_run", py_bench_call_run, METH_VARARGS, "Time one call benchmark loop."},
    {NULL, NULL, 0, NULL},
};
