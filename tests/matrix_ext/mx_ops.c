/* mx_ops.c - the `mx` group's implementations, tables, boot sites and Python entry points.
 * Built as module MX_MOD (a -D of the test), so several builds load side by side. */
#define _GNU_SOURCE /* gettid, pthread_timedjoin_np */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* before pvpatch.h, for pvpatch_export() */

#include <execinfo.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "mx.h"
#ifdef MX_LIBUNWIND
#define UNW_LOCAL_ONLY
#include <libunwind.h>
#endif

#define MX_STR_(x) #x
#define MX_STR(x) MX_STR_(x)
#define MX_CAT_(a, b) a##b
#define MX_CAT(a, b) MX_CAT_(a, b)

/* ---- implementations -------------------------------------------------------------------- */

static long add_native(long a, long b) { return a + b; }
static long add_pv(long a, long b) { return a + b + 100; }
static long add_alt(long a, long b) { return a + b + 200; }
static const uint8_t add_native_tmpl[] = {0x48, 0x8d, 0x04, 0x37}; /* lea (%rdi,%rsi,1),%rax */

static long mix3_native(long a, long b, long c) { return a + 1000 * b + 1000000 * c; }
static long mix3_pv(long a, long b, long c) { return a + 1000 * b + 1000000 * c + 1; }
static long mix3_alt(long a, long b, long c) { return a + 1000 * b + 1000000 * c + 2; }

static long mark_native(long *p) { return 0; }
static long mark_pv(long *p) { return *p += 1; }
static long mark_alt(long *p) { return *p += 2; }
static const uint8_t mark_alt_tmpl[] = {0x48, 0x83, 0x07, 0x02}; /* addq $2,(%rdi) */

/* (rsp + 8) mod 16 at entry, i.e. rsp mod 16 at the call: 0 when the ABI holds. */
__attribute__((naked)) static long align_fn(void)
{
    __asm__("lea 8(%rsp), %rax\n\t"
            "and $15, %eax\n\t"
            "ret");
}

/* Overwrite every caller-saved register the CPU has, the x87 stack included: eight pushes
 * overflow it if a caller kept anything there across the site. */
static __attribute__((noinline)) void trash_base(void)
{
    __asm__ volatile("mov $-1, %%rax\n\tmov %%rax, %%rcx\n\tmov %%rax, %%rdx\n\t"
                     "mov %%rax, %%rsi\n\tmov %%rax, %%rdi\n\tmov %%rax, %%r8\n\t"
                     "mov %%rax, %%r9\n\tmov %%rax, %%r10\n\tmov %%rax, %%r11\n\t"
                     "pcmpeqd %%xmm0, %%xmm0\n\tpcmpeqd %%xmm1, %%xmm1\n\t"
                     "pcmpeqd %%xmm2, %%xmm2\n\tpcmpeqd %%xmm3, %%xmm3\n\t"
                     "pcmpeqd %%xmm4, %%xmm4\n\tpcmpeqd %%xmm5, %%xmm5\n\t"
                     "pcmpeqd %%xmm6, %%xmm6\n\tpcmpeqd %%xmm7, %%xmm7\n\t"
                     "pcmpeqd %%xmm8, %%xmm8\n\tpcmpeqd %%xmm9, %%xmm9\n\t"
                     "pcmpeqd %%xmm10, %%xmm10\n\tpcmpeqd %%xmm11, %%xmm11\n\t"
                     "pcmpeqd %%xmm12, %%xmm12\n\tpcmpeqd %%xmm13, %%xmm13\n\t"
                     "pcmpeqd %%xmm14, %%xmm14\n\tpcmpeqd %%xmm15, %%xmm15\n\t"
                     "fld1\n\tfld1\n\tfld1\n\tfld1\n\tfld1\n\tfld1\n\tfld1\n\tfld1\n\t"
                     "fstp %%st(0)\n\tfstp %%st(0)\n\tfstp %%st(0)\n\tfstp %%st(0)\n\t"
                     "fstp %%st(0)\n\tfstp %%st(0)\n\tfstp %%st(0)\n\tfstp %%st(0)"
                     :
                     :
                     : "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "xmm0", "xmm1",
                       "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
                       "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "st", "st(1)", "st(2)",
                       "st(3)", "st(4)", "st(5)", "st(6)", "st(7)", "memory");
}

/* The upper halves of ymm0-15 and zmm0-15, zmm16-31 and k1-7 (k0 cannot be written as a
 * mask source but is written here as a destination). */
static __attribute__((noinline, target("avx512f"))) void trash_avx512(void)
{
#define Z(n) "vpternlogd $0xff, %%zmm" #n ", %%zmm" #n ", %%zmm" #n "\n\t"
    __asm__ volatile(Z(0) Z(1) Z(2) Z(3) Z(4) Z(5) Z(6) Z(7) Z(8) Z(9) Z(10) Z(11) Z(12) Z(13)
                         Z(14) Z(15) Z(16) Z(17) Z(18) Z(19) Z(20) Z(21) Z(22) Z(23) Z(24)
                             Z(25) Z(26) Z(27) Z(28) Z(29) Z(30) Z(31)
                     "kxnorw %%k0, %%k0, %%k0\n\tkxnorw %%k1, %%k1, %%k1\n\t"
                     "kxnorw %%k2, %%k2, %%k2\n\tkxnorw %%k3, %%k3, %%k3\n\t"
                     "kxnorw %%k4, %%k4, %%k4\n\tkxnorw %%k5, %%k5, %%k5\n\t"
                     "kxnorw %%k6, %%k6, %%k6\n\tkxnorw %%k7, %%k7, %%k7"
                     :
                     :
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
                       "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16",
                       "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24",
                       "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31", "k0", "k1",
                       "k2", "k3", "k4", "k5", "k6", "k7");
#undef Z
}

static __attribute__((noinline, target("avx"))) void trash_avx(void)
{
#define Y(n) "vpcmpeqd %%xmm" #n ", %%xmm" #n ", %%xmm" #n "\n\tvinsertf128 $1, %%xmm" #n \
             ", %%ymm" #n ", %%ymm" #n "\n\t"
    __asm__ volatile(Y(0) Y(1) Y(2) Y(3) Y(4) Y(5) Y(6) Y(7) Y(8) Y(9) Y(10) Y(11) Y(12) Y(13)
                         Y(14) Y(15) ""
                     :
                     :
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
                       "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
#undef Y
}

static long trash_fn(void)
{
    __builtin_cpu_init(); /* its constructor may not have run in a dlopen'ed module */
    if (__builtin_cpu_supports("avx512f"))
        trash_avx512();
    else if (__builtin_cpu_supports("avx"))
        trash_avx();
    trash_base();
    return 0x5a;
}

static long bt_fn(void **buf, long n, long how)
{
    if (how == MX_BT_BACKTRACE)
        return backtrace(buf, (int)n);
    if (how == MX_BT_SIGNAL) /* for a debugger: it stops here and walks the stack */
        return raise(SIGUSR1);
#ifdef MX_LIBUNWIND
    if (how == MX_BT_LIBUNWIND) {
        unw_context_t uc;
        unw_cursor_t c;
        long i = 0;
        if (unw_getcontext(&uc) != 0 || unw_init_local(&c, &uc) != 0)
            return -2;
        do {
            unw_word_t ip;
            if (unw_get_reg(&c, UNW_REG_IP, &ip) != 0)
                return -3;
            buf[i++] = (void *)ip;
        } while (i < n && unw_step(&c) > 0);
        return i;
    }
#endif
    return -1;
}

static long sleep_fn(volatile int *in)
{
    *in = 1;
    for (;;) { /* nanosleep is a cancellation point */
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

PVPATCH_DEFINE_SLOTS(mx) = {
    [PVPATCH_OP_ID(mx, add)] = add_native,     [PVPATCH_OP_ID(mx, mix3)] = mix3_native,
    [PVPATCH_OP_ID(mx, mark)] = mark_native,   [PVPATCH_OP_ID(mx, align)] = align_fn,
    [PVPATCH_OP_ID(mx, trash)] = trash_fn,     [PVPATCH_OP_ID(mx, bt)] = bt_fn,
    [PVPATCH_OP_ID(mx, sleep)] = sleep_fn,
};

/* Variants: native, pv, alt. */
static const struct pvpatch_impl add_impls[] = {
    {.fn = add_native, .tmpl = add_native_tmpl, .tmpl_len = sizeof(add_native_tmpl)},
    {.fn = add_pv},
    {.fn = add_alt},
};
static const struct pvpatch_impl mix3_impls[] = {{.fn = mix3_native}, {.fn = mix3_pv},
                                                 {.fn = mix3_alt}};
static const struct pvpatch_impl mark_impls[] = {
    {.fn = mark_native, .flags = PVPATCH_IMPL_NOP},
    {.fn = mark_pv},
    {.fn = mark_alt, .tmpl = mark_alt_tmpl, .tmpl_len = sizeof(mark_alt_tmpl)},
};
static const struct pvpatch_impl align_impls[] = {{.fn = align_fn}, {.fn = align_fn},
                                                  {.fn = align_fn}};
static const struct pvpatch_impl trash_impls[] = {{.fn = trash_fn}, {.fn = trash_fn},
                                                  {.fn = trash_fn}};
static const struct pvpatch_impl bt_impls[] = {{.fn = bt_fn}, {.fn = bt_fn}, {.fn = bt_fn}};
static const struct pvpatch_impl sleep_impls[] = {{.fn = sleep_fn}, {.fn = sleep_fn},
                                                  {.fn = sleep_fn}};

#define OP(name) {#name, &PVPATCH_SLOTS(mx)[PVPATCH_OP_ID(mx, name)], name##_impls}
static const struct pvpatch_op mx_ops[] = {
    OP(add), OP(mix3), OP(mark), OP(align), OP(trash), OP(bt), OP(sleep),
};
#undef OP
static const char *const mx_variants[] = {"native", "pv", "alt"};
static const struct pvpatch_group mx_groups[] = {
    {"mx", mx_variants, 3, 0, mx_ops, PVPATCH_NOPS(mx)},
};
PVPATCH_MODULE(MX_STR(MX_MOD), mx_groups);

/* ---- boot sites (in this file, so that both files hold sites) ---------------------------- */

static __attribute__((noinline)) long boot0(void)
{
    return (long)PVPATCH_BOOT_CALL0(mx, align, 6, 0);
}
static __attribute__((noinline)) long boot1(void)
{
    long c = 0;
    PVPATCH_BOOT_CALL1(mx, mark, 8, 0, &c);
    return c;
}
static __attribute__((noinline)) long boot2(long a, long b)
{
    return (long)PVPATCH_BOOT_CALL2(mx, add, 6, 0, a, b);
}
static __attribute__((noinline)) long boot3(long a, long b, long c)
{
    return (long)PVPATCH_BOOT_CALL3(mx, mix3, 10, 0, a, b, c);
}

/* ---- Python ----------------------------------------------------------------------------- */

static PyObject *py_results(PyObject *self, PyObject *unused)
{
    long log[8] = {0}, nlog = 0;
    long r3 = mx_order3(log, &nlog);
    return Py_BuildValue("{s:l,s:l,s:l,s:l,s:(lll),s:l,s:l,s:[llllll],s:(ll),s:(ll),s:(llll)}",
                         "add", mx_add(20, 22), "add9", mx_add9(-5, 7), "order2", mx_order2(),
                         "order3", r3, "order3_log", log[0], log[1], log[2], "order3_n", nlog,
                         "mark", mx_mark(),
                         "align", mx_align_leaf(), mx_align_cond(6), mx_align_vla(33),
                         mx_align_loop(5), mx_align_wide(3), mx_redzone(10) - (12 * 10 + 66),
                         "live", mx_live(7, 1), mx_live(7, 0), "regs", mx_regs(9, 1), mx_regs(9, 0),
                         "boot", boot0(), boot1(), boot2(3, 4), boot3(1, 2, 3));
}

static PyObject *py_bt(PyObject *self, PyObject *args)
{
    long how;
    void *buf[128];
    if (!PyArg_ParseTuple(args, "l", &how))
        return NULL;
    long n = mx_bt_site(buf, 128, how);
    if (n < 0)
        return PyLong_FromLong(n);
    PyObject *l = PyList_New(n);
    for (long i = 0; l != NULL && i < n; i++)
        PyList_SET_ITEM(l, i, PyLong_FromUnsignedLongLong((uintptr_t)buf[i]));
    return l;
}

static volatile int cancel_in_op, cleanup_ran;
static void cancel_cleanup(void *unused) { cleanup_ran = 1; }
static void *cancel_thread(void *unused)
{
    pthread_cleanup_push(cancel_cleanup, NULL);
    mx_sleep_site(&cancel_in_op);
    pthread_cleanup_pop(0);
    return NULL;
}

/* cancel() -> (state, cleanup ran): a thread sleeping in an op is cancelled and joined; every
 * wait is bounded ("not in op", "join timed out" are failures the test reports). */
static PyObject *py_cancel(PyObject *self, PyObject *unused)
{
    pthread_t t;
    const char *state = "cancelled";
    void *ret = NULL;
    cancel_in_op = cleanup_ran = 0;
    if (pthread_create(&t, NULL, cancel_thread, NULL) != 0)
        return Py_BuildValue("(si)", "pthread_create failed", 0);
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < 10000 && !cancel_in_op; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    if (!cancel_in_op)
        state = "not in op after 10 s";
    pthread_cancel(t);
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 10;
    if (pthread_timedjoin_np(t, &ret, &dl) != 0)
        state = "join timed out after 10 s";
    else if (ret != PTHREAD_CANCELED)
        state = "thread not cancelled";
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(si)", state, cleanup_ran);
}

/* A thread that runs the 13-byte add site in a loop and counts results no variant gives. */
static volatile int worker_run, worker_tid;
static volatile long worker_iters, worker_bad, worker_last_bad;
static pthread_t worker;
static void *worker_main(void *unused)
{
    worker_tid = (int)gettid();
    while (worker_run) {
        long r = mx_worker_site(20, 22);
        if (r != 42 && r != 142 && r != 242) {
            worker_bad++;
            worker_last_bad = r;
        }
        worker_iters++;
    }
    return NULL;
}

static PyObject *py_worker_start(PyObject *self, PyObject *unused)
{
    worker_run = 1;
    worker_tid = 0;
    if (pthread_create(&worker, NULL, worker_main, NULL) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    for (int i = 0; i < 10000 && (worker_tid == 0 || worker_iters == 0); i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return PyLong_FromLong(worker_tid);
}

static PyObject *py_worker_stats(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("(lll)", worker_iters, worker_bad, worker_last_bad);
}

static PyObject *py_worker_stop(PyObject *self, PyObject *unused)
{
    worker_run = 0;
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 10;
    if (pthread_timedjoin_np(worker, NULL, &dl) != 0)
        return PyUnicode_FromString("worker did not stop within 10 s");
    return py_worker_stats(self, unused);
}

static PyObject *py_has_libunwind(PyObject *self, PyObject *unused)
{
#ifdef MX_LIBUNWIND
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"results", py_results, METH_NOARGS, "Run every site; a dict of results."},
    {"bt", py_bt, METH_VARARGS, "Return addresses seen from inside an op."},
    {"cancel", py_cancel, METH_NOARGS, "Cancel a thread sleeping in an op."},
    {"has_libunwind", py_has_libunwind, METH_NOARGS, NULL},
    {"worker_start", py_worker_start, METH_NOARGS, "Start the site-running thread; its tid."},
    {"worker_stats", py_worker_stats, METH_NOARGS, "(iterations, bad results, last bad)."},
    {"worker_stop", py_worker_stop, METH_NOARGS, "Stop and join the thread; its stats."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, MX_STR(MX_MOD), NULL, -1, methods};

PyMODINIT_FUNC MX_CAT(PyInit_, MX_MOD)(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && pvpatch_export(m, &pvpatch_module) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
