/* lto_ext.h - group `lt` of the LTO lifecycle storm (tests/test_lifecycle.py): an extension in
 * two translation units (lto_ops.c, lto_run.c), both holding runtime sites, built as one plain
 * shared library with gcc -O2 -flto.  Variants native/pv/alt add 0/1000/2000 to every result. */
#ifndef LTO_EXT_H
#define LTO_EXT_H

#include "pvpatch.h"

enum { PVPATCH_GROUP_ID(lt) = 0 };
enum {
    PVPATCH_OP_ID(lt, add), /* (a, b) -> a + b + offset; native is the inline lea */
    PVPATCH_OP_ID(lt, mix), /* (a, b, c) -> a + 3b + 5c + offset */
    PVPATCH_NOPS(lt)
};
PVPATCH_DECLARE_SLOTS(lt);

/* lto_ops.c: its sites */
long lt_a_add6(long a, long b);
long lt_a_add13(long a, long b);
long lt_a_mix(long a, long b, long c);

#endif
