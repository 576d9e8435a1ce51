/*
 * ops.c - the `example` group: its implementations, inline templates, tables and the module
 * descriptor.
 *
 *              add                  clear                  note          tag (boot)
 *   fast       lea (%rdi,%rsi),%rax movq $0,(%rdi)         nop           1
 *   checked    saturating add       store 0                nop           2
 *   counting   add, count the call  store 0, count         count         3
 */
#include "ext.h"

#include <limits.h>

static long calls; /* calls counted by the counting variant */

static long add_plain(long a, long b) { return a + b; }
static long add_checked(long a, long b)
{
    long r;
    if (__builtin_add_overflow(a, b, &r))
        return a > 0 ? LONG_MAX : LONG_MIN;
    return r;
}
static long add_counting(long a, long b)
{
    __atomic_fetch_add(&calls, 1, __ATOMIC_RELAXED);
    return a + b;
}
static long clear_plain(long *p)
{
    *p = 0;
    return 0;
}
static long clear_counting(long *p)
{
    __atomic_fetch_add(&calls, 1, __ATOMIC_RELAXED);
    *p = 0;
    return 0;
}
static long note_nothing(long x) { return 0; }
static long note_counting(long x)
{
    __atomic_fetch_add(&calls, 1, __ATOMIC_RELAXED);
    return 0;
}
static long tag_fast(void) { return 1; }
static long tag_checked(void) { return 2; }
static long tag_counting(void) { return 3; }

long ex_calls(void) { return __atomic_load_n(&calls, __ATOMIC_RELAXED); }

/* One instruction each, position-independent, using only the site's argument and result
 * registers (docs/extensions.md). */
static const uint8_t add_tmpl[] = {0x48, 0x8d, 0x04, 0x37};               /* lea (%rdi,%rsi),%rax */
static const uint8_t clear_tmpl[] = {0x48, 0xc7, 0x07, 0x00, 0x00, 0x00, 0x00}; /* movq $0,(%rdi) */

/* Sites can run before the module registers (they call *slot then): start at fast. */
PVPATCH_DEFINE_SLOTS(example) = {
    [PVPATCH_OP_ID(example, add)] = (void *)add_plain,
    [PVPATCH_OP_ID(example, clear)] = (void *)clear_plain,
    [PVPATCH_OP_ID(example, note)] = (void *)note_nothing,
    [PVPATCH_OP_ID(example, tag)] = (void *)tag_fast,
};

static const struct pvpatch_impl add_impls[EX_NVARIANTS] = {
    [EX_FAST] = {.fn = (void *)add_plain, .tmpl = add_tmpl, .tmpl_len = sizeof(add_tmpl)},
    [EX_CHECKED] = {.fn = (void *)add_checked},
    [EX_COUNTING] = {.fn = (void *)add_counting},
};
static const struct pvpatch_impl clear_impls[EX_NVARIANTS] = {
    [EX_FAST] = {.fn = (void *)clear_plain, .tmpl = clear_tmpl, .tmpl_len = sizeof(clear_tmpl)},
    [EX_CHECKED] = {.fn = (void *)clear_plain},
    [EX_COUNTING] = {.fn = (void *)clear_counting},
};
static const struct pvpatch_impl note_impls[EX_NVARIANTS] = {
    [EX_FAST] = {.fn = (void *)note_nothing, .flags = PVPATCH_IMPL_NOP},
    [EX_CHECKED] = {.fn = (void *)note_nothing, .flags = PVPATCH_IMPL_NOP},
    [EX_COUNTING] = {.fn = (void *)note_counting},
};
static const struct pvpatch_impl tag_impls[EX_NVARIANTS] = {
    [EX_FAST] = {.fn = (void *)tag_fast},
    [EX_CHECKED] = {.fn = (void *)tag_checked},
    [EX_COUNTING] = {.fn = (void *)tag_counting},
};

#define OP(name) {#name, &PVPATCH_SLOTS(example)[PVPATCH_OP_ID(example, name)], name##_impls}
static const struct pvpatch_op example_ops[PVPATCH_NOPS(example)] = {
    [PVPATCH_OP_ID(example, add)] = OP(add),
    [PVPATCH_OP_ID(example, clear)] = OP(clear),
    [PVPATCH_OP_ID(example, note)] = OP(note),
    [PVPATCH_OP_ID(example, tag)] = OP(tag),
};
#undef OP

static const char *const example_variants[EX_NVARIANTS] = {
    [EX_FAST] = "fast", [EX_CHECKED] = "checked", [EX_COUNTING] = "counting"};

static const struct pvpatch_group groups[] = {
    [PVPATCH_GROUP_ID(example)] = {"example", example_variants, EX_NVARIANTS, EX_FAST,
                                   example_ops, PVPATCH_NOPS(example)},
};

/* The descriptor: the group table plus this shared object's site sections. */
PVPATCH_MODULE("pvexample", groups);
