/*
 * rt_switch.c - the runtime in a process without Python (tests/test_rt_c.py builds it from the
 * sources setup.py lists in RT_SOURCES, links it with no Python, runs it).
 *
 * A module built with pvpatch.h, group `rtt` with variants native, pv, alt:
 *   value()   0x1001 (native, a call), 0x1002 (pv, a call), 0x1003 (alt: the shipped template
 *             `movl $0x1003, %eax`, rendered inline)
 *   bump(p)   *p += 1 (native, a call), nothing (pv: PVPATCH_IMPL_NOP, one NOP), *p += 2 (alt:
 *             the shipped template `addq $2, (%rdi)`, inline)
 * pvrt_register patches it; THREADS threads call its sites without pause while the main thread
 * switches the group SWITCHES times with pvrt_switch.  Every result a thread sees must be one
 * variant's (a torn site would crash or answer something else); after the last switch every
 * site must answer the current variant, pvrt_current and pvrt_group_site_bytes_match must agree
 * with the bytes, and bad requests must be refused naming what is wrong, changing nothing.
 * Every wait is bounded (pthread_timedjoin_np); the exit status says what failed.
 *
 * Usage: rt_switch [switches] [threads]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pvpatch.h"
#include "rt.h"

enum { PVPATCH_GROUP_ID(rtt) = 0 };
enum { PVPATCH_OP_ID(rtt, value), PVPATCH_OP_ID(rtt, bump), PVPATCH_NOPS(rtt) };
PVPATCH_DECLARE_SLOTS(rtt);

static long value_native(void) { return 0x1001; }
static long value_pv(void) { return 0x1002; }
static long value_alt(void) { return 0x1003; }
static long bump_native(long *p) { (*p)++; return 0; }
static long bump_nop(long *p) { return 0; }
static long bump_alt(long *p) { *p += 2; return 0; }

PVPATCH_DEFINE_SLOTS(rtt) = {(void *)value_native, (void *)bump_native};

static const uint8_t movl_1003[] = {0xb8, 0x03, 0x10, 0x00, 0x00};
static const uint8_t addq_2_rdi[] = {0x48, 0x83, 0x07, 0x02};
static const struct pvpatch_impl value_impls[] = {
    {.fn = (void *)value_native},
    {.fn = (void *)value_pv},
    {.fn = (void *)value_alt, .tmpl = movl_1003, .tmpl_len = sizeof(movl_1003)},
};
static const struct pvpatch_impl bump_impls[] = {
    {.fn = (void *)bump_native},
    {.fn = (void *)bump_nop, .flags = PVPATCH_IMPL_NOP},
    {.fn = (void *)bump_alt, .tmpl = addq_2_rdi, .tmpl_len = sizeof(addq_2_rdi)},
};
static const struct pvpatch_op rtt_ops[] = {
    {"value", &PVPATCH_SLOTS(rtt)[PVPATCH_OP_ID(rtt, value)], value_impls},
    {"bump", &PVPATCH_SLOTS(rtt)[PVPATCH_OP_ID(rtt, bump)], bump_impls},
};
static const char *const rtt_variants[] = {"native", "pv", "alt"};
static const struct pvpatch_group rtt_groups[] = {
    {"rtt", rtt_variants, 3, 0, rtt_ops, PVPATCH_NOPS(rtt)},
};
PVPATCH_MODULE("rt_switch", rtt_groups);

/* The sites: several per op, of several lengths, in functions the threads call. */
__attribute__((noinline)) static long site_value6(void) { return (long)PVPATCH_CALL0(rtt, value, 6, 0); }
__attribute__((noinline)) static long site_value8(void) { return (long)PVPATCH_CALL0(rtt, value, 8, 0); }
__attribute__((noinline)) static long site_value12(void) { return (long)PVPATCH_CALL0(rtt, value, 12, 0); }
__attribute__((noinline)) static void site_bump6(long *p) { PVPATCH_CALL1(rtt, bump, 6, 0, p); }
__attribute__((noinline)) static void site_bump10(long *p) { PVPATCH_CALL1(rtt, bump, 10, 0, p); }

static volatile int run = 1;
static long calls[64], wrong[64], last_wrong[64];

static int value_ok(long v) { return v == 0x1001 || v == 0x1002 || v == 0x1003; }

static void *worker(void *arg)
{
    long me = (long)arg;
    while (__atomic_load_n(&run, __ATOMIC_RELAXED)) {
        long v[3] = {site_value6(), site_value8(), site_value12()};
        for (int i = 0; i < 3; i++)
            if (!value_ok(v[i])) {
                wrong[me]++;
                last_wrong[me] = v[i];
            }
        long x = 0;
        site_bump6(&x);
        long y = x;
        site_bump10(&x);
        /* each bump adds 0, 1 or 2: one variant's work, whole */
        if (y < 0 || y > 2 || x - y < 0 || x - y > 2) {
            wrong[me]++;
            last_wrong[me] = x;
        }
        calls[me] += 5;
    }
    return NULL;
}

#define FAIL(...)                                                                                \
    do {                                                                                         \
        fprintf(stderr, "rt_switch: FAIL: " __VA_ARGS__);                                        \
        fputc('\n', stderr);                                                                     \
        failed = 1;                                                                              \
    } while (0)

int main(int argc, char **argv)
{
    int switches = argc > 1 ? atoi(argv[1]) : 3000;
    int nthreads = argc > 2 ? atoi(argv[2]) : 4;
    int failed = 0;
    struct pvrt_error e = {0};
    if (nthreads > 64)
        nthreads = 64;
    /* Before registration the sites call through the slots: native. */
    if (site_value6() != 0x1001)
        FAIL("default site answers %#lx before registration", site_value6());
    if (pvrt_init(&e) != 0) {
        fprintf(stderr, "rt_switch: pvrt_init: %s (%s, errno %d)\n", e.msg, e.syscall, e.err);
        return 2;
    }
    if (pvrt_register(&pvpatch_module, &e) != 0) {
        fprintf(stderr, "rt_switch: pvrt_register: %s (%s, errno %d)\n", e.msg, e.syscall, e.err);
        return 2;
    }
    if (pvrt_register(&pvpatch_module, &e) == 0)
        FAIL("a second registration of the same module was accepted");
    const char *cur = pvrt_current("rtt");
    if (cur == NULL || strcmp(cur, "native") != 0)
        FAIL("current after registration is %s, not native", cur ? cur : "NULL");

    pthread_t th[64];
    for (long i = 0; i < nthreads; i++)
        if (pthread_create(&th[i], NULL, worker, (void *)i) != 0) {
            fprintf(stderr, "rt_switch: pthread_create failed\n");
            return 2;
        }
    unsigned long sites = 0, syncs = 0, traps = 0;
    uint64_t ns_max = 0;
    for (int i = 0; i < switches; i++) {
        const char *v = rtt_variants[(i + 1) % 3];
        struct pvrt_switch_stats st;
        if (pvrt_switch("rtt", v, &st, &e) != 0) {
            FAIL("switch %d to %s: %s (%s, errno %d)", i, v, e.msg, e.syscall, e.err);
            break;
        }
        sites += st.sites;
        syncs += st.syncs;
        traps += st.traps;
        if (st.ns > ns_max)
            ns_max = st.ns;
        cur = pvrt_current("rtt");
        if (cur == NULL || strcmp(cur, v) != 0)
            FAIL("after switch %d to %s, current says %s", i, v, cur ? cur : "NULL");
    }
    __atomic_store_n(&run, 0, __ATOMIC_RELAXED);
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 30;
    for (int i = 0; i < nthreads; i++) {
        int r = pthread_timedjoin_np(th[i], NULL, &dl);
        if (r != 0) {
            fprintf(stderr, "rt_switch: FAIL: worker %d did not stop in 30 s (%s); state: "
                            "calls %ld\n", i, strerror(r), calls[i]);
            _exit(3);
        }
    }
    long total = 0, bad = 0;
    for (int i = 0; i < nthreads; i++) {
        total += calls[i];
        bad += wrong[i];
        if (wrong[i])
            FAIL("thread %d: %ld wrong results (last %#lx)", i, wrong[i], last_wrong[i]);
    }
    if (nthreads > 0 && total == 0)
        FAIL("the threads made no call");

    /* Quiescent: every variant, every site, exactly. */
    static const long want_value[3] = {0x1001, 0x1002, 0x1003}, want_bump[3] = {1, 0, 2};
    for (int v = 0; v < 3; v++) {
        if (pvrt_switch("rtt", rtt_variants[v], NULL, &e) != 0) {
            FAIL("switch to %s: %s", rtt_variants[v], e.msg);
            continue;
        }
        long a = site_value6(), b = site_value8(), c = site_value12(), x = 0;
        site_bump6(&x);
        site_bump10(&x);
        if (a != want_value[v] || b != want_value[v] || c != want_value[v])
            FAIL("%s: value sites answer %#lx %#lx %#lx", rtt_variants[v], a, b, c);
        if (x != 2 * want_bump[v])
            FAIL("%s: bump sites added %ld, not %ld", rtt_variants[v], x, 2 * want_bump[v]);
        for (int w = 0; w < 3; w++) {
            int m = pvrt_group_site_bytes_match("rtt", "value", rtt_variants[w]);
            if (m != (w == v))
                FAIL("bytes_match(value, %s) is %d with %s current", rtt_variants[w], m,
                     rtt_variants[v]);
        }
        if (strcmp(pvrt_current("rtt"), rtt_variants[v]) != 0)
            FAIL("current is %s, not %s", pvrt_current("rtt"), rtt_variants[v]);
        /* The op slots follow the variant (what a default site would call). */
        if (PVPATCH_SLOTS(rtt)[0] != value_impls[v].fn)
            FAIL("%s: the value slot does not point at its function", rtt_variants[v]);
    }
    /* Bad requests: refused, named, nothing changed. */
    if (pvrt_switch("nosuch", "pv", NULL, &e) == 0 || strstr(e.msg, "nosuch") == NULL)
        FAIL("an unknown group was not refused by name (%s)", e.msg);
    if (pvrt_switch("rtt", "bogus", NULL, &e) == 0 || strstr(e.msg, "bogus") == NULL)
        FAIL("an unknown variant was not refused by name (%s)", e.msg);
    if (pvrt_current("nosuch") != NULL)
        FAIL("current of an unknown group is not NULL");
    if (pvrt_group_site_bytes_match("rtt", "nosuch", "pv") != -1)
        FAIL("bytes_match of an unknown op is not -1");
    if (strcmp(pvrt_current("rtt"), "alt") != 0 || site_value8() != 0x1003)
        FAIL("a refused request changed the group");
    printf("rt_switch: %d switches, %d threads, %ld checked calls, %ld wrong; %lu sites "
           "patched, %lu syncs, %lu traps; slowest switch %.3f ms\n",
           switches, nthreads, total, bad, sites, syncs, traps, ns_max / 1e6);
    return failed;
}
