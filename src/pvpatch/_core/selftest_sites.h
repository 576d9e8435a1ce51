/* selftest_sites.h - the selftest group: ids, the values its variants return, its sites. */
#ifndef PVPATCH_SELFTEST_SITES_H
#define PVPATCH_SELFTEST_SITES_H

#include "pvpatch.h"

enum { PVPATCH_GROUP_ID(selftest) = 0 };
enum {
    PVPATCH_OP_ID(selftest, value), /* () -> a constant per variant */
    PVPATCH_OP_ID(selftest, add),   /* (a, b) -> a + b + an offset per variant */
    PVPATCH_OP_ID(selftest, wide),  /* () -> a 64-bit constant per variant */
    PVPATCH_OP_ID(selftest, mark),  /* (long *p) -> adds 0, 1 or 2 to *p */
    PVPATCH_NOPS(selftest)
};
PVPATCH_DECLARE_SLOTS(selftest);

enum { ST_NATIVE = 0, ST_PV = 1, ST_ALT = 2, ST_NVARIANTS = 3 };

#define ST_VALUE_NATIVE 0x1001L
#define ST_VALUE_PV 0x1002L
#define ST_VALUE_ALT 0x1003L
#define ST_ADD_PV 0x200L
#define ST_ADD_ALT 0x300L
#define ST_WIDE_NATIVE 0x1111222233334444UL
#define ST_WIDE_PV 0x2222333344445555UL
#define ST_WIDE_ALT 0x3333444455556666UL

/* One selftest site: a function that runs it.  For `mark` sites the function passes a pointer to
 * a local counter and returns how much the op added. */
typedef long (*st_site_fn)(long a, long b);
struct st_site {
    st_site_fn fn;
    int op;
};
extern const struct st_site st_sites[];
extern const int st_nsites;

/* Does `r` belong to some variant of `op` for arguments (a, b)? */
int st_result_valid(int op, long a, long b, long r);

#endif
