/*
 * lifecycle_lib.c - a plain shared library (no Python) with patchable sites, for the module
 * lifecycle tests (tests/test_lifecycle.py): loaded with dlopen, registered, switched, unloaded
 * with dlclose.
 *
 *   -DLC_NAME="lc_a"   the module's name (two builds of this file are two modules of group lc)
 *   -DLC_DTOR          its destructor calls the C-level unregister handed to lc_set_unregister
 *
 * Group `lc`, variants native/pv/alt: add(a, b) is a + b, a + b + 1000, a + b + 2000; mark(p)
 * writes 1, 2, 3 to *p (boot site).
 */
#include <stdint.h>

#include "pvpatch.h"

#ifndef LC_NAME
#define LC_NAME "lc_a"
#endif

enum { PVPATCH_GROUP_ID(lc) = 0 };
enum { PVPATCH_OP_ID(lc, add), PVPATCH_OP_ID(lc, mark), PVPATCH_NOPS(lc) };
PVPATCH_DECLARE_SLOTS(lc);

static long add_native(long a, long b) { return a + b; }
static long add_pv(long a, long b) { return a + b + 1000; }
static long add_alt(long a, long b) { return a + b + 2000; }
static long mark_native(long *p) { *p = 1; return 0; }
static long mark_pv(long *p) { *p = 2; return 0; }
static long mark_alt(long *p) { *p = 3; return 0; }

PVPATCH_DEFINE_SLOTS(lc) = {add_native, mark_native};

static const struct pvpatch_impl add_impls[] = {{.fn = add_native}, {.fn = add_pv},
                                                {.fn = add_alt}};
static const struct pvpatch_impl mark_impls[] = {{.fn = mark_native}, {.fn = mark_pv},
                                                 {.fn = mark_alt}};
static const struct pvpatch_op lc_ops[] = {
    {"add", &PVPATCH_SLOTS(lc)[PVPATCH_OP_ID(lc, add)], add_impls},
    {"mark", &PVPATCH_SLOTS(lc)[PVPATCH_OP_ID(lc, mark)], mark_impls},
};
static const char *const lc_variants[] = {"native", "pv", "alt"};
static const struct pvpatch_group lc_groups[] = {
    {"lc", lc_variants, 3, 0, lc_ops, PVPATCH_NOPS(lc)},
};
PVPATCH_MODULE(LC_NAME, lc_groups);

__attribute__((visibility("default"))) const void *lc_desc(void) { return &pvpatch_module; }

/* Several runtime sites, in different functions, so that a batch has many entries here. */
__attribute__((visibility("default"), noinline)) long lc_add(long a, long b)
{
    return (long)PVPATCH_CALL2(lc, add, 6, 0, a, b);
}
__attribute__((visibility("default"), noinline)) long lc_add8(long a, long b)
{
    return (long)PVPATCH_CALL2(lc, add, 8, 0, a, b);
}
__attribute__((visibility("default"), noinline)) long lc_add13(long a, long b)
{
    return (long)PVPATCH_CALL2(lc, add, 13, 0, a, b);
}
__attribute__((visibility("default"), noinline)) long lc_mark(void)
{
    long v = 0;
    PVPATCH_BOOT_CALL1(lc, mark, 8, 0, &v);
    return v;
}

static int (*unregister_fn)(const void *);
static volatile long dtor_result = -99;
__attribute__((visibility("default"))) void lc_set_unregister(void *fn) { unregister_fn = fn; }

#ifdef LC_DTOR
__attribute__((destructor)) static void lc_fini(void)
{
    if (unregister_fn != 0)
        dtor_result = unregister_fn(&pvpatch_module);
}
#endif
