/* ext.h - what the three C files of pvexample._ext share: the group's ids, the slots, and the
 * functions that hold sites. */
#ifndef PVEXAMPLE_EXT_H
#define PVEXAMPLE_EXT_H

#include "pvpatch.h"

/* One group, `example`, at index 0 of this module's group table. */
enum { PVPATCH_GROUP_ID(example) = 0 };
enum {
    PVPATCH_OP_ID(example, add),   /* (long a, long b) -> a + b */
    PVPATCH_OP_ID(example, clear), /* (long *p) -> *p = 0 */
    PVPATCH_OP_ID(example, note),  /* (long x): an event hook, nothing at all when fast */
    PVPATCH_OP_ID(example, tag),   /* () -> 1, 2, 3: which variant; called from a boot site */
    PVPATCH_NOPS(example)
};
PVPATCH_DECLARE_SLOTS(example);

enum { EX_FAST, EX_CHECKED, EX_COUNTING, EX_NVARIANTS };

/* kernels.c: every site of the module. */
long ex_add(long a, long b);
long ex_clear(long v);
void ex_note(long x);
long ex_sum_to(long n);
long ex_boot_tag(void);

/* ops.c */
extern const struct pvpatch_module pvpatch_module;
long ex_calls(void);

#endif
