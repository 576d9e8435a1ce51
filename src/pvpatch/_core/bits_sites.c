/*
 * bits_sites.c - the `bits` op group: pvpatch's own alternatives chosen by CPU features.
 *
 * One variant, `native`, whose ops have an inline template that needs a CPU feature (the
 * kernel's ALTERNATIVE, arch/x86/kernel/alternative.c): `popcount` renders as `popcnt %rdi,%rax`
 * where POPCNT is on, `clz` as `lzcnt %rdi,%rax` where LZCNT is on; elsewhere, or while policy
 * masks the feature (pvpatch.mask_features), the sites call the C functions below, which use no
 * optional instruction (the core is built for baseline x86-64).  The stress threads run the
 * sites and check every result against an independent computation, so that masking and
 * unmasking while they run can be checked.
 */
#include "core.h"
#include "bits_sites.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

/* ---- implementations -------------------------------------------------------------------- */

/* Bit-parallel counts (the SWAR popcount), no POPCNT instruction. */
static unsigned long popcount_sw(unsigned long x)
{
    x = x - ((x >> 1) & 0x5555555555555555UL);
    x = (x & 0x3333333333333333UL) + ((x >> 2) & 0x3333333333333333UL);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fUL;
    return (x * 0x0101010101010101UL) >> 56;
}

/* lzcnt's definition: 64 for 0 (bsr, which baseline x86-64 has, is undefined there). */
static unsigned long clz_sw(unsigned long x)
{
    if (x == 0)
        return 64;
    unsigned long n = 0;
    for (int s = 32; s > 0; s >>= 1)
        if ((x >> (64 - s)) == 0) {
            n += s;
            x <<= s;
        }
    return n;
}

static const uint8_t popcnt_tmpl[] = {0xf3, 0x48, 0x0f, 0xb8, 0xc7}; /* popcnt %rdi,%rax */
static const uint8_t lzcnt_tmpl[] = {0xf3, 0x48, 0x0f, 0xbd, 0xc7};  /* lzcnt %rdi,%rax */

PVPATCH_DEFINE_SLOTS(bits) = {
    [PVPATCH_OP_ID(bits, popcount)] = popcount_sw,
    [PVPATCH_OP_ID(bits, clz)] = clz_sw,
};

static const struct pvpatch_impl popcount_impls[] = {
    {.fn = popcount_sw, .tmpl = popcnt_tmpl, .tmpl_len = sizeof(popcnt_tmpl),
     .flags = PVPATCH_IMPL_NEEDS_POPCNT},
};
static const struct pvpatch_impl clz_impls[] = {
    {.fn = clz_sw, .tmpl = lzcnt_tmpl, .tmpl_len = sizeof(lzcnt_tmpl),
     .flags = PVPATCH_IMPL_NEEDS_LZCNT},
};

const struct pvpatch_op core_bits_ops[] = {
    [PVPATCH_OP_ID(bits, popcount)] = {"popcount", &PVPATCH_SLOTS(bits)[0], popcount_impls},
    [PVPATCH_OP_ID(bits, clz)] = {"clz", &PVPATCH_SLOTS(bits)[1], clz_impls},
};
const char *const core_bits_variants[] = {"native"};

/* ---- sites ------------------------------------------------------------------------------ */

static __attribute__((noinline)) unsigned long site_popcount(unsigned long x)
{
    return PVPATCH_CALL1(bits, popcount, 6, 0, x);
}
static __attribute__((noinline)) unsigned long site_clz(unsigned long x)
{
    return PVPATCH_CALL1(bits, clz, 8, 0, x);
}

/* References that share no code with the implementations: one bit at a time. */
static unsigned long popcount_ref(unsigned long x)
{
    unsigned long n = 0;
    for (; x; x &= x - 1)
        n++;
    return n;
}
static unsigned long clz_ref(unsigned long x)
{
    unsigned long n = 0;
    for (unsigned long b = 1UL << 63; b && !(x & b); b >>= 1)
        n++;
    return n;
}

/* ---- stress threads --------------------------------------------------------------------- */

#define BITS_MAX_THREADS 64

static struct {
    pthread_t tid[BITS_MAX_THREADS];
    int n;
    atomic_int stop;
    atomic_ulong calls, errors;
    atomic_ulong bad_x, bad_r, bad_op; /* the first wrong result */
} stress;

static void *stress_main(void *arg)
{
    unsigned long x = 0x9e3779b97f4a7c15UL * ((uintptr_t)arg + 1), calls = 0;
    while (!atomic_load_explicit(&stress.stop, memory_order_relaxed)) {
        x ^= x << 13; /* xorshift64 */
        x ^= x >> 7;
        x ^= x << 17;
        unsigned long v = x >> (x & 63); /* every leading-zero count, 0 included */
        unsigned long p = site_popcount(v), c = site_clz(v);
        int bad = p != popcount_ref(v) ? 1 : c != clz_ref(v) ? 2 : 0;
        if (bad && atomic_fetch_add(&stress.errors, 1) == 0) {
            atomic_store(&stress.bad_x, v);
            atomic_store(&stress.bad_r, bad == 1 ? p : c);
            atomic_store(&stress.bad_op, bad);
        }
        if (++calls == 256) {
            atomic_fetch_add_explicit(&stress.calls, 2 * calls, memory_order_relaxed);
            calls = 0;
        }
    }
    atomic_fetch_add(&stress.calls, 2 * calls);
    return NULL;
}

/* bits_stress_start(n): n threads run both sites in a loop until bits_stress_stop(). */
static PyObject *py_bits_stress_start(PyObject *self, PyObject *args)
{
    int n;
    if (!PyArg_ParseTuple(args, "i", &n))
        return NULL;
    if (stress.n != 0) {
        PyErr_SetString(PyExc_RuntimeError, "bits stress threads are already running");
        return NULL;
    }
    if (n < 1 || n > BITS_MAX_THREADS) {
        PyErr_Format(PyExc_ValueError, "threads must be 1..%d, not %d", BITS_MAX_THREADS, n);
        return NULL;
    }
    atomic_store(&stress.stop, 0);
    atomic_store(&stress.calls, 0);
    atomic_store(&stress.errors, 0);
    for (int i = 0; i < n; i++) {
        int err = pthread_create(&stress.tid[i], NULL, stress_main, (void *)(uintptr_t)i);
        if (err != 0) {
            atomic_store(&stress.stop, 1);
            for (int j = 0; j < i; j++)
                pthread_join(stress.tid[j], NULL);
            return core_oserror_errno(err, "pthread_create");
        }
        stress.n = i + 1;
    }
    Py_RETURN_NONE;
}

/* bits_stress_calls() -> calls so far (to wait for progress without stopping) */
static PyObject *py_bits_stress_calls(PyObject *self, PyObject *unused)
{
    return PyLong_FromUnsignedLong(atomic_load(&stress.calls));
}

/* bits_stress_stop() -> {"calls", "errors", "bad": (op, x, result) or None} */
static PyObject *py_bits_stress_stop(PyObject *self, PyObject *unused)
{
    atomic_store(&stress.stop, 1);
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < stress.n; i++)
        pthread_join(stress.tid[i], NULL);
    Py_END_ALLOW_THREADS
    stress.n = 0;
    unsigned long errors = atomic_load(&stress.errors);
    PyObject *bad = Py_None;
    Py_INCREF(bad);
    if (errors) {
        Py_DECREF(bad);
        bad = Py_BuildValue("(skk)", atomic_load(&stress.bad_op) == 1 ? "popcount" : "clz",
                            atomic_load(&stress.bad_x), atomic_load(&stress.bad_r));
        if (bad == NULL)
            return NULL;
    }
    return Py_BuildValue("{s:k,s:k,s:N}", "calls", atomic_load(&stress.calls), "errors", errors,
                         "bad", bad);
}

static PyObject *py_bits_popcount(PyObject *self, PyObject *arg)
{
    unsigned long x = PyLong_AsUnsignedLongMask(arg);
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromUnsignedLong(site_popcount(x));
}

static PyObject *py_bits_clz(PyObject *self, PyObject *arg)
{
    unsigned long x = PyLong_AsUnsignedLongMask(arg);
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromUnsignedLong(site_clz(x));
}

PyMethodDef core_bits_methods[] = {
    {"bits_popcount", py_bits_popcount, METH_O, "popcount(x) through the bits.popcount site."},
    {"bits_clz", py_bits_clz, METH_O, "clz(x) through the bits.clz site (64 for 0)."},
    {"bits_stress_start", py_bits_stress_start, METH_VARARGS,
     "Start n threads running the bits sites and checking every result."},
    {"bits_stress_calls", py_bits_stress_calls, METH_NOARGS, "Calls the stress threads made."},
    {"bits_stress_stop", py_bits_stress_stop, METH_NOARGS,
     "Stop the stress threads: {calls, errors, bad}."},
    {NULL, NULL, 0, NULL},
};
