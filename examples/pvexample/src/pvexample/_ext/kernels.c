/*
 * kernels.c - the code that calls the group's ops, through sites.  A site's length must hold
 * every rendering of its op: 6 bytes for a call, 8 for clear's 7-byte template.
 */
#include "ext.h"

long ex_add(long a, long b) { return (long)PVPATCH_CALL2(example, add, 6, 0, a, b); }

long ex_clear(long v)
{
    PVPATCH_CALL1(example, clear, 8, 0, &v);
    return v;
}

void ex_note(long x) { PVPATCH_CALL1(example, note, 6, 0, x); }

/* A loop over two sites: 0 + 1 + ... + n-1, one note per step. */
long ex_sum_to(long n)
{
    long s = 0;
    for (long i = 0; i < n; i++) {
        s = (long)PVPATCH_CALL2(example, add, 6, 0, s, i);
        PVPATCH_CALL1(example, note, 6, 0, i);
    }
    return s;
}

/* A boot site: rendered once, when the module registers, as the variant current then, and
 * never patched again. */
long ex_boot_tag(void) { return (long)PVPATCH_BOOT_CALL0(example, tag, 6, 0); }
