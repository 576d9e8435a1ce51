/* bits_sites.h - the `bits` op group (bits_sites.c): bit counts with CPU-feature-gated templates. */
#ifndef PVPATCH_BITS_SITES_H
#define PVPATCH_BITS_SITES_H

#include "pvpatch.h"

enum { PVPATCH_GROUP_ID(bits) = 3 };
enum {
    PVPATCH_OP_ID(bits, popcount), /* (x) -> set bits in x; inline popcnt where POPCNT is on */
    PVPATCH_OP_ID(bits, clz),      /* (x) -> leading zero bits, 64 for 0; inline lzcnt (LZCNT) */
    PVPATCH_NOPS(bits)
};
PVPATCH_DECLARE_SLOTS(bits);

extern const struct pvpatch_op core_bits_ops[];
extern const char *const core_bits_variants[];
extern PyMethodDef core_bits_methods[];

#endif
