/* lto_ops.c - group `lt`'s implementations, tables and descriptor, and sites of the first file.
 * See lto_ext.h; the threads and the signal injector are in lto_run.c. */
#include <stdint.h>

#include "lto_ext.h"

static long add_native(long a, long b) { return a + b; }
static long add_pv(long a, long b) { return a + b + 1000; }
static long add_alt(long a, long b) { return a + b + 2000; }
static const uint8_t add_native_tmpl[] = {0x48, 0x8d, 0x04, 0x37}; /* lea (%rdi,%rsi,1),%rax */
static long mix_native(long a, long b, long c) { return a + 3 * b + 5 * c; }
static long mix_pv(long a, long b, long c) { return a + 3 * b + 5 * c + 1000; }
static long mix_alt(long a, long b, long c) { return a + 3 * b + 5 * c + 2000; }

PVPATCH_DEFINE_SLOTS(lt) = {[PVPATCH_OP_ID(lt, add)] = add_native,
                            [PVPATCH_OP_ID(lt, mix)] = mix_native};

static const struct pvpatch_impl add_impls[] = {
    {.fn = add_native, .tmpl = add_native_tmpl, .tmpl_len = sizeof(add_native_tmpl)},
    {.fn = add_pv},
    {.fn = add_alt},
};
static const struct pvpatch_impl mix_impls[] = {{.fn = mix_native}, {.fn = mix_pv},
                                                {.fn = mix_alt}};
static const struct pvpatch_op lt_ops[] = {
    {"add", &PVPATCH_SLOTS(lt)[PVPATCH_OP_ID(lt, add)], add_impls},
    {"mix", &PVPATCH_SLOTS(lt)[PVPATCH_OP_ID(lt, mix)], mix_impls},
};
static const char *const lt_variants[] = {"native", "pv", "alt"};
static const struct pvpatch_group lt_groups[] = {
    {"lt", lt_variants, 3, 0, lt_ops, PVPATCH_NOPS(lt)},
};
PVPATCH_MODULE("lt_lto", lt_groups);

__attribute__((visibility("default"))) const void *lt_desc(void) { return &pvpatch_module; }

/* Not noinline: under -flto the callers in lto_run.c may inline them, sites and all. */
long lt_a_add6(long a, long b) { return (long)PVPATCH_CALL2(lt, add, 6, 0, a, b); }
long lt_a_add13(long a, long b) { return (long)PVPATCH_CALL2(lt, add, 13, 0, a, b); }
long lt_a_mix(long a, long b, long c) { return (long)PVPATCH_CALL3(lt, mix, 8, 0, a, b, c); }
